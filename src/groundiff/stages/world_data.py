"""Stage `world_data`: the world's real labelled data, in VOC layout under `data/<world>/real`.

shapes: rendered (VOC layout + COCO JSON). voc: PASCAL VOC 2012 (+ SBD) linked in. coco: COCO
2017 instances converted to semantic label PNGs. Every later stage reads the same layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.data.voc import read_split, voc_palette
from groundiff.worlds.paper_data import build_coco, build_voc
from groundiff.core.io import atomic_dir, write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.active import World
from groundiff.worlds.preflight import require_paper_world
from groundiff.worlds.shapes_data import WorldDataConfig, write_real_dataset

METRICS = Path("metrics/world_data.json")
PREVIEW = Path("reports/figures/world_data_val.png")


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


def build_paper_world(active: World, out: Path) -> dict:
    """voc / coco: the downloaded dataset as `out` (VOC layout); returns image counts per split."""
    world, settings = active.name, active.paper
    require_paper_world(world, settings)
    with atomic_dir(out) as tmp:
        if world == "voc":
            sbd = Path(settings.sbd_root) if settings.sbd_root else None
            stats = build_voc(Path(settings.data_root), tmp, sbd, settings.max_train, settings.max_val)
        else:
            stats = build_coco(Path(settings.data_root), tmp, settings.max_train, settings.max_val)
    return stats


def main() -> None:
    params, world = open_stage("world_data")
    split = world.split
    out = Path(world.real_data.root)
    shapes = params.world.name == "shapes"
    cfg = params.section("world_data") if shapes else None
    logged = {**params.logged(), **({"world_data": to_dict(cfg)} if shapes else {})}
    with tracking.stage_run("world_data", logged) as run:
        if shapes:
            with atomic_dir(out) as tmp:
                stats = write_real_dataset(tmp, split, cfg)
        else:
            stats = build_paper_world(world, out)
        write_json(METRICS, stats)
        PREVIEW.parent.mkdir(parents=True, exist_ok=True)
        preview(out).save(PREVIEW)
        run.log_metrics({
            f"{name}_{key}": value
            for name, s in stats.items() for key, value in s.items() if isinstance(value, (int, float))
        })
        run.log_artifact(PREVIEW)
    print(f"world_data: {stats['train']['images']} train and {stats['val']['images']} val images of the "
          f"{params.world.name} world in {out}")


if __name__ == "__main__":
    run_stage(main)
