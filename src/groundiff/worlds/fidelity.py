"""Does the world's diffusion model draw what it is told? Measured with the world's own detector.

A fixed, seeded set of prompts over *all* classes — one-object prompts for every class and
two-object prompts over random pairs — is generated and passed to the oracle: a one-object image
counts when the prompted class is detected, a two-object image when both classes are (a pair of
the same class needs two instances). Bars (issue: world models): one-object recall >= 0.85,
two-object both-found recall >= 0.60.

    metrics, images, table = run_fidelity(pipe, oracle, world.classes, cfg)
    report_markdown(metrics); sample_grid(images, table, len(world.classes), cfg.prompts)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from groundiff.core.schema import FidelityConfig, WorldFidelityParams
from groundiff.data.prompts import CLASS_SEP, row_seed
from groundiff.diffusion.pipeline import generate
from groundiff.figures import captioned_grid
from groundiff.worlds.oracle import Detections, Oracle


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


def run_fidelity(pipe, oracle: Oracle, classes: tuple[str, ...],
                 cfg: WorldFidelityParams) -> tuple[dict, list[np.ndarray], pd.DataFrame]:
    """Generate the fidelity prompts over `classes` with `pipe` (in batches) and score them with
    `oracle`: (metrics, images, prompt table), images in table order."""
    table = fidelity_prompts(classes, cfg.prompts)
    images = []
    for i in tqdm(range(0, len(table), cfg.sampling.batch_size), desc="world_fidelity", mininterval=5):
        chunk = table.iloc[i:i + cfg.sampling.batch_size]
        images.extend(generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), cfg.sampling))
    detections = oracle.detect(images)
    metrics = fidelity_metrics(table, detections, classes, cfg.prompts.score_threshold)
    return metrics, images, table


def markdown_table(metrics: dict) -> str:
    """The headline recalls, then one row per class."""
    rows = [
        "| class | one-object recall | recall inside two-object images |",
        "|---|---|---|",
    ]
    for name, m in metrics["per_class"].items():
        fmt = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rows.append(f"| {name} | {fmt(m['one_object_recall'])} | {fmt(m['in_two_object_recall'])} |")
    head = (
        f"One-object recall: **{100 * metrics['one_object_recall']:.1f}%** (bar 85%); "
        f"two-object both-found recall: **{100 * metrics['two_object_both_recall']:.1f}%** (bar 60%), "
        f"over {metrics['images']} generated images.\n\n"
    )
    return head + "\n".join(rows) + "\n"


def report_markdown(metrics: dict) -> str:
    """reports/world_fidelity.md."""
    return "# World fidelity\n\n" + markdown_table(metrics)


def sample_picks(n_classes: int, one_per_class: int, n_rows: int) -> list[int]:
    """Rows to show: two one-object images of (up to 12 evenly spread) classes, then up to 16
    two-object images."""
    n = one_per_class
    shown = list(range(0, n_classes, max(1, n_classes // 12)))[:12]
    picks = [c * n + j for c in shown for j in range(min(2, n))]
    picks += list(range(n_classes * one_per_class, n_rows))[:16]
    return picks


def sample_grid(images: list[np.ndarray], table: pd.DataFrame, n_classes: int, cfg: FidelityConfig) -> Image.Image:
    """The picked samples, captioned with their prompts."""
    picks = sample_picks(n_classes, cfg.one_per_class, len(table))
    return captioned_grid([images[i] for i in picks],
                          [table.iloc[i]["prompt"].removeprefix("a photograph of ") for i in picks], columns=6)
