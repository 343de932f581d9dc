"""Measure a candidate world model's fidelity (does it draw what it is told?) before it is shipped.

    OMP_NUM_THREADS=1 python scripts/measure_fidelity.py --pipeline /tmp/world_v2_candidate --out /tmp/fid.json
    python scripts/measure_fidelity.py --pipeline DIR --out reports/world_v2/step3000_fidelity.json \
        --grid reports/world_v2/step3000_fidelity.png
    python scripts/measure_fidelity.py --renderer --out reports/world_v2/renderer_fidelity.json

The `world_fidelity` stage's measurement (`groundiff.worlds.fidelity.run_fidelity`: params.yaml's
prompts and sampling, the world's classes and oracle as the stage loads them) on any pipeline folder,
at the precision given
(fp32 by default: bf16 is emulated, 35x slower, on CPUs without AVX512-BF16). Writes the metrics, the
bars of issue 26 (one-object >= 95%, two-object both >= 85%) and the seconds it took, as JSON.

`--renderer` scores the shapes renderer's own scenes instead of a model's images: for each prompt, the
scene its seed renders with the prompt's shapes, under the scene sampling the diffusion model trains on
(`world_diffusion.model`'s image size and object count). What the oracle finds there is the most a
model can reach, so it says whether a gap to the bars is the model's or the oracle's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from groundiff.core.params import Params
from groundiff.data.prompts import CLASS_SEP
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.worlds.active import World
from groundiff.worlds.bars import FIDELITY_V2_BARS
from groundiff.worlds.fidelity import fidelity_metrics, fidelity_prompts, markdown_table, run_fidelity, sample_grid
from groundiff.worlds.shapes import render_scene
from groundiff.worlds.shapes_diffusion import scene_spec


def renderer_fidelity(params: Params, oracle, classes: tuple[str, ...], cfg) -> tuple[dict, list, pd.DataFrame]:
    """run_fidelity's (metrics, images, table) with the renderer's scenes in place of generated images."""
    if params.world.name != "shapes":
        raise SystemExit(f"--renderer needs the shapes world (the one with a renderer); world.name is {params.world.name!r}")
    spec = scene_spec(params.section("world_diffusion").model)
    table = fidelity_prompts(classes, cfg.prompts)
    images = [render_scene(int(seed), spec, classes=names.split(CLASS_SEP)).image
              for seed, names in zip(table["seed"], table["classes"])]
    metrics = fidelity_metrics(table, oracle.detect(images), classes, cfg.prompts.score_threshold)
    return metrics, images, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="diffusers pipeline folder")
    source.add_argument("--renderer", action="store_true",
                        help="score the shapes renderer's own scenes for the same prompts (the ceiling)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--grid", type=Path, help="also save the stage's sample grid (PNG) here")
    args = parser.parse_args()

    params = Params()
    world, cfg = World(params), params.section("world_fidelity")
    cfg = replace(cfg, sampling=replace(cfg.sampling, precision=args.precision))
    oracle = world.load_oracle()
    start = time.perf_counter()
    if args.renderer:
        metrics, images, table = renderer_fidelity(params, oracle, world.classes, cfg)
    else:
        metrics, images, table = run_fidelity(load_pipeline(args.pipeline, params.world.device), oracle,
                                              world.classes, cfg)
    seconds = time.perf_counter() - start
    bars = {k: metrics[k] >= v for k, v in FIDELITY_V2_BARS.items()}
    out = {"pipeline": args.pipeline or "renderer", "config": asdict(cfg), "metrics": metrics, "v2_bars": FIDELITY_V2_BARS,
           "v2_bars_met": bars, "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        sample_grid(images, table, len(world.classes), cfg.prompts).save(args.grid)
    print(markdown_table(metrics))
    print(f"bars {FIDELITY_V2_BARS}: {bars}; {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
