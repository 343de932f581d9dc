"""MLflow tracking for the pipeline: one parent run per pipeline run, one child run per stage.

Why it looks like this:
- Tracking goes to SQLite at `<project root>/mlflow.db` (absolute), artifacts to `<root>/mlruns/`.
  MLflow 3 refuses a bare `./mlruns` file store, and a *relative* URI would land in DVC's temp
  workspaces under `dvc exp run --temp/--queue`; from such a workspace (`.dvc/tmp/exps/...`) the
  root resolves to the real repository so every run lands in one database. No server is needed.
- Everything goes through `MlflowClient` with explicit run ids, never MLflow's *active run*: the
  active-run stack is thread-local, so a Prefect task or Dask worker thread would not see the
  pipeline's run and would start a stray top-level run instead of nesting.
- A stage finds its parent in this order: the `parent_run_id` argument, the env var
  `GROUNDIFF_PARENT_RUN_ID` (set by the Prefect flow for the `dvc repro` it launches), else a
  "dvc repro @ <commit>" run that groups every stage a plain `dvc repro` ran on that commit.

Environment:
    MLFLOW_TRACKING_URI       use this store (e.g. an MLflow server) instead of `<root>/mlflow.db`
    GROUNDIFF_EXPERIMENT      experiment name (default "groundiff")
    GROUNDIFF_PARENT_RUN_ID   nest stage runs under this run
    GROUNDIFF_TRACKING=0      turn tracking off (`off`/`false` too): `stage_run` yields a no-op
    GROUNDIFF_TRACKING_WAIT_S how long a call waits while the SQLite store is busy (default 120)

Tracking never costs work. Two Prefect lanes (or a user's `mlflow ui`) share one SQLite file, so a
call that finds it locked waits and retries (`GROUNDIFF_TRACKING_WAIT_S`). If the store stays
unavailable, the stage warns once and goes on untracked: its outputs and exit status are what its
work deserves. A run whose end could not be recorded is listed in `<root>/mlruns/.unfinished.jsonl`
and marked FINISHED/FAILED by the next stage that reaches the store, so no run stays RUNNING.

Browse the runs with `mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db`.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow takes ~1 s to import: stages with tracking off never pay for it
    from mlflow.tracking import MlflowClient

PARENT_ENV = "GROUNDIFF_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "groundiff"
# MLflow's limits (mlflow.utils.validation): longer param values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Keep MLflow quiet: no "View run at <url>" prints, no SQLite schema-migration chatter.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
for _name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# A locked database is retried, and reported once as a TrackingWarning if it stays locked: MLflow's
# own multi-line SQL error log for each attempt would bury that line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------- where things go


def project_root(root: Path | str | None = None) -> Path:
    """`root` made absolute, or the nearest ancestor of cwd holding dvc.yaml (else cwd).

    Inside a DVC experiment workspace (`<repo>/.dvc/tmp/exps/<tmp>/`) this returns `<repo>`, so
    runs from `dvc exp run --temp/--queue` land in the repository's database, not a temp copy.
    """
    if root is not None:
        return Path(root).resolve()
    cwd = Path.cwd().resolve()
    found = next((d for d in (cwd, *cwd.parents) if (d / "dvc.yaml").is_file()), cwd)
    parts = found.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return found


def tracking_uri(root: Path | str | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else SQLite at `<absolute root>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(project_root(root) / 'mlflow.db').as_posix()}"


def artifact_root(root: Path | str | None = None) -> str:
    """`<absolute root>/mlruns` as a file URI: where the experiment stores run artifacts."""
    return (project_root(root) / "mlruns").as_uri()


def enabled() -> bool:
    """False when `GROUNDIFF_TRACKING` is 0/off/false (stage tests use this to skip MLflow)."""
    return os.environ.get("GROUNDIFF_TRACKING", "1").strip().lower() not in {"0", "off", "false", "no"}


def git_commit(root: Path | str | None = None) -> tuple[str, bool]:
    """(full sha of HEAD, dirty?) of the repository at root; ("unknown", False) outside git.

    dvc.lock is left out of "dirty": `dvc repro` rewrites it after every stage, which would
    otherwise split one `dvc repro` across two parent runs.
    """
    cwd = project_root(root)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock").strip())
    except (OSError, subprocess.CalledProcessError):  # no git, not a repository, or no commit yet
        return "unknown", False
    return sha, dirty


# --------------------------------------------------------------------------- params


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> `a.b.c` keys; values (lists too) as strings cut to MLflow's 6000 chars."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            if len(text) > MAX_PARAM_VALUE:
                text = text[: MAX_PARAM_VALUE - 3] + "..."
            flat[name] = text
    return flat


# --------------------------------------------------------------------------- runs


def is_number(value: Any) -> bool:
    """A metric MLflow can log: a real number (bool, numpy scalars too) or a 0-d tensor/array."""
    if isinstance(value, numbers.Real):
        return True
    return getattr(value, "ndim", None) == 0 and not isinstance(value, (str, bytes))


class StageRun:
    """Logging handle for one stage's MLflow run; every call names the run id explicitly.

    A logging call that fails (the store unavailable past the wait) warns once and turns the handle
    off: the stage's work is never lost to its tracking.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self.broken = False

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (see the class docstring)
            self.broken = True
            _warn(what, err)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the numbers among `metrics` (ints, floats, 0-d tensors/arrays); other values (None,
        strings, lists, dicts) are left out, so a stage can pass its whole metrics dict. NaN/inf
        are logged as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if is_number(v)]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self._call("logging metrics", self.client.log_batch, self.run_id,
                       metrics=items[i : i + MAX_METRICS_PER_BATCH])

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Copy a file (or a whole directory) into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self.log_artifacts(path, artifact_path=artifact_path or path.name)
            return
        if not path.is_file():
            raise FileNotFoundError(f"log_artifact: {path} does not exist (relative to cwd {Path.cwd()})")
        self._call("logging an artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        """Copy a directory's contents into the run's artifacts (under artifact_path if given)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"log_artifacts: {directory} is not a directory (cwd {Path.cwd()})")
        self._call("logging artifacts", self.client.log_artifacts, self.run_id, str(directory), artifact_path)

    def log_figure(self, path: Path | str) -> None:
        """Log an image file under `figures/`, where the MLflow UI previews it."""
        self.log_artifact(path, artifact_path="figures")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call("setting tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()])


class NullStageRun(StageRun):
    """What `stage_run` yields with tracking off: same methods, nothing recorded."""

    def __init__(self) -> None:
        self.client = None  # type: ignore[assignment]
        self.run_id = None  # type: ignore[assignment]
        self.broken = True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


class TrackingWarning(UserWarning):
    """The tracking store could not be reached; the stage's work went on without it."""


def _wait_seconds() -> float:
    return float(os.environ.get("GROUNDIFF_TRACKING_WAIT_S", "120"))


def _busy(err: BaseException) -> bool:
    """SQLite's "database is locked" (another process writes), however MLflow/SQLAlchemy wrap it."""
    text = str(err).lower()
    return "database is locked" in text or "database is busy" in text


def _retrying(fn: Any) -> Any:
    """`fn`, waiting and retrying while the SQLite store is locked (up to GROUNDIFF_TRACKING_WAIT_S)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + _wait_seconds(), 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 (only "locked" is retried; anything else is raised)
                if not _busy(err) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return call


class _RetryingClient:
    """An MlflowClient whose every call waits and retries while the SQLite store is locked."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        return _retrying(attr) if callable(attr) else attr


def _client(root: Path | str | None) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    # Opening the store can write too (it creates or migrates the schema): retried the same way.
    client = _retrying(MlflowClient)(tracking_uri=tracking_uri(root))
    _retrying(lambda: client._tracking_client.store)()
    return _RetryingClient(client)  # type: ignore[return-value]


def _warn(what: str, err: BaseException) -> None:
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(f"MLflow tracking: {what} failed ({type(err).__name__}: {cause[:200]}); "
                  "the stage's work goes on untracked", TrackingWarning, stacklevel=3)


def _unfinished_file(root: Path | str | None) -> Path:
    return project_root(root) / "mlruns" / ".unfinished.jsonl"


def _end_later(root: Path | str | None, run_id: str, status: str) -> None:
    """Record a run whose end could not be written, for the next stage to settle."""
    path = _unfinished_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"run_id": run_id, "status": status}) + "\n")


