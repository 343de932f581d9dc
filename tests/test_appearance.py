"""eval_zs3.appearance: real images made to look generated (the appearance study), one trait at a time;
`real`, the default, scores the images as they are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from groundiff.core.schema import EvalZS3Params, SegmenterConfig
from groundiff.data.voc import IGNORE, VOCWriter, read_split, save_label_png
from groundiff.eval.appearance import alteration, blurred, grey_background, median_background, pastel
from groundiff.eval.metrics import confusion_matrix
from groundiff.eval.zs3 import evaluate, score_confusion
from groundiff.segmenter import Segmenter
from groundiff.segmenter.model import build_model
from groundiff.worlds.base import make_split
from groundiff.worlds.shapes import CLASSES, SceneSpec, render_scene

SPLIT = make_split("shapes", CLASSES, ["ring", "heart", "arrow"])


def test_alterations_touch_only_what_they_name():
    image = np.full((4, 4, 3), 10, np.uint8)
    label = np.zeros((4, 4), np.uint8)
    label[1:3, 1:3] = 2
    label[0, 0] = IGNORE  # ignored pixels are neither background nor object
    grey = grey_background(image, label, np.array([128, 128, 128], np.uint8))
    assert (grey[label == 0] == 128).all() and (grey[label == 2] == 10).all() and (grey[0, 0] == 10).all()
    pale = pastel(image, label, mix=0.5)
    assert (pale[label == 2] == 132).all() and (pale[label != 2] == 10).all()  # 0.5 * 10 + 0.5 * 255 = 132.5
    assert blurred(image, label).shape == image.shape and (blurred(image, label) == 10).all()  # flat stays flat
    edge = image.copy()
    edge[:, 2:] = 250
    soft = blurred(edge, label)
    assert 10 < soft[0, 1, 0] < 250 and 10 < soft[0, 2, 0] < 250  # an edge is softened on both sides
    assert image.tolist() == np.full((4, 4, 3), 10, np.uint8).tolist()  # the input is not altered in place


def _generated(tmp_path):
    """A VOC-layout folder like the synthetic dataset: three flat images, backgrounds 100 / 120 / 140."""
    label = np.zeros((4, 4), np.uint8)
    label[1:3, 1:3] = 2
    root = tmp_path / "synth"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    for i, (bg, split) in enumerate(((100, "one"), (120, "two"), (140, "two"))):
        Image.fromarray(np.full((4, 4, 3), bg, np.uint8)).save(root / "JPEGImages" / f"s{i}.jpg", quality=100)
        save_label_png(root / "SegmentationClass" / f"s{i}.png", label)
        with open(root / "ImageSets" / "Segmentation" / f"{split}.txt", "a") as f:
            f.write(f"s{i}\n")
    return root


def test_grey_background_copies_the_generated_images_median_background(tmp_path):
    root = _generated(tmp_path)
    assert median_background(root).tolist() == [120, 120, 120]  # the one- and two-object splits
    assert median_background(root, ["one"]).tolist() == [100, 100, 100]
    image = np.zeros((4, 4, 3), np.uint8)
    label = np.zeros((4, 4), np.uint8)
    label[0, 0] = 1
    grey = alteration("grey_background", root)(image, label)
    assert (grey[label == 0] == 120).all() and (grey[0, 0] == 0).all()


def test_appearance_names_are_checked_and_real_changes_nothing(tmp_path):
    assert alteration("real") is None and alteration("pastel") is pastel and alteration("blurred") is blurred
    with pytest.raises(ValueError, match="appearance: 'sepia' is not one of real, grey_background, blurred, pastel"):
        alteration("sepia")
    with pytest.raises(ValueError, match="pass the synthetic dataset's folder"):
        alteration("grey_background")
    with pytest.raises(ValueError, match="appearance: 'sepia' is not one of"):
        EvalZS3Params(appearance="sepia")
    root = _generated(tmp_path)
    (root / "ImageSets" / "Segmentation" / "complicated.txt").write_text("")
    with pytest.raises(ValueError, match="no background pixels in splits complicated"):
        median_background(root, ["complicated"])  # an empty split: no colour to take


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Six rendered shapes scenes (every class labelled) and an untrained tiny segmenter."""
    root = tmp_path_factory.mktemp("real")
    writer = VOCWriter(root)
    label_of = {c: SPLIT.label(c) for c in CLASSES}
    for i in range(6):
        scene = render_scene(1000 + i, SceneSpec(image_size=32, min_objects=1, max_objects=2), vocabulary=CLASSES)
        writer.add("val", f"val_{i}", scene.image, scene.label_map(label_of))
    writer.close()
    cfg = SegmenterConfig(backbone_widths=(8, 16), backbone_depths=(1, 1), stem_width=8, fpn_size=32, d_model=16,
                          num_queries=6, decoder_layers=1, decoder_heads=2, decoder_ffn=32, input_size=32)
    import torch

    torch.manual_seed(0)
    return root, Segmenter(build_model(cfg, CLASSES).eval(), CLASSES, 32)


