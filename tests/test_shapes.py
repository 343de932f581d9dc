import numpy as np
import pytest

from groundiff.worlds.shapes import CLASSES, SceneSpec, render_scene


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = render_scene(7), render_scene(7), render_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.caption() == b.caption()
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(40))
def test_masks_are_exact_disjoint_and_match_pixels(seed):
    scene = render_scene(seed, SceneSpec(max_objects=3))
    masks = scene.masks
    assert masks.dtype == bool and masks.shape[1:] == scene.image.shape[:2]
    assert masks.sum(0).max() <= 1, "instance masks must be disjoint"
    for obj, mask in zip(scene.objects, masks):
        assert mask.any(), "every object keeps visible pixels"
        # every masked pixel carries exactly the object's fill colour ...
        assert (scene.image[mask] == np.array(obj.rgb)).all()
    # ... and pixels outside all masks are background colours only.
    background = ~masks.any(0)
    fills = {o.rgb for o in scene.objects}
    assert not any(tuple(px) in fills for px in scene.image[background])


def test_later_objects_occlude_earlier_ones():
    # Find a scene with overlapping objects: the earlier mask loses exactly the overlap.
    from groundiff.worlds.shapes import _rasterise

    for seed in range(200):
        scene = render_scene(seed, SceneSpec(min_objects=2, max_objects=2, max_overlap=0.25))
        full_first = _rasterise(scene.objects[0], 32)
        full_second = _rasterise(scene.objects[1], 32)
        overlap = full_first & full_second
        if overlap.any():
            assert not (scene.masks[0] & overlap).any()
            assert (scene.masks[1] == full_second).all()
            assert np.array_equal(scene.masks[0], full_first & ~full_second)
            return
    pytest.fail("no overlapping scene in 200 seeds")


def test_requested_classes_are_drawn_in_order_and_captioned():
    scene = render_scene(3, classes=["star", "ring"])
    assert scene.classes == ["star", "ring"]
    assert scene.caption(colours=False) == "a photograph of a star and a ring"
    assert scene.caption().startswith(f"a photograph of a {scene.objects[0].colour} star")


def test_every_class_renders_large_and_distinct():
    sizes = {}
    for name in CLASSES:
        area = np.mean([render_scene(s, classes=[name]).masks[0].sum() for s in range(20)])
        sizes[name] = area
    # large objects: on average at least ~8% of a 32x32 image, i.e. roughly 10+ px across
    assert min(sizes.values()) > 0.08 * 32 * 32, sizes


def test_unknown_class_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown shape 'hexagon'.*knows circle"):
        render_scene(0, classes=["hexagon"])


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="max_objects"):
        SceneSpec(min_objects=2, max_objects=1)
