"""`groundiff study` in MLflow: the study context a stage reads from params.yaml, and the study's one parent run.

`groundiff study` (groundiff.app.study) runs each grid point x seed as a DVC experiment whose params.yaml
carries a `tracking` section (RUN_ONLY: no stage reruns for it): the study, its grid point and its
MLflow parent run. Params, not env vars, because a queued experiment runs in a temp workspace started
by a DVC queue worker. Every stage run of such an experiment nests under the study's one parent run
and carries the tags `STUDY_TAGS`, so MLflow's compare view lines the seeds up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from groundiff.core.tracking.handle import StageRun, _close
from groundiff.core.tracking.store import (_client, _commit_tags, _experiment_id, _settle_unfinished, _warn, enabled,
                                           git_commit)
from groundiff.core.tracking.view import refresh_headline_view

STUDY_TAGS = ("groundiff.study", "groundiff.point", "groundiff.seed", "groundiff.split", "groundiff.variant",
              "groundiff.dvc_experiment")


def study_context(stage: str, params_file: Path | str = "params.yaml") -> tuple[str | None, dict[str, str]]:
    """(the study's parent run id or None, the study tags) for a stage run, from params.yaml in cwd.

    Outside a study (`tracking.study` empty or absent) this is (None, {}). The variant is the stage's
    `@<variant>` (train_segmenter@C), or for eval_zs3 the variants it scores, comma-separated.
    """
    import yaml

    try:
        raw = yaml.safe_load(Path(params_file).read_text()) or {}
    except (OSError, ValueError):  # the stage itself reports a missing or broken params.yaml
        return None, {}
    section = raw.get("tracking") if isinstance(raw, dict) else None
    if not isinstance(section, dict) or not section.get("study"):
        return None, {}

    def get(*keys: str) -> Any:
        node: Any = raw
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    if "@" in stage:
        variant = stage.split("@", 1)[1]
    elif stage == "eval_zs3":
        variant = ",".join(get("eval_zs3", "variants") or get("train_segmenter", "variants") or [])
    else:
        variant = ""
    tags = {"groundiff.study": section["study"], "groundiff.point": section.get("point") or "",
            "groundiff.seed": get("train_segmenter", "segmenter", "seed"), "groundiff.split": get("eval_zs3", "split"),
            "groundiff.variant": variant, "groundiff.dvc_experiment": os.environ.get("DVC_EXP_NAME", "")}
    parent = str(section.get("parent_run_id") or "") or None
    return parent, {k: str(v) for k, v in tags.items() if v not in (None, "")}


def _study_filter(name: str) -> str:
    return f"tags.`groundiff.kind` = 'study' and tags.`groundiff.study` = '{name}'"


def find_study_run(name: str, root: Path | str | None = None) -> str | None:
    """The id of study `name`'s parent run (the latest if several), or None (none, or tracking off)."""
    if not enabled():
        return None
    try:
        client = _client(root)
        found = client.search_runs([_experiment_id(client, root)], filter_string=_study_filter(name),
                                   order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn(f"finding study {name}'s run", err)
        return None
    return found[0].info.run_id if found else None


def study_run(name: str, root: Path | str | None = None, tags: Mapping[str, Any] | None = None) -> str | None:
    """Study `name`'s one parent run ("study <name>"), found or created, marked RUNNING; None with tracking
    off or the store unavailable (then the study's stage runs group as a plain `dvc repro`'s would)."""
    if not enabled():
        return None
    try:
        client = _client(root)
        _settle_unfinished(client, root)
        run_id = find_study_run(name, root)
        extra = {k: str(v) for k, v in (tags or {}).items()}
        if run_id is None:
            sha, dirty = git_commit(root)
            run_id = client.create_run(
                _experiment_id(client, root), run_name=f"study {name}",
                tags={"groundiff.kind": "study", "groundiff.study": name, **_commit_tags(sha, dirty), **extra},
            ).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
            StageRun(client, run_id).set_tags(extra)
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn(f"opening study {name}'s run", err)
        return None
    return run_id


def end_study_run(run_id: str | None, root: Path | str | None = None, metrics: Mapping[str, Any] | None = None,
                  artifacts: Iterable[Path | str] = (), failed: bool = False) -> None:
    """Log the study's summary metrics and report files on its parent run, and end it."""
    if run_id is None or not enabled():
        return
    try:
        client = _client(root)
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn("ending the study's run", err)
        return
    run = StageRun(client, run_id)
    run.log_metrics(metrics or {})
    try:  # the study means (`C.hiou_mean`) become columns of the "Headline metrics" view now
        refresh_headline_view(client, client.get_run(run_id).info.experiment_id)
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn("refreshing the headline view", err)
    for path in artifacts:
        run.log_artifact(path, artifact_path="study")
    _close(client, root, run_id, RuntimeError("runs missing") if failed else None)
