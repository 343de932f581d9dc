import json

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
