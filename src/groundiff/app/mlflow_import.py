"""`groundiff mlflow-import`: the shipped run's committed results as MLflow runs, so a fresh clone can
browse and compare them in `mlflow ui` before it has run anything (docs/mlflow.md).

    groundiff mlflow-import       # into <root>/mlflow.db and <root>/mlruns/, where the pipeline's runs go
    mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --default-artifact-root $PWD/mlruns

What it reads, all committed in git:
- dvc.lock: which stage wrote which metrics file, and the params it ran with;
- metrics/**/*.json: each stage's metrics (zs3.json and protocol1.json named as eval_zs3 and eval_grounding
  log them, `C.hiou`, `ours_one_seen`; other files' numbers as dotted paths, `per_class_ap50.star`);
- metrics/**/*_loss.csv: the training logs, as step series (one metric per column, thinned to
  MAX_STEPS steps; the whole log is attached);
- reports/studies/*.json when there are any: `groundiff study` results (per DVC experiment: variant,
  seed, split and its metrics).

What it writes, every run tagged `groundiff.source = shipped`:

    shipped results @ <commit>        parent (<commit>: dvc.lock's last commit); its row shows the headline
      world_data, ..., train_segmenter@C, eval_zs3, ...   a child per stage, with its metrics and params
      study seeds (shipped)           a parent per study, with the study's means (`C.hiou_mean`)
        <DVC experiment>              a child per experiment of the study (`C.hiou`, ..., tagged seed/split)

Importing again with the same files skips (the group carries a fingerprint of its inputs); after they
changed (a newer run was committed) it replaces the group: the old shipped runs are deleted (`mlflow gc`
purges deleted runs), the pipeline's own runs are never touched. `force=True` replaces it anyway.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groundiff.core import paths, tracking
from groundiff.eval.metric_names import protocol1_metric_names, zs3_metric_names

SOURCE_TAG, SHIPPED = "groundiff.source", "shipped"
FINGERPRINT_TAG = "groundiff.shipped_fingerprint"
FORMAT = "1"  # part of the fingerprint: a change in how runs are written re-imports
STUDIES = Path("reports/studies")
# A loss log keeps at most this many steps per metric, evenly spaced, first and last included: MLflow's
# charts draw 320 sampled points of a metric anyway, and writing all 32k logged steps of the shipped run
# (160k points) takes minutes of SQLite inserts. The whole log is attached to its run as an artifact.
MAX_STEPS = 500


class ShippedResultsMissing(FileNotFoundError):
    """No committed metrics to import (not a groundiff checkout, or metrics/ emptied)."""


@dataclass
class RunSpec:
    """One MLflow run to write: name, tags, params, final metrics, step series, files to attach."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, int, float]] = field(default_factory=list)  # (key, step, value)
    files: list[Path] = field(default_factory=list)
    children: list[RunSpec] = field(default_factory=list)
    start_ms: int | None = None


@dataclass
class ImportResult:
    action: str  # "imported", "replaced" or "skipped"
    experiment_id: str
    parent_run_id: str
    runs: int  # runs in the shipped group, parent included
    deleted: int  # shipped runs of an older import deleted
    tracking_uri: str
    url: str  # the runs table with the headline view (`mlflow ui`'s default address)


# --------------------------------------------------------------------------- reading the shipped files


def _numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in nested dicts as `a.b.c` (bools, strings, lists left out)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix[:-1]] = float(data)
    return out


def _metric_name(key: str) -> str:
    """`key` with what MLflow refuses in a metric name (anything but letters, digits, `_-. :/`) as `_`."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def _metric_names(path: Path, data: Any) -> dict[str, float]:
    """The file's metrics under the names its stage logs them to MLflow."""
    flat = {"zs3.json": zs3_metric_names, "protocol1.json": protocol1_metric_names}.get(path.name, _numbers)(data)
    return {_metric_name(k): float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _read_json(path: Path, root: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path.relative_to(root)} is not valid JSON ({err}); restore the committed file "
                         f"with `git checkout -- {path.relative_to(root)}`") from None


