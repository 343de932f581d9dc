"""The shapes world's "real" labelled data, written in PASCAL VOC layout plus COCO JSON.

`val` labels every class (Protocol II evaluates seen and unseen classes on it). `dev`, written to a
folder of its own (`write_dev_dataset`), is drawn exactly as train is (same scene distribution, its
own seed stream), never trained on, and labels every class: the split every choice of a setting is
made on, so val is never used for one. The renderer can draw fresh train images, so holding these
out costs the train split nothing and leaves its bytes as they were. `train` labels
only seen classes: unseen pixels are 255 (ignore), as in zero-shot semantic segmentation, where
training images may show unseen objects but never their labels. `SegmentationClassFull/` holds
the train split with every class labelled, used only by the `real_all` upper-bound reference. The COCO instance files label
every class: they train and evaluate the oracle detector, the analogue of a COCO-80 Mask R-CNN,
which knows the whole vocabulary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from groundiff.data.coco import COCOWriter
from groundiff.data.voc import IGNORE, VOCWriter
from groundiff.worlds.base import ClassSplit
from groundiff.worlds.shapes import SceneSpec, render_scene
from groundiff.core.schema import WorldDataConfig

#: Label folder of the train split with every class labelled (only for the `real_all` reference).
FULL_LABELS = "SegmentationClassFull"


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seeds of train and val never collide (nor with other streams that use other tags)."""
    tag = {"train": 1, "val": 2, "dev": 3}[split]
    return int(np.random.SeedSequence([seed, tag, index]).generate_state(1)[0])


def write_dev_dataset(root: Path, split: ClassSplit, cfg: WorldDataConfig) -> dict:
    """Render `cfg.n_dev` scenes as train's are drawn, every class labelled, as split `dev` of a
    VOC-layout folder; returns its statistics (as `write_real_dataset`'s per split)."""
    spec = SceneSpec(image_size=cfg.image_size, min_objects=cfg.min_objects, max_objects=cfg.max_objects)
    label_of = {c: split.label(c) for c in split.classes}
    voc = VOCWriter(root)
    instances: Counter[str] = Counter()
    pixels = 0
    for i in tqdm(range(cfg.n_dev), desc="world_data dev", mininterval=2):
        scene = render_scene(scene_seed(cfg.seed, "dev", i), spec, vocabulary=split.classes)
        voc.add("dev", f"dev_{i:06d}", scene.image, scene.label_map(label_of))
        instances.update(obj.shape for obj in scene.objects)
        pixels += int(scene.masks.sum())
    voc.close()
    return {"images": cfg.n_dev, "instances": dict(sorted(instances.items())), "ignored_pixel_share": 0.0,
            "object_pixel_share": pixels / (cfg.n_dev * cfg.image_size**2)}


def write_real_dataset(root: Path, split: ClassSplit, cfg: WorldDataConfig) -> dict:
    """Render and write train/val; returns per-split statistics (images, instances, pixel shares)."""
    spec = SceneSpec(image_size=cfg.image_size, min_objects=cfg.min_objects, max_objects=cfg.max_objects)
    vocabulary = split.classes
    label_of = {c: split.label(c) for c in vocabulary}
    voc = VOCWriter(root)
    stats: dict[str, dict] = {}
    for name, count in (("train", cfg.n_train), ("val", cfg.n_val)):
        coco = COCOWriter(list(vocabulary))
        instances: Counter[str] = Counter()
        pixels: Counter[str] = Counter()
        ignored = 0
        for i in tqdm(range(count), desc=f"world_data {name}", mininterval=2):
            scene = render_scene(scene_seed(cfg.seed, name, i), spec, vocabulary=vocabulary)
            label = np.zeros(scene.masks.shape[1:], dtype=np.uint8)
            for obj, mask in zip(scene.objects, scene.masks):
                hidden = name == "train" and obj.shape in split.unseen
                label[mask] = IGNORE if hidden else split.label(obj.shape)
                instances[obj.shape] += 1
                pixels[obj.shape] += int(mask.sum())
                ignored += int(mask.sum()) if hidden else 0
            image_id = f"{name}_{i:06d}"
            voc.add(name, image_id, scene.image, label)
            if name == "train":  # the oracle reference (`real_all`): every class labelled
                voc.add_labels(FULL_LABELS, image_id, scene.label_map(label_of))
            coco.add(f"{image_id}.jpg", scene.masks, scene.classes)
        coco.dump(root / "annotations" / f"instances_{name}.json")
        total = count * cfg.image_size**2
        stats[name] = {
            "images": count,
            "instances": dict(sorted(instances.items())),
            "ignored_pixel_share": ignored / total,
            "object_pixel_share": sum(pixels.values()) / total,
        }
    voc.close()
    return stats