def _settle_unfinished(client: MlflowClient, root: Path | str | None) -> None:
    """End the runs that earlier stages could not end (store unavailable then)."""
    path = _unfinished_file(root)
    if not path.is_file():
        return
    left = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            client.set_terminated(entry["run_id"], status=entry["status"])
        except Exception:  # noqa: BLE001 (still unavailable, or a damaged line: keep it for later)
            left.append(line)
    if left:
        path.write_text("".join(f"{line}\n" for line in left))
    else:
        path.unlink(missing_ok=True)


def _experiment_id(client: MlflowClient, root: Path | str | None) -> str:
    """Id of the groundiff experiment, created (artifacts under `<root>/mlruns`) if absent."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get("GROUNDIFF_EXPERIMENT", DEFAULT_EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A server decides where artifacts go; only a local store gets <root>/mlruns.
        local = client.tracking_uri.startswith(("sqlite:", "file:", "/"))
        try:
            return client.create_experiment(name, artifact_location=artifact_root(root) if local else None)
        except MlflowException:  # another stage process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment {name!r} is deleted in {client.tracking_uri}: restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`, "
            "or set GROUNDIFF_EXPERIMENT to another name."
        )
    return experiment.experiment_id


def _commit_tags(sha: str, dirty: bool) -> dict[str, str]:
    return {"groundiff.commit": sha[:7], "groundiff.dirty": str(dirty).lower(), "mlflow.source.git.commit": sha}


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


def _close(client: MlflowClient, root: Path | str | None, run_id: str, error: BaseException | None,
           parent: str | None = None) -> None:
    """End a run (and mirror its status on a grouping parent); if the store refuses, warn and leave it
    for the next stage to settle, so it does not stay RUNNING."""
    status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    for rid in (run_id, parent):
        if rid is None:
            continue
        try:
            client.set_terminated(rid, status=status)
        except Exception as err:  # noqa: BLE001
            _warn(f"ending run {rid} as {status}", err)
            _end_later(root, rid, status)


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


def _open_stage_run(stage: str, params: Mapping[str, Any], root: Path | str | None,
                    parent_run_id: str | None) -> tuple[MlflowClient, StageRun, str | None] | None:
    """(client, the stage's run, the grouping parent to mirror its status or None); None after a
    warning when the store cannot be reached. A parent that is not in the store is an error."""
    try:
        client = _client(root)
        _settle_unfinished(client, root)
        experiment_id = _experiment_id(client, root)
        sha, dirty = git_commit(root)
        parent = parent_run_id or os.environ.get(PARENT_ENV) or None
        grouped = parent is None  # a plain `dvc repro`: the group run mirrors its latest stage's status
        if grouped:
            parent = _dvc_repro_parent(client, experiment_id, sha, dirty)
        else:
            _check_parent(client, parent)
        tags = {"mlflow.parentRunId": parent, "groundiff.stage": stage, **_commit_tags(sha, dirty)}
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


__all__ = [
    "NullStageRun", "ParentRunMissing", "StageRun", "TrackingWarning", "artifact_root", "enabled", "flatten_params", "git_commit", "is_number",
    "pipeline_run", "project_root", "stage_run", "tracking_uri",
]