def _loss_series(path: Path, root: Path, max_steps: int = MAX_STEPS) -> list[tuple[str, int, float]]:
    """A loss log (`step,<metric>,...`) as (metric, step, value) points, thinned to `max_steps` rows."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "step" not in rows[0]:
        raise ValueError(f"{path.relative_to(root)} has no `step` column (columns: {', '.join(rows[0])}); "
                         "a loss log starts with `step,loss`")
    if len(rows) > max_steps:
        rows = [rows[round(i * (len(rows) - 1) / (max_steps - 1))] for i in range(max_steps)]
    points = []
    for row in rows:
        step = int(float(row["step"]))
        for key, text in row.items():
            if key == "step" or text in (None, ""):
                continue
            value = float(text)
            if math.isfinite(value):
                points.append((key, step, value))
    return points


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _commit_of(root: Path, path: Path) -> tuple[str, int | None]:
    """(sha of the last commit that changed `path`, its time in ms): ("unknown", None) outside git."""
    out = _git(root, "log", "-1", "--format=%H %ct", "--", str(path.relative_to(root)))
    if not out:
        return "unknown", None
    sha, seconds = out.split()
    return sha, int(seconds) * 1000


def _locked_stages(root: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """metrics file (relative path) -> (the dvc.lock stage that writes it, that stage's params.yaml params)."""
    lock = root / paths.DVC_LOCK
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    found = {}
    for name, entry in stages.items():
        params = ((entry or {}).get("params") or {}).get("params.yaml") or {}
        for out in (entry or {}).get("outs") or []:
            found[out["path"]] = (name, params)
    return found


def _pipeline_children(root: Path, commit: str, start_ms: int | None) -> list[RunSpec]:
    metrics_dir = root / paths.METRICS
    files = sorted(p for p in metrics_dir.rglob("*") if p.suffix == ".json" or p.name.endswith("_loss.csv"))
    if not any(p.suffix == ".json" for p in files):
        raise ShippedResultsMissing(
            f"no metrics to import: {metrics_dir} holds no *.json; run `groundiff mlflow-import` in the root of "
            "a groundiff checkout (the shipped run's metrics are committed there), or `dvc repro` to make them")
    locked = _locked_stages(root)
    stages: dict[str, RunSpec] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        stage, params = locked.get(rel, (path.stem.removesuffix("_loss"), {}))
        spec = stages.get(stage)
        if spec is None:
            spec = stages[stage] = RunSpec(
                stage, params=tracking.flatten_params(params), start_ms=start_ms,
                tags={"groundiff.stage": stage, SOURCE_TAG: SHIPPED, "groundiff.commit": commit[:7],
                      "mlflow.source.git.commit": commit})
        if path.suffix == ".json":
            for key, value in _metric_names(path, _read_json(path, root)).items():
                spec.metrics.setdefault(key, value)  # a stage's first file names a key; later ones add only
        else:
            spec.series += _loss_series(path, root)
        spec.files.append(path)
    return list(stages.values())


def _study(path: Path, root: Path, commit: str, start_ms: int | None) -> RunSpec | None:
    """A `groundiff study` result (reports/studies/<name>.json) as a study parent and a run per experiment;
    None (with the reason printed) for a file that holds no runs."""
    data = _read_json(path, root)
    rows = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        print(f"mlflow-import: {path.relative_to(root)} lists no runs (`runs`); skipped")
        return None
    name = str(data.get("study") or path.stem)
    kept = {k: data[k] for k in ("split", "description", "reference") if isinstance(data.get(k), str) and data[k]}
    report = path.with_suffix(".md")  # the study's table, attached beside its json
    files = [path, *([report] if report.is_file() else [])]
    parent = RunSpec(f"study {name} (shipped)", start_ms=start_ms, files=files,
                     tags={"groundiff.kind": "shipped_study", "groundiff.study": name, SOURCE_TAG: SHIPPED,
                           "groundiff.commit": commit[:7], **{f"groundiff.{k}": v for k, v in kept.items()}})
    runs: dict[str, RunSpec] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        seed, variant = row.get("seed"), row.get("variant")
        label = row.get("point_label") or ""
        key = str(row.get("experiment") or f"{label + ' ' if label else ''}seed {seed}")
        run = runs.get(key)
        if run is None:
            tags = {"groundiff.study": name, "groundiff.seed": seed,
                    "groundiff.split": row.get("split") or kept.get("split"), "groundiff.point": label,
                    "groundiff.dvc_experiment": row.get("experiment"), "groundiff.rev": row.get("rev"),
                    SOURCE_TAG: SHIPPED}
            run = runs[key] = RunSpec(key, start_ms=start_ms,
                                      tags={k: str(v) for k, v in tags.items() if v not in (None, "")})
            run.tags["groundiff.variant"] = ""
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else row
        prefix = f"{variant}." if variant else ""
        for k, v in metrics.items():
            if k == "per_class" and isinstance(v, dict):  # as eval_zs3 logs it: `C.iou_star`
                run.metrics.update({f"{prefix}iou_{c}": float(x) for c, x in _numbers(v).items()})
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                run.metrics[f"{prefix}{k}"] = float(v)
        if variant:
            run.tags["groundiff.variant"] = ",".join(filter(None, [run.tags["groundiff.variant"], str(variant)]))
    for entry in data.get("summary") or []:  # the study's means, named as `groundiff study` logs them
        if not isinstance(entry, dict) or not entry.get("variant"):
            continue
        where = f"{entry['point_label']}/" if entry.get("point_label") else ""
        for k, stat in entry.items():
            mean = stat.get("mean") if isinstance(stat, dict) else None
            if isinstance(mean, (int, float)) and math.isfinite(mean):
                parent.metrics[f"{where}{entry['variant']}.{k}_mean"] = float(mean)
    parent.children = [r for r in runs.values() if r.metrics]
    for run in parent.children:
        if not run.tags["groundiff.variant"]:
            del run.tags["groundiff.variant"]
    return parent


def read_shipped(root: Path | str | None = None) -> RunSpec:
    """The shipped results of the checkout at `root` as the run tree to write (nothing written yet)."""
    root = tracking.project_root(root)
    lock = root / paths.DVC_LOCK
    commit, start_ms = _commit_of(root, lock) if lock.is_file() else ("unknown", None)
    changed = bool(_git(root, "status", "--porcelain", "--", str(paths.DVC_LOCK)))  # results not committed yet
    commit_label = f"{commit[:7]}+uncommitted dvc.lock" if changed else commit[:7]
    children = _pipeline_children(root, commit, start_ms)
    headline = {k: v for c in children for k, v in c.metrics.items() if tracking.is_headline(k)}
    parent = RunSpec(
        f"shipped results @ {commit_label}", metrics=headline, children=children, start_ms=start_ms,
        tags={"groundiff.kind": "shipped", SOURCE_TAG: SHIPPED, "groundiff.commit": commit[:7],
              "mlflow.source.git.commit": commit,
              "mlflow.note.content": f"The results committed with dvc.lock at {commit[:7]}, imported by "
                                     "`groundiff mlflow-import` from metrics/, the loss logs and reports/studies/ "
                                     "(nothing was run). This row shows the headline metrics of its stages."})
    for path in sorted((root / STUDIES).glob("*.json")):
        sha, ms = _commit_of(root, path)
        study = _study(path, root, sha if sha != "unknown" else commit, ms or start_ms)
        if study is not None:
            parent.children.append(study)
    parent.tags[FINGERPRINT_TAG] = _fingerprint(parent, root)
    return parent


def _files(spec: RunSpec) -> list[Path]:
    return [*spec.files, *[f for c in spec.children for f in _files(c)]]


def _fingerprint(spec: RunSpec, root: Path) -> str:
    digest = hashlib.sha256(FORMAT.encode())
    lock = root / paths.DVC_LOCK
    for path in sorted({*_files(spec), *([lock] if lock.is_file() else [])}):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- writing the runs


def _count(spec: RunSpec) -> int:
    return 1 + sum(_count(c) for c in spec.children)


def _write(client: Any, experiment_id: str, spec: RunSpec, parent_id: str | None, made: list[str]) -> str:
    """Write `spec` and its children (ids appended to `made` as they are created); the parent's
    fingerprint tag is set last, so an import that failed halfway is never taken for a finished one."""
    from mlflow.entities import Metric, Param

    tags = {k: v for k, v in spec.tags.items() if k != FINGERPRINT_TAG}
    tags.update({"mlflow.parentRunId": parent_id} if parent_id else {})
    run_id = client.create_run(experiment_id, start_time=spec.start_ms, run_name=spec.name, tags=tags).info.run_id
    made.append(run_id)
    when = spec.start_ms or int(time.time() * 1000)
    params = [Param(k, v) for k, v in spec.params.items()]
    for i in range(0, len(params), tracking.MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + tracking.MAX_PARAMS_PER_BATCH])
    points = [Metric(k, v, when, step) for k, step, v in spec.series]
    stepped = {p.key for p in points}  # a series' latest value is its metric; a json value does not replace it
    points += [Metric(k, v, when, 0) for k, v in spec.metrics.items() if k not in stepped]
    for i in range(0, len(points), tracking.MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[i : i + tracking.MAX_METRICS_PER_BATCH])
    for path in spec.files:
        client.log_artifact(run_id, str(path), "shipped")
    for child in spec.children:
        _write(client, experiment_id, child, run_id, made)
    if FINGERPRINT_TAG in spec.tags:
        client.set_tag(run_id, FINGERPRINT_TAG, spec.tags[FINGERPRINT_TAG])
    client.set_terminated(run_id, status="FINISHED", end_time=when)
    return run_id


