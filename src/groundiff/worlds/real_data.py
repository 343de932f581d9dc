"""The active world's real labelled data in VOC layout: rendered (shapes, `shapes_data`) or built
from the downloaded dataset (voc / coco, `paper_data`), and a preview of what it looks like."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from groundiff.core.io import atomic_dir
from groundiff.core.schema import WorldDataConfig
from groundiff.data.voc import read_split, voc_palette
from groundiff.worlds.active import World
from groundiff.worlds.paper_data import build_paper_world
from groundiff.worlds.shapes_data import write_dev_dataset, write_real_dataset


def build_real_data(world: World, cfg: WorldDataConfig, out: Path, dev_out: Path) -> dict:
    """Write the world's real data as `out` and its dev split as `dev_out`, each whole or not at all;
    returns per-split statistics (train, val, dev). shapes: rendered as `cfg` says; voc / coco: the
    dataset params.yaml points at, `cfg.n_dev` seeded train images held out as dev."""
    if world.is_paper:
        return build_paper_world(world.name, world.paper, out, dev_out, cfg.n_dev, cfg.seed)
    with atomic_dir(out) as tmp:
        stats = write_real_dataset(tmp, world.split, cfg)
    with atomic_dir(dev_out) as tmp:
        stats["dev"] = write_dev_dataset(tmp, world.split, cfg)
    return stats


def preview(root: Path, n: int = 8, scale: int = 4, size: int = 32) -> Image.Image:
    """Val images above their colour-coded labels: what the dataset looks like at a glance."""
    samples = [s for _, s in zip(range(n), read_split(root, "val"))]
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)

    def tile(array: np.ndarray) -> np.ndarray:  # real photos differ in size: show them all at size x size
        return np.array(Image.fromarray(array).resize((size, size), Image.NEAREST))

    top = np.concatenate([tile(img) for _, img, _ in samples], axis=1)
    bottom = np.concatenate([tile(palette[lab]) for _, _, lab in samples], axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
