import json

import pytest
import yaml

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from groundiff.data.voc import IGNORE, load_label_png, read_split, voc_palette
from groundiff.stages import prompts, world_data


def test_voc_palette_matches_devkit():
    palette = voc_palette()
    assert palette[:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]  # aeroplane
    assert palette[15 * 3:16 * 3] == [192, 128, 128]  # person
    assert len(palette) == 768


def test_world_data_stage_writes_voc_layout_and_coco(project):
    world_data.main()
    root = project / "data/shapes/real"
    for split, n in (("train", 12), ("val", 6)):
        ids = (root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == n
        for image_id in ids:
            assert (root / "JPEGImages" / f"{image_id}.jpg").is_file()
            with Image.open(root / "SegmentationClass" / f"{image_id}.png") as png:
                assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]
    unseen_labels = {2, 7, 9}  # ring, heart, arrow (split 1)
    train_labels = set(np.unique(np.concatenate([lab.ravel() for _, _, lab in read_split(root, "train")])))
    val_labels = set(np.unique(np.concatenate([lab.ravel() for _, _, lab in read_split(root, "val")])))
    assert not (train_labels & unseen_labels), "train must not label unseen classes"
    assert IGNORE in train_labels
    assert IGNORE not in val_labels and val_labels - {0}
    coco = COCO(str(root / "annotations/instances_val.json"))
    assert len(coco.getCatIds()) == 10 and len(coco.getImgIds()) == 6
    ann = coco.loadAnns(coco.getAnnIds())[0]
    mask = coco.annToMask(ann)
    label = load_label_png(root / "SegmentationClass" / f"{coco.loadImgs(ann['image_id'])[0]['file_name'][:-4]}.png")
    assert (label[mask == 1] == ann["category_id"]).all()  # val labels agree with instances
    stats = json.loads((project / "metrics/world_data.json").read_text())
    assert stats["train"]["images"] == 12
    assert (project / "reports/figures/world_data_val.png").is_file()


def test_stages_are_deterministic(project):
    world_data.main()
    prompts.main()
    first = (project / "data/prompts/train.csv").read_bytes()
    label = (project / "data/shapes/real/SegmentationClass/val_000003.png").read_bytes()
    world_data.main()
    prompts.main()
    assert (project / "data/prompts/train.csv").read_bytes() == first
    assert (project / "data/shapes/real/SegmentationClass/val_000003.png").read_bytes() == label


def test_full_labels_and_load_time_ignore(project):
    world_data.main()
    root = project / "data/shapes/real"
    seen_only = {i: lab for i, _, lab in read_split(root, "train")}
    for image_id, _, full in read_split(root, "train", labels="SegmentationClassFull"):
        hidden = seen_only[image_id] == IGNORE
        assert set(np.unique(full[hidden])) <= {2, 7, 9}  # ignored pixels are exactly the unseen ones
        assert (full[~hidden] == seen_only[image_id][~hidden]).all()
        # the VOC-world path: hide unseen labels at load time
        masked = np.where(np.isin(full, (2, 7, 9)), IGNORE, full)
        assert (masked == seen_only[image_id]).all()
    via_loader = {i: lab for i, _, lab in read_split(root, "train", labels="SegmentationClassFull", ignore_labels=(2, 7, 9))}
    assert all((via_loader[i] == seen_only[i]).all() for i in seen_only)


def test_dev_split_is_held_out_fully_labelled_and_leaves_real_data_alone(project):
    world_data.main()
    real, dev = project / "data/shapes/real", project / "data/shapes/dev"
    before = {p.relative_to(real): p.read_bytes() for p in real.rglob("*") if p.is_file()}
    ids = (dev / "ImageSets/Segmentation/dev.txt").read_text().split()
    assert ids == [f"dev_{i:06d}" for i in range(4)]
    assert not set(ids) & {i for s in ("train", "val") for i in (real / f"ImageSets/Segmentation/{s}.txt").read_text().split()}
    labels = [lab for _, _, lab in read_split(dev, "dev")]
    assert IGNORE not in set(np.unique(np.concatenate([lab.ravel() for lab in labels])))  # every class labelled
    stats = json.loads((project / "metrics/world_data.json").read_text())
    assert stats["dev"]["images"] == 4 and stats["train"]["images"] == 12
    # A different dev size rewrites dev only: train and val keep every byte.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["world_data"]["n_dev"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    world_data.main()
    assert {p.relative_to(real): p.read_bytes() for p in real.rglob("*") if p.is_file()} == before
    assert len((dev / "ImageSets/Segmentation/dev.txt").read_text().split()) == 7


def test_paper_world_dev_is_a_seeded_hold_out_of_train(tmp_path):
    from groundiff.worlds.paper_data import hold_out_dev
    from groundiff.data.voc import VOCWriter

    def world(root):
        voc = VOCWriter(root)
        for i in range(10):
            voc.add("train", f"t{i}", np.full((4, 4, 3), i, np.uint8), np.full((4, 4), i % 3, np.uint8))
        voc.close()
        return root

    a, b = world(tmp_path / "a"), world(tmp_path / "b")
    assert hold_out_dev(a, tmp_path / "a_dev", 3, seed=0) == {"images": 3}
    hold_out_dev(b, tmp_path / "b_dev", 3, seed=0)
    train = (a / "ImageSets/Segmentation/train.txt").read_text().split()
    dev = (tmp_path / "a_dev/ImageSets/Segmentation/dev.txt").read_text().split()
    assert len(train) == 7 and len(dev) == 3 and not set(train) & set(dev)
    assert dev == (tmp_path / "b_dev/ImageSets/Segmentation/dev.txt").read_text().split()  # seeded
    assert [i for i, _, _ in read_split(tmp_path / "a_dev", "dev")] == dev
    with pytest.raises(ValueError, match="n_dev: 7 held-out images need a train split of more than 7"):
        hold_out_dev(a, tmp_path / "again", 7, seed=0)
