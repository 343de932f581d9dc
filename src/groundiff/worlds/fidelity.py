"""Does the world's diffusion model draw what it is told? Measured with the world's own detector.

A fixed, seeded set of prompts over *all* classes — one-object prompts for every class and
two-object prompts over random pairs — is generated and passed to the oracle: a one-object image
counts when the prompted class is detected, a two-object image when both classes are (a pair of
the same class needs two instances).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from groundiff.data.prompts import CLASS_SEP, row_seed
from groundiff.worlds.oracle import Detections
from groundiff.core.schema import FidelityConfig


def fidelity_prompts(classes: tuple[str, ...], cfg: FidelityConfig) -> pd.DataFrame:
    """Columns: prompt, classes ('|'-joined), n_objects, seed."""
    rows = []
    for name in classes:
        for _ in range(cfg.one_per_class):
            rows.append((cfg.template_one.format(name), name, 1))
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.two_object):
        a, b = (classes[i] for i in rng.choice(len(classes), size=2, replace=False))
        rows.append((cfg.template_two.format(a, b), f"{a}{CLASS_SEP}{b}", 2))
    table = pd.DataFrame(rows, columns=["prompt", "classes", "n_objects"])
    table["seed"] = [row_seed(cfg.seed, i) for i in range(len(table))]
    return table


def found(det: Detections, wanted: list[str], threshold: float) -> list[bool]:
    """For each wanted class (with multiplicity), whether a confident detection accounts for it."""
    available = Counter(c for c, s in zip(det.classes, det.scores) if s >= threshold)
    out = []
    for name in wanted:
        out.append(available[name] > 0)
        available[name] -= 1
    return out


def fidelity_metrics(table: pd.DataFrame, detections: list[Detections], classes: tuple[str, ...],
                     threshold: float) -> dict:
    """one_object_recall, two_object_both_recall and a per-class table."""
    one_hits, two_hits = [], []
    per_class = {c: {"one_object_recall": [], "in_two_object_recall": []} for c in classes}
    for (_, row), det in zip(table.iterrows(), detections):
        wanted = row["classes"].split(CLASS_SEP)
        hits = found(det, wanted, threshold)
        if row["n_objects"] == 1:
            one_hits.append(hits[0])
            per_class[wanted[0]]["one_object_recall"].append(hits[0])
        else:
            two_hits.append(all(hits))
            for name, hit in zip(wanted, hits):
                per_class[name]["in_two_object_recall"].append(hit)

    def mean(values: list[bool]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "one_object_recall": mean(one_hits),
        "two_object_both_recall": mean(two_hits),
        "per_class": {c: {k: mean(v) for k, v in d.items()} for c, d in per_class.items()},
        "images": len(table),
    }
