"""Which prompt tokens carry the object in each cross-attention layer: the class word, `<eos>` or `<pad>`.

    python scripts/token_attention.py --pipeline DIR --per-class 4 --out reports/world_v2/stepN_tokens.json

Issue 26's question: does a UNet trained longer read the object from the caption-wide tokens
(`<eos>`, `<pad>`: in a CLIP they carry the whole caption) instead of the class word? For the
`world_binding` stage's one-object prompts, seeds, sampling and oracle (params.yaml's
`world_binding`, the active world's classes and detector), each image is generated
with every cross-attention layer traced (`DAAMTrace(all_layers=True)`), the shapes world's oracle
gives the object's mask, and per layer and token group the attention map (mean over heads and the
group's positions, summed over steps as `layer_maps` returns it, divided by the steps) is read:
its mean inside and outside the mask, its pixel AUROC for the mask, and the group's share of the
attention *mass* inside the object (`<pad>`'s mean times its positions). Images where the oracle
does not find the object are skipped and counted, as in `attention_binding`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from groundiff.core.params import Params
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import generate, image_size, load_pipeline
from groundiff.diffusion.text import token_positions
from groundiff.worlds.active import World
from groundiff.worlds.binding import binding_prompts, inside_outside

GROUPS = ("class", "<eos>", "<pad>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="worlds/shapes/diffusion", help="diffusers pipeline folder")
    parser.add_argument("--per-class", type=int, default=2, help="one-object images per class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()

    params = Params()
    world, cfg = World(params), params.section("world_binding")
    cfg = replace(cfg, per_class=args.per_class, sampling=replace(cfg.sampling, batch_size=args.batch_size))
    pipe = load_pipeline(args.pipeline, params.world.device)
    oracle = world.load_oracle(cfg.oracle_score_threshold)
    table = binding_prompts(world.classes, cfg)
    size, steps = image_size(pipe), cfg.sampling.steps
    values: dict[str, dict[str, dict[str, list[float]]]] = {}  # layer -> group -> stat -> per image
    scored, start = 0, time.perf_counter()
    for first in range(0, len(table), args.batch_size):
        rows = table[first:first + args.batch_size]
        names, prompts, seeds = ([r[i] for r in rows] for i in range(3))
        with DAAMTrace(pipe, all_layers=True) as trace:
            images = generate(pipe, prompts, seeds, cfg.sampling)
        maps = trace.layer_maps(prompts, [[name, "<eos>", "<pad>"] for name in names], size)
        for i, det in enumerate(oracle.detect(list(images))):
            mask, score = det.best_mask(names[i])
            if mask is None or score < cfg.oracle_score_threshold:
                continue
            mask = np.asarray(mask, bool)
            if mask.all() or not mask.any():
                continue
            scored += 1
            n_pad = len(token_positions(pipe.tokenizer, prompts[i], "<pad>"))
            for layer, m in maps[i].items():
                m = m.cpu().numpy() / steps  # (3, H, W): class, <eos>, <pad> (mean over pad positions)
                mass = [float(m[0][mask].mean()), float(m[1][mask].mean()), n_pad * float(m[2][mask].mean())]
                for g, group in enumerate(GROUPS):
                    stats = values.setdefault(layer, {}).setdefault(group, {"inside": [], "outside": [],
                                                                            "auroc": [], "share_inside": []})
                    for key, value in zip(("inside", "outside", "auroc"), inside_outside(m[g], mask)):
                        stats[key].append(value)
                    stats["share_inside"].append(mass[g] / sum(mass))
    layers = {layer.split(".attn2")[0]: {group: {k: round(float(np.nanmean(v)), 4) for k, v in stats.items()}
                                         for group, stats in groups.items()}
              for layer, groups in values.items()}
    out = {"pipeline": str(args.pipeline), "images": len(table), "scored": scored,
           "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
           "measures": "per layer and token group (class word; <eos>; <pad>, mean over its positions): mean "
                       "attention probability per step inside / outside the oracle's mask, pixel AUROC, and "
                       "the group's share of the three groups' attention mass inside the mask",
           "layers": layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("| layer | " + " | ".join(f"{g} share inside, AUROC" for g in GROUPS) + " |")
    for layer, groups in layers.items():
        print(f"| {layer} | " + " | ".join(f"{groups[g]['share_inside']:.2f}, {groups[g]['auroc']:.2f}"
                                          for g in GROUPS) + " |")
    print(f"{scored} of {len(table)} images scored in {out['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
