"""Seconds per training step of Protocol II's MaskFormer, trained by transformers and by mmseg (one run, ratio)

    python -m benchmarks.segmenter_backends        # writes reports/benchmarks/segmenter_backends.json and .md

Both backends train the same variant's data (params.yaml's `train_segmenter`, variant C by default) with
the same SegmenterConfig and one thread, in alternating rounds from scratch in a temporary folder. The
time of the steps after the first `--warmup` ones is taken from each backend's own loss reports, and
the median over rounds is kept. The seeds study's s/step column comes from runs beside other work; this
benchmark times both backends under the same conditions. Run it on an otherwise idle machine. It needs
the mmseg backend (`bash scripts/install_mmseg.sh`) and the variant's data (`dvc repro synth_dataset`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._results import OUT_DIR, write_results
from groundiff.core import paths
from groundiff.core.params import Params
from groundiff.eval.zs3 import variant_sources
from groundiff.segmenter import train
from groundiff.worlds.active import World

BACKENDS = ("transformers", "mmseg")


def seconds_per_step(backend: str, cfg, sources, classes, steps: int, warmup: int, work: Path) -> float:
    """Train `steps` steps from scratch; the mean time of the steps after `warmup`."""
    reports: dict[int, float] = {}
    train(sources, classes, replace(cfg, backend=backend, steps=steps, log_every=warmup, checkpoint_every=10 * steps),
          work, on_log=lambda m: reports.setdefault(int(m["step"]), m["seconds"]), progress=False)
    return (reports[steps] - reports[warmup]) / (steps - warmup)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="C")
    parser.add_argument("--steps", type=int, default=60, help="steps per round (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps not timed")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps % args.warmup or args.steps <= args.warmup:
        parser.error("--steps must be a multiple of --warmup, and larger")
    params = Params()
    world, section = World(params), params.section("train_segmenter")
    cfg = replace(section.segmenter, num_threads=1)
    sources = variant_sources(section.variant(args.variant), world.split, world.real_data, paths.SYNTH_SEGMENTATION)
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for backend in BACKENDS:
                times[backend].append(seconds_per_step(backend, cfg, sources, world.split.classes, args.steps,
                                                       args.warmup, Path(tmp) / f"{backend}-{r}"))
                print(f"round {r + 1}/{args.rounds} {backend}: {times[backend][-1]:.3f} s/step", flush=True)
    median = {b: statistics.median(t) for b, t in times.items()}
    result = {
        "variant": args.variant, "batch_size": cfg.batch_size, "input_size": cfg.input_size, "threads": 1,
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "seconds_per_step": {b: round(v, 4) for b, v in median.items()},
        "every_round": {b: [round(v, 4) for v in t] for b, t in times.items()},
        "mmseg_over_transformers": round(median["mmseg"] / median["transformers"], 2),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))
    md = "\n".join([
        f"Training steps of variant {args.variant} (batch {cfg.batch_size}, {cfg.input_size}x{cfg.input_size}, "
        f"one thread, {torch.backends.cpu.get_cpu_capability()}), median of {args.rounds} alternating rounds "
        f"of {args.steps} steps, the first {args.warmup} untimed.", "",
        "| backend | s/step | images/s |", "|---|---|---|",
        *(f"| {b} | {median[b]:.3f} | {cfg.batch_size / median[b]:.1f} |" for b in BACKENDS), "",
        f"mmseg takes {result['mmseg_over_transformers']:.2f}x the transformers backend's time per step.",
    ])
    write_results("segmenter_backends", "Segmenter backends: time per training step", result, md, OUT_DIR)
    return result


if __name__ == "__main__":
    main()
