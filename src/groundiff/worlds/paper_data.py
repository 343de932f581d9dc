"""The paper worlds' real data as one VOC-layout folder, so one loader serves every world.

- PASCAL VOC 2012: `SegmentationClass/` already is the layout; images and labels are linked
  (hard links, copies across file systems) into `data/voc/real`, optionally with SBD's extra
  training masks (the 10,582-image "train_aug" set: SBD train+val minus VOC val).
- COCO 2017: instance polygons/RLEs become semantic label PNGs (label = index in COCO_CLASSES + 1,
  0 = background, 255 = crowd regions), smaller instances painted over larger ones.

Both write ImageSets/Segmentation/{train,val}.txt; `max_train` / `max_val` cut a dry run short.
`hold_out_dev` then moves a seeded `n_dev` of the train images into a folder of their own, split
`dev` (every class labelled, never trained on: the split settings are chosen on, so val never is).
`build_paper_world` checks the world is complete, then builds both folders whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from groundiff.core.io import atomic_dir
from groundiff.core.schema import PaperWorldParams
from groundiff.data.voc import IGNORE, save_label_png, split_ids
from groundiff.worlds.paper import COCO_CLASSES
from groundiff.worlds.preflight import require_paper_world


def _link(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"{src}: listed in the dataset's split but missing on disk")
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _limit(ids: list[str], n: int) -> list[str]:
    return ids[:n] if n else ids


def _write_lists(out: Path, lists: dict[str, list[str]]) -> None:
    sets = out / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    for split, ids in lists.items():
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _sbd_label(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    gt = loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
    return np.asarray(gt.Segmentation, dtype=np.uint8)


def build_voc(voc_root: Path, out: Path, sbd_root: Path | None = None,
              max_train: int = 0, max_val: int = 0) -> dict:
    """VOC 2012 (+ SBD) -> `out` in VOC layout; returns image counts per split."""
    voc_root, out = Path(voc_root), Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    val = _limit(split_ids(voc_root, "val"), max_val)
    train = split_ids(voc_root, "train")
    extra: list[str] = []
    if sbd_root is not None:  # SBD train+val, minus everything in VOC's val: no val image leaks into training
        held_out, have = set(split_ids(voc_root, "val")), set(train)
        sbd = [line.strip() for name in ("train.txt", "val.txt")
               for line in (Path(sbd_root) / name).read_text().splitlines() if line.strip()]
        extra = sorted({i for i in sbd if i not in held_out and i not in have})
    train = _limit(train + extra, max_train)
    from_sbd = set(extra)
    for image_id in tqdm(train + val, desc="world_data (voc)", mininterval=5):
        _link(voc_root / "JPEGImages" / f"{image_id}.jpg", out / "JPEGImages" / f"{image_id}.jpg")
        if image_id in from_sbd:
            save_label_png(out / "SegmentationClass" / f"{image_id}.png", _sbd_label(Path(sbd_root) / "cls" / f"{image_id}.mat"))
        else:
            _link(voc_root / "SegmentationClass" / f"{image_id}.png", out / "SegmentationClass" / f"{image_id}.png")
    _write_lists(out, {"train": train, "val": val})
    return {"train": {"images": len(train), "from_sbd": len(from_sbd & set(train))}, "val": {"images": len(val)}}


def coco_label_map(coco, image_info: dict, label_of: dict[int, int]) -> np.ndarray:
    """One COCO image's instances as a semantic label map (smaller instances on top, crowd = 255)."""
    label = np.zeros((image_info["height"], image_info["width"]), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"]))
    for ann in sorted(anns, key=lambda a: -a["area"]):
        mask = coco.annToMask(ann).astype(bool)
        label[mask] = IGNORE if ann.get("iscrowd") else label_of[ann["category_id"]]
    return label


def build_coco(coco_root: Path, out: Path, max_train: int = 0, max_val: int = 0) -> dict:
    """COCO 2017 instances -> `out` in VOC layout (labels 1..80 in COCO_CLASSES order)."""
    from pycocotools.coco import COCO

    coco_root, out = Path(coco_root), Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    stats, lists = {}, {}
    for split, limit in (("train", max_train), ("val", max_val)):
        ann_file = coco_root / "annotations" / f"instances_{split}2017.json"
        coco = COCO(str(ann_file))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        unknown = sorted(set(names.values()) - set(COCO_CLASSES))
        if unknown:
            raise ValueError(f"{ann_file}: categories {unknown} are not COCO's 80 thing classes")
        label_of = {cat_id: COCO_CLASSES.index(name) + 1 for cat_id, name in names.items()}
        infos = _limit(sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i["id"]), limit)
        ids = []
        for info in tqdm(infos, desc=f"world_data (coco {split})", mininterval=5):
            image_id = Path(info["file_name"]).stem
            _link(coco_root / f"{split}2017" / info["file_name"], out / "JPEGImages" / f"{image_id}.jpg")
            save_label_png(out / "SegmentationClass" / f"{image_id}.png", coco_label_map(coco, info, label_of))
            ids.append(image_id)
        lists[split] = ids
        stats[split] = {"images": len(ids)}
    _write_lists(out, lists)
    (out / "classes.json").write_text(json.dumps(list(COCO_CLASSES)) + "\n")
    return stats


def hold_out_dev(real: Path, dev: Path, n_dev: int, seed: int) -> dict:
    """Move `n_dev` seeded train images of the VOC-layout folder `real` out of its train list into
    `dev` (VOC layout, split `dev`, images and labels linked); returns the dev split's image count."""
    train = split_ids(real, "train")
    if not 0 < n_dev < len(train):
        raise ValueError(f"world_data: n_dev: {n_dev} held-out images need a train split of more than {n_dev} "
                         f"images; {real} has {len(train)} (lower n_dev, or raise max_train)")
    picked = set(np.random.default_rng(np.random.SeedSequence([seed, 3])).choice(len(train), n_dev, replace=False).tolist())
    held = [i for k, i in enumerate(train) if k in picked]
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
        (dev / sub).mkdir(parents=True, exist_ok=True)
        for image_id in held:
            _link(real / sub / f"{image_id}.{ext}", dev / sub / f"{image_id}.{ext}")
    _write_lists(real, {"train": [i for k, i in enumerate(train) if k not in picked]})
    _write_lists(dev, {"dev": held})
    return {"images": len(held)}


def build_paper_world(world: str, settings: PaperWorldParams, out: Path, dev_out: Path, n_dev: int,
                      seed: int) -> dict:
    """voc / coco: the downloaded dataset as `out` (VOC layout) and `n_dev` of its train images held
    out as `dev_out`; returns image counts per split."""
    require_paper_world(world, settings)
    with atomic_dir(out) as tmp, atomic_dir(dev_out) as dev_tmp:
        if world == "voc":
            sbd = Path(settings.sbd_root) if settings.sbd_root else None
            stats = build_voc(Path(settings.data_root), tmp, sbd, settings.max_train, settings.max_val)
        else:
            stats = build_coco(Path(settings.data_root), tmp, settings.max_train, settings.max_val)
        stats["dev"] = hold_out_dev(tmp, dev_tmp, n_dev, seed)
        stats["train"]["images"] -= n_dev
    return stats
