"""PASCAL VOC segmentation layout: the one on-disk format for every labelled dataset here.

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png      palette PNG: 0 background, 1..K classes, 255 ignore
    <root>/ImageSets/Segmentation/<split>.txt

The shapes world's "real" data, the synthetic datasets and PASCAL VOC 2012 itself are all read
by `read_split`, so the segmenter never knows which world it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255


def voc_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map, flattened to 768 ints (as in VOCdevkit's labelcolormap)."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


_PALETTE = voc_palette()


def save_label_png(path: Path, label: np.ndarray) -> None:
    """Write a (H, W) uint8 label map as a VOC palette PNG."""
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    img.save(path)


def load_label_png(path: Path) -> np.ndarray:
    """Read a palette PNG's indices (not its colours) as a (H, W) uint8 array."""
    with Image.open(path) as img:
        if img.mode != "P":
            raise ValueError(f"{path}: expected a palette ('P') PNG of class indices, got mode {img.mode}")
        return np.array(img)


class VOCWriter:
    """Writes samples into a VOC-layout folder and the split lists at the end."""

    def __init__(self, root: Path, jpeg_quality: int = 95) -> None:
        self.root = Path(root)
        self.jpeg_quality = jpeg_quality
        self.splits: dict[str, list[str]] = {}
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def add(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray) -> None:
        # 4:4:4 chroma: at 32x32 the default 4:2:0 subsampling smears object colours into edges.
        Image.fromarray(image).save(
            self.root / "JPEGImages" / f"{image_id}.jpg", quality=self.jpeg_quality, subsampling=0
        )
        save_label_png(self.root / "SegmentationClass" / f"{image_id}.png", label)
        self.splits.setdefault(split, []).append(image_id)

    def add_labels(self, label_dir: str, image_id: str, label: np.ndarray) -> None:
        """An extra label map for an existing image, in another folder (e.g. fully labelled train)."""
        (self.root / label_dir).mkdir(exist_ok=True)
        save_label_png(self.root / label_dir / f"{image_id}.png", label)

    def close(self) -> None:
        for split, ids in self.splits.items():
            (self.root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def split_ids(root: Path, split: str) -> list[str]:
    path = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such split list. A VOC-layout dataset needs ImageSets/Segmentation/{split}.txt "
            "(run the stage that writes this dataset, or point the params at a VOC2012 root)"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_split(root: Path, split: str, labels: str = "SegmentationClass",
               ignore_labels: tuple[int, ...] = ()) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (id, image (H, W, 3) uint8, label (H, W) uint8) for every sample of a split.

    labels: the label folder; ignore_labels: labels mapped to 255 on load — how zero-shot
    training hides unseen classes in datasets (like VOC) that label every class on disk.
    """
    root = Path(root)
    for image_id in split_ids(root, split):
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as img:
            image = np.array(img.convert("RGB"))
        label = load_label_png(root / labels / f"{image_id}.png")
        if ignore_labels:
            label = np.where(np.isin(label, ignore_labels), IGNORE, label).astype(np.uint8)
        yield image_id, image, label


@dataclass(frozen=True)
class RealData:
    """Where a world's real training images live and which label folders show what."""

    root: str  # VOC-layout folder
    split: str = "train"  # training split list
    seen_labels: str = "SegmentationClass"  # labels for the seen-only variants (unseen also hidden at load)
    full_labels: str = "SegmentationClass"  # labels with every class (shapes: SegmentationClassFull)
