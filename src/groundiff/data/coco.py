"""COCO instance-segmentation JSON (RLE masks), read back by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


class COCOWriter:
    """Accumulates images and instance masks; `dump` writes one COCO-format JSON file."""

    def __init__(self, categories: list[str]) -> None:
        self.categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(categories)]
        self._cat_id = {name: i + 1 for i, name in enumerate(categories)}
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, file_name: str, masks: np.ndarray, classes: list[str]) -> int:
        """Add an image with its (N, H, W) instance masks; empty (fully occluded) ones are skipped."""
        image_id = len(self.images) + 1
        height, width = masks.shape[1:]
        self.images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for mask, name in zip(masks, classes):
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode("ascii")
            self.annotations.append({
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self._cat_id[name],
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            })
        return image_id

    def dump(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "images": self.images, "annotations": self.annotations, "categories": self.categories,
        }))
