"""A study's report, written from its finished experiments' metrics/zs3.json and nothing else:
reports/studies/<name>.json (every run x variant, and the summary) and <name>.md (the tables).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from groundiff.app.study.experiments import Experiment, experiments, matches
from groundiff.app.study.spec import Run, Study, StudyError

REPORT_DIR = Path("reports/studies")
HEADLINE = ("hiou", "miou_seen", "miou_unseen")


def _stats(values: list[float]) -> dict[str, float | None]:
    mean = statistics.fmean(values) if values else None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": None if mean is None else round(mean, 4), "sd": None if sd is None else round(sd, 4)}


def summarize(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid point and variant: n, mean and sd of each headline metric, share of the reference's hIoU."""
    out = []
    for point in study.points():
        label = Run(study.name, 0, point).label
        here = [r for r in rows if r["point_label"] == label]
        means = {}
        for variant in study.variants:
            mine = [r for r in here if r["variant"] == variant]
            entry = {"point": point, "point_label": label, "variant": variant, "n": len(mine),
                     "seeds": [r["seed"] for r in mine]}
            for key in HEADLINE:
                entry[key] = _stats([r["metrics"][key] for r in mine if r["metrics"].get(key) is not None])
            entry["seconds_per_step"] = _stats([r["seconds_per_step"] for r in mine if r.get("seconds_per_step")])
            means[variant] = entry["hiou"]["mean"]
            out.append(entry)
        ref = means.get(study.reference) if study.reference else None
        for entry in out[-len(study.variants):]:
            mean = entry["hiou"]["mean"]
            entry["share_of_reference"] = (round(mean / ref, 4) if ref and mean is not None else None)
    return out


def fmt(stat: dict[str, float | None]) -> str:
    """A summary statistic as `mean ± sd` (one decimal), `mean` for one seed, `—` for none."""
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.1f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.1f}")


def markdown(study: Study, result: dict[str, Any]) -> str:
    """reports/studies/<name>.md: per variant mean ± sd (sample sd over seeds), share of the reference, per seed."""
    ref = study.reference
    lines = [f"# Study `{study.name}`", "", study.description + ".", "",
             f"Made by `groundiff study {study.name}` from {len(result['runs_done'])} DVC experiment(s) "
             f"(`dvc exp show`, baseline `{result['baseline'][:7]}`), scored on the `{study.split}` split; "
             f"seeds {', '.join(map(str, study.seeds))}. mIoU %, mean ± sd over seeds (sample sd)."
             + (f" Share: the variant's mean hIoU over {ref}'s." if ref else "")
             + " s/step: the trainer's seconds per optimizer step (metrics/train_segmenter), over the runs that trained.", ""]
    if result["runs_missing"]:
        lines += [f"**Incomplete**: {len(result['runs_missing'])} run(s) have no finished experiment: "
                  + ", ".join(f"`{n}`" for n in result["runs_missing"]) + ".", ""]
    for point in study.points():
        label = Run(study.name, 0, point).label
        if label:
            lines += [f"## {label}", ""]
        lines += ["| variant | n | hIoU | seen | unseen |" + (" share of " + ref + " |" if ref else "")
                  + " s/step |", "|---|---|---|---|---|" + ("---|" if ref else "") + "---|"]
        for s in (s for s in result["summary"] if s["point_label"] == label):
            share = s["share_of_reference"]
            pace = s.get("seconds_per_step") or {"mean": None, "sd": None}
            pace_cell = "—" if pace["mean"] is None else f"{pace['mean']:.3f}" + ("" if pace["sd"] is None else f" ± {pace['sd']:.3f}")
            lines.append(f"| {s['variant']} | {s['n']} | {fmt(s['hiou'])} | {fmt(s['miou_seen'])} | "
                         f"{fmt(s['miou_unseen'])} |" + ((" —" if share is None else f" {share:.2f}") + " |" if ref else "")
                         + f" {pace_cell} |")
        lines += ["", "Per seed (hIoU / seen / unseen):", "", "| seed | experiment | "
                  + " | ".join(study.variants) + " |", "|---|---|" + "---|" * len(study.variants)]
        for seed in study.seeds:
            rows = {r["variant"]: r for r in result["runs"] if r["point_label"] == label and r["seed"] == seed}
            if not rows:
                continue
            exp = next(iter(rows.values()))["experiment"]
            cells = []
            for v in study.variants:
                m = rows[v]["metrics"] if v in rows else {}
                cells.append(" / ".join("—" if m.get(k) is None else f"{m[k]:.1f}" for k in HEADLINE))
            lines.append(f"| {seed} | `{exp}` | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Every run's numbers: `reports/studies/{study.name}.json`; in MLflow, the runs tagged "
              f"`groundiff.study = {study.name}` under the parent run `study {study.name}`.", ""]
    return "\n".join(lines)


def collect(study: Study, root: Path, found: Mapping[str, Experiment] | None = None,
            parent_run_id: str | None = None) -> dict[str, Any]:
    """The study's result from its finished experiments: every run x variant, and the summary."""
    found = experiments(root) if found is None else found
    rows, done, missing = [], [], []
    from groundiff.core.tracking import git_commit

    baseline = git_commit(root)[0]  # `dvc exp show` lists HEAD's experiments
    for run in study.runs():
        exp = found.get(run.name)
        if exp is None or not matches(exp, run, study):
            missing.append(run.name)
            continue
        done.append(run.name)
        for variant in study.variants:
            metrics = exp.zs3.get(variant)
            if not isinstance(metrics, dict):
                raise StudyError(f"experiment {run.name}: metrics/zs3.json has no variant {variant!r} "
                                 f"(it has: {', '.join(exp.zs3) or 'nothing'}); did its eval_zs3 run?")
            pace = (exp.training.get(variant) or {}).get("seconds_per_step")  # None: the trainer was cached
            rows.append({"experiment": run.name, "rev": exp.rev, "timestamp": exp.timestamp,
                         "variant": variant, "seed": run.seed, "split": study.split,
                         "point": run.point, "point_label": run.label, "seconds_per_step": pace,
                         "metrics": {k: metrics.get(k) for k in HEADLINE} | {"per_class": metrics.get("per_class", {})}})
    result = {
        "study": study.name, "description": study.description, "split": study.split,
        "variants": list(study.variants), "seeds": list(study.seeds),
        "grid": {k: list(v) for k, v in study.grid.items()}, "set": study.set, "stages": list(study.stages),
        "reference": study.reference, "baseline": baseline,
        "mlflow": {"parent_run_id": parent_run_id, "tags": {"study": "groundiff.study", "variant": "groundiff.variant",
                                                            "seed": "groundiff.seed", "split": "groundiff.split",
                                                            "point": "groundiff.point"}},
        "runs_done": done, "runs_missing": missing, "runs": rows,
    }
    result["summary"] = summarize(study, rows)
    return result


def write_report(study: Study, result: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """Write reports/studies/<name>.md and .json under `root`; return their paths."""
    out = root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{study.name}.md", out / f"{study.name}.json"
    md.write_text(markdown(study, result))
    js.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return md, js