def test_evaluate_segments_the_altered_images_against_the_same_labels(scored):
    root, segmenter = scored
    samples = list(read_split(root, "val"))
    n = len(CLASSES) + 1
    for kind in ("blurred", "pastel"):
        alter = alteration(kind)
        altered = [alter(image, label) for _, image, label in samples]
        assert all(np.array_equal(a, alter(image, label)) for a, (_, image, label) in zip(altered, samples))  # deterministic
        assert any(not np.array_equal(a, image) for a, (_, image, _) in zip(altered, samples))  # and it alters
        preds = segmenter.predict(altered, batch_size=4)
        conf = sum(confusion_matrix(p, np.where(label == 0, IGNORE, label), n) for p, (_, _, label) in zip(preds, samples))
        scores, got = evaluate(segmenter, root, "val", SPLIT, batch_size=4, appearance=alter)
        assert np.array_equal(got, conf) and scores == score_confusion(conf, SPLIT)
    plain, conf = evaluate(segmenter, root, "val", SPLIT, batch_size=4)
    preds = segmenter.predict([image for _, image, _ in samples], batch_size=4)
    assert np.array_equal(conf, sum(confusion_matrix(p, np.where(label == 0, IGNORE, label), n)
                                    for p, (_, _, label) in zip(preds, samples)))  # None: the images as they are


def test_the_eval_zs3_stage_scores_the_images_made_to_look_generated(project, scored):
    """eval_zs3.appearance reaches the stage: its metrics are the altered images' scores (`evaluate` with the
    alteration: the test above shows that segments the altered images), its table says so, and
    grey_background takes its colour from the synthetic dataset (a dep of the stage in dvc.yaml)."""
    import json

    import yaml

    from conftest import write_params
    from groundiff.core.paths import SYNTH_SEGMENTATION
    from groundiff.stages import eval_zs3, world_data
    from test_zs3 import make_synth

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["world_data"]["n_dev"] = 4
    params["eval_zs3"].update(figure_images=2, variants=["C"])
    write_params(project, params)
    world_data.main()
    make_synth(project)
    scored[1].save_pretrained(project / "models/segmenter/C")  # untrained: its predictions follow the input
    segmenter = Segmenter.from_pretrained(project / "models/segmenter/C")
    for kind in ("real", "grey_background"):
        params["eval_zs3"]["appearance"] = kind
        write_params(project, params)
        eval_zs3.main()
        scores, _ = evaluate(segmenter, project / "data/shapes/real", "val", SPLIT, batch_size=64,
                             appearance=alteration(kind, project / SYNTH_SEGMENTATION))
        assert json.loads((project / "metrics/zs3.json").read_text()) == {"C": json.loads(json.dumps(scores))}
        table = (project / "reports/zs3.md").read_text()
        assert ("made to look generated: `grey_background`" in table) == (kind == "grey_background")
    import shutil

    shutil.rmtree(project / SYNTH_SEGMENTATION)  # the stage reads the colour from there, and only for it
    with pytest.raises(FileNotFoundError, match="synth/segmentation/ImageSets/Segmentation/one.txt"):
        eval_zs3.main()
    params["eval_zs3"]["appearance"] = "real"
    write_params(project, params)
    eval_zs3.main()