def _shipped_runs(client: Any, experiment_id: str) -> list[Any]:
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{SOURCE_TAG}` = '{SHIPPED}'",
                                  max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def import_shipped(root: Path | str | None = None, force: bool = False) -> ImportResult:
    """Write the shipped results into the project's tracking store (see the module docstring): skipped
    when an import of the same files is there (unless `force`), replacing an older import otherwise."""
    spec = read_shipped(root)
    client, experiment_id = tracking.open_experiment(root)
    old = _shipped_runs(client, experiment_id)
    same = [r for r in old if r.data.tags.get("groundiff.kind") == "shipped"
            and r.data.tags.get(FINGERPRINT_TAG) == spec.tags[FINGERPRINT_TAG]]
    if same and not force:
        tracking.refresh_headline_view(client, experiment_id)
        return ImportResult("skipped", experiment_id, same[0].info.run_id, _count(spec), 0, client.tracking_uri,
                            tracking.runs_url(experiment_id))
    made: list[str] = []
    try:
        parent_id = _write(client, experiment_id, spec, None, made)
    except BaseException:  # leave no half import behind: the store holds the old one or nothing
        for run_id in made:
            client.delete_run(run_id)
        raise
    for run in old:
        client.delete_run(run.info.run_id)
    tracking.refresh_headline_view(client, experiment_id)
    return ImportResult("replaced" if old else "imported", experiment_id, parent_id, _count(spec), len(old),
                        client.tracking_uri, tracking.runs_url(experiment_id))


__all__ = ["ImportResult", "RunSpec", "ShippedResultsMissing", "import_shipped", "read_shipped"]
