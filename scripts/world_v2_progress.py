"""Tabulate world v2's training checks against world v1 and the bars (issue 26).

    python scripts/world_v2_progress.py      # reads reports/world_v2/step*_{binding,fidelity}.json

Each probe of the unfinished UNet (`scripts/train_world_v2.py --probe --out DIR`) is measured by
`scripts/measure_binding.py --out reports/world_v2/stepN_binding.json` and
`scripts/measure_fidelity.py --out reports/world_v2/stepN_fidelity.json` (`stepN-TAG_...` for a run
beside the main one, labelled by RUNS); world v1's row comes from
the shipped model's metrics (`metrics/world_binding.json`, `metrics/world_fidelity.json`). The
renderer's row, the most a model can reach, is `scripts/measure_fidelity.py --renderer`'s
(`renderer_fidelity.json`, when it is there). Writes reports/world_v2/progress.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from groundiff.core import paths
from groundiff.worlds.bars import BINDING_BARS, FIDELITY_V2_BARS

DIR = paths.REPORTS / "world_v2"
RUNS = {  # what a probe's tag stands for
    "frozen": "cycle 2 with the cross-attention frozen",
    "short": "a cycle 1 of 1000 steps",
    "shortfrozen": "the 1000-step cycle 1, then cycle 2 with the cross-attention frozen",
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def row(label: str, binding: dict | None, fidelity: dict | None, paired: float | None = None) -> str:
    cells = [label]
    if binding:
        att = binding["attention"]
        cells += [f"{binding['cosine']['class_word']['mean']:.3f}", f"{att['daam_miou']:.1f}",
                  "–" if paired is None else f"{paired:.1f}",
                  f"{att['layers_inside_gt_outside']} / {att['n_layers']}", f"{att['scored']} of {att['images']}"]
    else:
        cells += ["–"] * 5
    cells += [_pct(fidelity and fidelity["one_object_recall"]), _pct(fidelity and fidelity["two_object_both_recall"])]
    return "| " + " | ".join(cells) + " |"


def paired_daam(bindings: dict[str, dict]) -> tuple[int, dict[str, float]]:
    """DAAM mIoU of each probe over the images (class, seed) that the oracle found in every probe with
    per-image results: the same images for all, so a difference is the model's, not the image set's."""
    found = {name: {(r["class"], r["seed"]): r["iou"] for r in b["attention"]["per_image"] if r["found"]}
             for name, b in bindings.items() if "per_image" in b["attention"]}
    if not found:
        return 0, {}
    common = set.intersection(*(set(images) for images in found.values()))
    if not common:
        return 0, {}
    return len(common), {name: 100 * sum(ious[k] for k in common) / len(common) for name, ious in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DIR, help="the probes' JSON; progress.md is written here")
    folder = parser.parse_args().dir
    v1_binding = json.loads(paths.metrics("world_binding").read_text())
    v1_fidelity = json.loads(paths.metrics("world_fidelity").read_text())
    # stepN_{binding,fidelity}.json, or stepN-TAG_... for a run beside the main one (e.g. -frozen)
    probes = sorted({(int(m.group(1)), m.group(2)) for p in folder.glob("step*_*.json")
                     if (m := re.match(r"step(\d+)(?:-([a-z0-9]+))?_(?:binding|fidelity)\.json$", p.name))},
                    key=lambda probe: (probe[0], probe[1] or ""))
    names = {probe: f"step{probe[0]}" + (f"-{probe[1]}" if probe[1] else "") for probe in probes}
    bindings = {name: json.loads(path.read_text()) for name in names.values()
                if (path := folder / f"{name}_binding.json").exists()}
    n_paired, paired = paired_daam(bindings)
    lines = [
        "# World v2: checks during training",
        "",
        "Written by `scripts/world_v2_progress.py` from the probes' measurements in this folder. DAAM is",
        "scored against the oracle on one-object images (those where the oracle finds the object) by",
        "`scripts/measure_binding.py`, 2 or 10 prompts per class (the images column; the first 2 per class",
        "are the same prompts); v1's row is the `world_binding` stage (10 per class). Each model is scored",
        "on the images where the oracle found its object, so the image sets differ; the paired column",
        f"scores every v2 probe on the same {n_paired} images, those found in all of them. Fidelity: the",
        "`world_fidelity` stage's 400 prompts in fp32 (`scripts/measure_fidelity.py`), v1's row the",
        "stage's own (bf16). UNet steps count both cycles on one axis: cycle 2's step s is cycle 1's",
        "steps + s (`scripts/train_world_v2.py --probe` prints it). The renderer's row scores the scenes",
        "the renderer draws for the same prompts and seeds (`scripts/measure_fidelity.py --renderer`):",
        "what the oracle finds there is the most a model can reach.",
        "",
        f"| model | class-word cosine | DAAM mIoU | DAAM, paired ({n_paired} images) | layers inside > outside | "
        "DAAM images scored | one-object fidelity | two-object both found |",
        "|---|---|---|---|---|---|---|---|",
        f"| bar | ≤ {BINDING_BARS['class_word_cosine_mean_at_most']} | ≥ {BINDING_BARS['daam_miou_at_least']:.0f} | | "
        f"{BINDING_BARS['layers_inside_gt_outside']} | | ≥ {_pct(FIDELITY_V2_BARS['one_object_recall'])} | "
        f"≥ {_pct(FIDELITY_V2_BARS['two_object_both_recall'])} |",
    ]
    renderer = folder / "renderer_fidelity.json"
    if renderer.exists():
        lines.append(row("renderer's own scenes (the ceiling)", None, json.loads(renderer.read_text())["metrics"]))
    lines.append(row("v1 (shipped)", v1_binding, v1_fidelity))
    for (step, tag), name in names.items():
        fidelity = folder / f"{name}_fidelity.json"
        lines.append(row(f"v2, UNet step {step}" + (f" ({RUNS.get(tag, tag)})" if tag else ""), bindings.get(name),
                         json.loads(fidelity.read_text())["metrics"] if fidelity.exists() else None,
                         paired.get(name)))
    out = folder / "progress.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
