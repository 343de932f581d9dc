"""Train and evaluate the shapes world's oracle: a small Mask R-CNN, the COCO-80 analogue.

It learns every class from the world's COCO-format instance annotations (world_data), with
augmentations that mimic what a diffusion model's samples look like (blur, noise, colour shifts)
since that is what it will label. Mask AP@0.5 on the rendered val set comes from pycocotools.
Training is resumable from a safetensors state and deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from groundiff.core.checkpoint import fingerprint
from groundiff.core.training import TrainingLoop
from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn
from groundiff.core.schema import DetectorConfig


def load_coco_split(root: Path, split: str) -> list[dict]:
    """Images and targets (boxes xyxy, labels, masks) of one split, all in memory (they are tiny)."""
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file}: missing (world_data writes it)")
    data = json.loads(ann_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples = []
    for info in data["images"]:
        with Image.open(root / "JPEGImages" / info["file_name"]) as img:
            image = np.array(img.convert("RGB"))
        anns = by_image.get(info["id"], [])
        masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns]) if anns else np.zeros((0, *image.shape[:2]), np.uint8)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        samples.append({
            "id": info["id"], "image": image, "masks": masks, "boxes": boxes,
            "labels": np.array([a["category_id"] for a in anns], np.int64),
        })
    return samples


def _augment(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Horizontal flip, colour gain/offset, blur and noise: generated images are soft and noisy."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img, masks = img[:, ::-1], masks[:, :, ::-1]
        w = image.shape[1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    img = img * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-20, 20, size=3)
    if rng.random() < 0.5:  # 3x3 box blur of random strength
        pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        blur = sum(pad[dy:dy + img.shape[0], dx:dx + img.shape[1]] for dy in range(3) for dx in range(3)) / 9
        a = rng.uniform(0.3, 1.0)
        img = (1 - a) * img + a * blur
    img = img + rng.normal(0, rng.uniform(0, 12), size=img.shape)
    return np.clip(img, 0, 255), np.ascontiguousarray(masks), boxes


def _to_target(sample: dict, rng: np.random.Generator | None, device: str):
    image, masks, boxes = sample["image"], sample["masks"], sample["boxes"]
    if rng is not None:
        image, masks, boxes = _augment(image, masks, boxes, rng)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(device)
    target = {
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).to(device),
        "labels": torch.from_numpy(sample["labels"]).to(device),
        "masks": torch.from_numpy(masks.astype(np.uint8)).to(device),
    }
    return x, target


def arch_for(cfg: DetectorConfig, classes: tuple[str, ...]) -> DetectorArch:
    return DetectorArch(classes=tuple(classes), widths=cfg.widths, fpn_channels=cfg.fpn_channels,
                        input_size=cfg.input_size)


def train_detector(data_root: Path, classes: tuple[str, ...], cfg: DetectorConfig, work_dir: Path,
                   device: str = "cpu", on_log: Callable[[dict], None] | None = None, *,
                   log_every: int = 20, checkpoint_every: int = 100) -> TorchvisionOracle:
    """Train on `data_root`'s COCO train split, resuming from `work_dir` when its state matches.

    `work_dir` keeps the state and the loss log (`log.csv`: step, loss, the Mask R-CNN losses);
    `on_log` gets the loop's report every `log_every` steps."""
    torch.manual_seed(cfg.seed)
    arch = arch_for(cfg, classes)
    model = build_maskrcnn(arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loop = TrainingLoop(work_dir, fingerprint([asdict(cfg), list(classes)]), cfg.steps, {"model": model},
                        {"main": opt}, log_every=log_every, checkpoint_every=checkpoint_every, desc="detector",
                        on_log=on_log)
    loop.resume()
    samples = load_coco_split(data_root, "train")
    model.train()

    def step(s: int) -> dict:
        lr = cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([cfg.seed, s])
        batch = [_to_target(samples[i], rng if cfg.augment else None, device)
                 for i in rng.integers(len(samples), size=cfg.batch_size)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    loop.run(step)
    model.eval()
    return TorchvisionOracle(model, tuple(classes), device=device, arch=arch)


def evaluate_mask_ap(oracle: TorchvisionOracle, data_root: Path, split: str = "val", batch_size: int = 32) -> dict:
    """COCO mask AP (pycocotools) of the oracle on a split: {"mask_ap": ..., "mask_ap50": ..., ...}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann_file = data_root / "annotations" / f"instances_{split}.json"
    gt = COCO(str(ann_file))
    samples = load_coco_split(data_root, split)
    results = []
    for i in tqdm(range(0, len(samples), batch_size), desc="detector eval", mininterval=5):
        chunk = samples[i:i + batch_size]
        for sample, det in zip(chunk, oracle.detect([s["image"] for s in chunk])):
            for cls, score, mask in zip(det.classes, det.scores, det.masks):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append({"image_id": sample["id"], "category_id": oracle.classes.index(cls) + 1,
                                "segmentation": rle, "score": float(score)})
    if not results:
        return {"mask_ap": 0.0, "mask_ap50": 0.0, "mask_ap75": 0.0}
    evaluator = COCOeval(gt, gt.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    per_class = {}
    precision = evaluator.eval["precision"]  # (T, R, K, A, M): IoU thr, recall, class, area, maxDets
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[0, :, k, 0, -1]
        per_class[gt.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    s = evaluator.stats
    return {"mask_ap": float(s[0]), "mask_ap50": float(s[1]), "mask_ap75": float(s[2]), "per_class_ap50": per_class}
