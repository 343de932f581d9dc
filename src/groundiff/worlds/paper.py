"""The paper's worlds: PASCAL VOC and COCO vocabularies, splits and name mappings (PAPER.md).

Class order is each dataset's label order (label = index + 1, 0 = background), so VOC
SegmentationClass PNGs and COCO category ids map onto the same `ClassSplit` machinery as the
shapes world.
"""

from __future__ import annotations

#: The worlds whose models and data come from outside (the paper's); `shapes` is made here.
PAPER_WORLDS: tuple[str, ...] = ("voc", "coco")

#: PASCAL VOC 2012, in label order (1..20).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

#: The paper's three VOC 15/5 splits for Protocol I: split -> unseen classes.
VOC_SPLITS: dict[int, list[str]] = {
    1: ["tvmonitor", "car", "dog", "sofa", "train"],
    2: ["horse", "motorbike", "person", "pottedplant", "sheep"],
    3: ["bus", "cat", "chair", "cow", "diningtable"],
}

#: ZS3Net's unseen set, used for Protocol II on VOC (split 0 here).
ZS3_VOC_UNSEEN: list[str] = ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]

#: COCO's 80 thing classes, in category-id order (ids 1..90 with gaps are remapped to 1..80).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: COCO 65/15 (PAPER.md: consistent with the zero-shot-detection split; not released).
COCO_UNSEEN: list[str] = [
    "airplane", "train", "parking meter", "cat", "bear", "suitcase", "frisbee", "snowboard", "fork",
    "sandwich", "hot dog", "toilet", "mouse", "toaster", "hair drier",
]
COCO_SPLITS: dict[int, list[str]] = {1: COCO_UNSEEN}

#: COCO names -> VOC spellings where they differ (the oracle speaks COCO, VOC prompts use VOC).
COCO_TO_VOC: dict[str, str] = {
    "airplane": "aeroplane",
    "motorcycle": "motorbike",
    "couch": "sofa",
    "potted plant": "pottedplant",
    "dining table": "diningtable",
    "tv": "tvmonitor",
}


def coco_name_in(world: str, coco_name: str) -> str | None:
    """A COCO detector class name as the world calls it, or None if the world has no such class."""
    if world == "coco":
        return coco_name
    if world == "voc":
        name = COCO_TO_VOC.get(coco_name, coco_name)
        return name if name in VOC_CLASSES else None
    raise ValueError(f"no COCO name mapping for world {world!r}")


def vocabulary(world: str) -> tuple[tuple[str, ...], dict[int, list[str]]]:
    """(classes in label order, {split: unseen classes}) of a paper world."""
    if world == "voc":
        return VOC_CLASSES, {**VOC_SPLITS, 0: ZS3_VOC_UNSEEN}
    if world == "coco":
        return COCO_CLASSES, COCO_SPLITS
    raise ValueError(f"{world!r} is not a paper world (voc, coco)")
