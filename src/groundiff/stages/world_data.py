"""Stage `world_data`: the shapes world's real labelled datasets (VOC layout + COCO JSON)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from groundiff import tracking
from groundiff.config import to_dict
from groundiff.data.voc import read_split, voc_palette
from groundiff.stages.common import Params, atomic_dir, run_stage, write_json
from groundiff.worlds.shapes_data import WorldDataConfig, write_real_dataset

OUT = Path("data/shapes/real")
METRICS = Path("metrics/world_data.json")
PREVIEW = Path("reports/figures/world_data_val.png")


def preview(root: Path, n: int = 8, scale: int = 4) -> Image.Image:
    """Val images above their colour-coded labels: what the dataset looks like at a glance."""
    samples = [s for _, s in zip(range(n), read_split(root, "val"))]
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    top = np.concatenate([img for _, img, _ in samples], axis=1)
    bottom = np.concatenate([palette[lab] for _, _, lab in samples], axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)


def main() -> None:
    params = Params()
    cfg = params.section("world_data", WorldDataConfig)
    split = params.class_split()
    with tracking.stage_run("world_data", {"world_data": to_dict(cfg), "world": to_dict(params.world)}) as run:
        with atomic_dir(OUT) as tmp:
            stats = write_real_dataset(tmp, split, cfg)
        write_json(METRICS, stats)
        PREVIEW.parent.mkdir(parents=True, exist_ok=True)
        preview(OUT).save(PREVIEW)
        run.log_metrics({
            f"{name}_{key}": value
            for name, s in stats.items() for key, value in s.items() if isinstance(value, (int, float))
        })
        run.log_artifact(PREVIEW)
    print(f"world_data: wrote {cfg.n_train} train and {cfg.n_val} val images to {OUT}")


if __name__ == "__main__":
    run_stage(main)
