"""pipeline_run and stage_run: open a run under its parent, log the stage's params, end it with the block's status."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundiff.core.tracking.handle import MAX_PARAMS_PER_BATCH, NullStageRun, StageRun, _close, flatten_params
from groundiff.core.tracking.store import (_busy, _client, _commit_tags, _experiment_id, _settle_unfinished, _warn,
                                           enabled, git_commit)
from groundiff.core.tracking.studies import study_context
from groundiff.core.tracking.view import refresh_headline_view

if TYPE_CHECKING:  # mlflow takes ~1 s to import: stages with tracking off never pay for it
    from mlflow.tracking import MlflowClient

PARENT_ENV = "GROUNDIFF_PARENT_RUN_ID"


@contextmanager
def pipeline_run(name: str = "pipeline", root: Path | str | None = None,
                 tags: Mapping[str, Any] | None = None) -> Iterator[str | None]:
    """Open a parent run for one pipeline execution and yield its id (None with tracking off, or when
    the store cannot be reached: then the pipeline runs untracked, with a warning).

    Pass the id to the stages (`parent_run_id=` or env `GROUNDIFF_PARENT_RUN_ID`) to nest them.
    """
    if not enabled():
        yield None
        return
    try:
        client = _client(root)
        _settle_unfinished(client, root)
        sha, dirty = git_commit(root)
        run_id = client.create_run(
            _experiment_id(client, root),
            run_name=name,
            tags={"groundiff.kind": "pipeline", **_commit_tags(sha, dirty),
                  **{k: str(v) for k, v in (tags or {}).items()}},
        ).info.run_id
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn("opening the pipeline's run", err)
        yield None
        return
    try:
        yield run_id
    except BaseException as error:
        _close(client, root, run_id, error)
        raise
    _close(client, root, run_id, None)


def _dvc_repro_parent(client: MlflowClient, experiment_id: str, sha: str, dirty: bool) -> str:
    """The latest "dvc repro @ <sha>" run for this commit, created if there is none yet."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`groundiff.kind` = 'pipeline' and tags.`groundiff.launcher` = 'dvc' "
        f"and tags.`groundiff.commit` = '{sha[:7]}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    name = f"dvc repro @ {sha[:7]}{'+dirty' if dirty else ''}"
    tags = {"groundiff.kind": "pipeline", "groundiff.launcher": "dvc", **_commit_tags(sha, dirty)}
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any], root: Path | str | None = None,
              parent_run_id: str | None = None) -> Iterator[StageRun]:
    """Run the block as MLflow child run `<stage>` with `params` logged (flattened).

    The parent is `parent_run_id`, else env GROUNDIFF_PARENT_RUN_ID, else the "dvc repro @
    <commit>" run of this commit. An exception in the block marks the run FAILED and propagates.
    """
    if not enabled():
        yield NullStageRun()
        return
    opened = _open_stage_run(stage, params, root, parent_run_id)
    if opened is None:  # the store is unavailable: the work goes on untracked (warned)
        yield NullStageRun()
        return
    client, run, parent = opened
    try:
        yield run
    except BaseException as error:
        _close(client, root, run.run_id, error, parent)
        raise
    _close(client, root, run.run_id, None, parent)
    if run.headline and not run.broken:
        try:
            refresh_headline_view(client, client.get_run(run.run_id).info.experiment_id)
        except Exception as err:  # noqa: BLE001 (tracking never costs work)
            _warn("updating the experiment's headline view", err)


def _open_stage_run(stage: str, params: Mapping[str, Any], root: Path | str | None,
                    parent_run_id: str | None) -> tuple[MlflowClient, StageRun, str | None] | None:
    """(client, the stage's run, the grouping parent to mirror its status or None); None after a
    warning when the store cannot be reached. A parent that is not in the store is an error."""
    try:
        client = _client(root)
        _settle_unfinished(client, root)
        experiment_id = _experiment_id(client, root)
        sha, dirty = git_commit(root)
        study_parent, study_tags = study_context(stage)
        parent = parent_run_id or os.environ.get(PARENT_ENV) or study_parent or None
        grouped = parent is None  # a plain `dvc repro`: the group run mirrors its latest stage's status
        if grouped:
            parent = _dvc_repro_parent(client, experiment_id, sha, dirty)
        else:
            _check_parent(client, parent)
        tags = {"mlflow.parentRunId": parent, "groundiff.stage": stage, **_commit_tags(sha, dirty), **study_tags}
        run = StageRun(client, client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id)
    except ParentRunMissing:
        raise
    except Exception as err:  # noqa: BLE001 (tracking never costs work)
        _warn(f"opening the {stage} run", err)
        return None
    from mlflow.entities import Param

    flat = [Param(k, v) for k, v in flatten_params(params).items()]
    for i in range(0, len(flat), MAX_PARAMS_PER_BATCH):
        run._call("logging params", client.log_batch, run.run_id, params=flat[i : i + MAX_PARAMS_PER_BATCH])
    return client, run, parent if grouped else None


class ParentRunMissing(RuntimeError):
    """GROUNDIFF_PARENT_RUN_ID (or the argument) names a run that is not in the store."""


def _check_parent(client: MlflowClient, run_id: str) -> None:
    """Fail before the stage's work if its parent is not in this store (e.g. a stale env var)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as err:
        if _busy(err):
            raise
        raise ParentRunMissing(
            f"parent run {run_id!r} (argument or {PARENT_ENV}) is not in {client.tracking_uri}: "
            f"unset {PARENT_ENV}, or point MLFLOW_TRACKING_URI at the store that holds it."
        ) from err
