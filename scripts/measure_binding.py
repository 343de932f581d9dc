"""Measure how a world's text-to-image model binds class words to objects (issue 26), without a stage.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/measure_binding.py --out /tmp/binding_v1.json
    python scripts/measure_binding.py --pipeline worlds/shapes/diffusion_v2 --per-class 4 --out /tmp/binding_v2.json

Loads the pipeline (`load_pipeline`, DDIM) and the shapes world's oracle (its Mask R-CNN at the
oracle's usual score threshold), runs `groundiff.worlds.binding`'s class-word cosine and attention
binding, writes the metrics (and the seconds each part took) as JSON and prints the markdown report.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from groundiff.core.schema import SamplingConfig
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.worlds.binding import BindingConfig, attention_binding, bars_met, binding_report, class_word_cosine
from groundiff.worlds.oracle import TorchvisionOracle
from groundiff.worlds.shapes import CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="worlds/shapes/diffusion", help="diffusers pipeline folder or hub id")
    parser.add_argument("--detector", default="worlds/shapes/detector", help="the oracle's folder (shapes world)")
    parser.add_argument("--classes", nargs="*", default=list(CLASSES), help="default: the shapes world's 10")
    parser.add_argument("--per-class", type=int, default=2, help="one-object images per class")
    parser.add_argument("--seed", type=int, default=BindingConfig.seed)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()

    cfg = BindingConfig(per_class=args.per_class, seed=args.seed,
                        sampling=SamplingConfig(steps=args.steps, guidance_scale=args.guidance,
                                                batch_size=args.batch_size, precision=args.precision))
    pipe = load_pipeline(args.pipeline, args.device)
    oracle = TorchvisionOracle.from_pretrained(args.detector, args.device,
                                               score_threshold=cfg.oracle_score_threshold)
    start = time.perf_counter()
    cosine = class_word_cosine(pipe, args.classes, cfg.template)
    mid = time.perf_counter()
    attention = attention_binding(pipe, oracle, args.classes, cfg, progress=True)
    end = time.perf_counter()
    metrics = {"cosine": cosine, "attention": attention}
    out = {"pipeline": str(args.pipeline), "detector": str(args.detector), "config": asdict(cfg),
           **metrics, "bars_met": bars_met(metrics),
           "seconds": {"cosine": round(mid - start, 2), "attention": round(end - mid, 2)},
           "torch_threads": torch.get_num_threads(), "device": args.device}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(binding_report(metrics))
    print(f"{attention['images']} images in {end - mid:.1f} s ({torch.get_num_threads()} threads); wrote {args.out}")


if __name__ == "__main__":
    main()
