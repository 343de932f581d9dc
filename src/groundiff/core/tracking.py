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
  `GROUNDIFF_PARENT_RUN_ID` (set by the Prefect flow for the `dvc repro` it launches), params.yaml's
  `tracking.parent_run_id` (set by `groundiff study` in each of its DVC experiments: the study's one
  parent run; the stage run is then tagged with the study, grid point, seed, split and variant), else
  a "dvc repro @ <commit>" run that groups every stage a plain `dvc repro` ran on that commit.

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

Browse the runs with `mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --default-artifact-root
$PWD/mlruns` and open `runs_url(...)` (docs/mlflow.md: why that link, and `groundiff mlflow-import`).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow takes ~1 s to import: stages with tracking off never pay for it
    from mlflow.tracking import MlflowClient

PARENT_ENV = "GROUNDIFF_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "groundiff"
# MLflow 3 records what an experiment is for in this experiment tag; "custom_model_development" is the
# kind the UI calls "Machine learning" / "Model training" (genai_development opens on traces and the GenAI
# overview). Values: the `ExperimentKind` enum of MLflow's UI bundle (mlflow/server/js/build/static/js/main.*.js);
# mlflow/demo/generators/traces.py tags its demo experiment the same way. See "the experiment in the UI" below.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
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
        self.headline = False  # logged a headline metric: the experiment's saved view is refreshed at the end

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
        self.headline = self.headline or any(is_headline(m.key) for m in items)
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
            return client.create_experiment(name, artifact_location=artifact_root(root) if local else None,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set (a kind a user chose is kept)
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _commit_tags(sha: str, dirty: bool) -> dict[str, str]:
    return {"groundiff.commit": sha[:7], "groundiff.dirty": str(dirty).lower(), "mlflow.source.git.commit": sha}


# --------------------------------------------------------------------------- the experiment in the UI
# MLflow 3.17's UI does not open an experiment by its kind tag: its own "GenAI / Model training" switch
# decides (browser localStorage `mlflow.workflowType`, GenAI in a fresh browser; the URL parameter
# `workflowType=machine_learning` overrides it), so a fresh browser lands on the GenAI overview whatever the
# tag says (mlflow/mlflow#24498). The runs table keeps its visible columns in localStorage too. What the
# store itself can hold is a *saved view*: experiment tag `mlflow.sharedViewState.<key>`, a JSON envelope
# {name, createdAt, updatedAt, state} whose state names the columns; the runs page lists it under "Views"
# and `?viewStateShareKey=<key>` opens it. `runs_url` is the link that opens both: runs table, headline
# columns. It is rewritten with the headline metrics the experiment holds when a stage run logged one
# (and by `groundiff mlflow-import`).
VIEW_KEY = "groundiff-headline"
VIEW_NAME = "Headline metrics"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
HEADLINE = ("hiou", "miou_seen", "miou_unseen")  # Protocol II, per variant: `<variant>.hiou`, ...
PROTOCOL1 = ("one_seen", "one_unseen", "two_seen", "two_unseen", "two_seen_unseen")  # `ours_<category>`
VIEW_TAGS = ("groundiff.study", "groundiff.variant", "groundiff.seed", "groundiff.split")  # shown as columns


def is_headline(key: str) -> bool:
    """A headline metric: `[<point>/]<variant>.hiou|miou_seen|miou_unseen[_mean]`, or Protocol I's
    `ours_<category>`."""
    last = key.rsplit(".", 1)[-1].removesuffix("_mean")
    return ("." in key and last in HEADLINE) or key in {f"ours_{c}" for c in PROTOCOL1}


def headline_columns(metric_keys: Iterable[str]) -> list[str]:
    """The runs table's column ids for the headline metrics among `metric_keys`, in reading order:
    every variant's hIoU (then its study mean), Protocol I, then the variants' seen and unseen mIoU."""
    def order(key: str) -> tuple:
        if key.startswith("ours_"):
            return (1, PROTOCOL1.index(key.removeprefix("ours_")), "", False)
        head, last = key.rsplit(".", 1)
        metric = HEADLINE.index(last.removesuffix("_mean"))
        return (0 if metric == 0 else 2, metric, head, last.endswith("_mean"))

    return [f"metrics.`{k}`" for k in sorted({k for k in metric_keys if is_headline(k)}, key=order)]


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table with the headline view, in the "Model training" part of the UI."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def compare_url(run_ids: Iterable[str], experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """MLflow's run-comparison page for `run_ids` (every metric of each run side by side)."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids)), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([experiment_id]), safe='')}" \
           "&workflowType=machine_learning"


def open_experiment(root: Path | str | None = None) -> tuple[MlflowClient, str]:
    """(a client of the project's store, the groundiff experiment's id, created and tagged if absent)."""
    client = _client(root)
    return client, _experiment_id(client, root)


def refresh_headline_view(client: MlflowClient, experiment_id: str) -> list[str]:
    """Rewrite the saved view `VIEW_KEY` with the headline metrics the experiment's runs hold; returns
    its metric columns. A column no run has is not shown by the UI, so the view never shows empty ones."""
    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            keys.update(run.data.metrics)
        token = page.token
        if not token:
            break
    columns = headline_columns(keys)
    shown = columns + [f"tags.`{t}`" for t in VIEW_TAGS]
    old = client.get_experiment(experiment_id).tags.get(VIEW_TAG_PREFIX + VIEW_KEY)
    now = int(time.time() * 1000)
    try:
        created = int(json.loads(old)["createdAt"]) if old else now
    except (ValueError, KeyError, TypeError):  # not ours, or damaged: rewritten
        created = now
    state = {"selectedColumns": shown, "columnOrder": shown}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(
        {"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}))
    return columns


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


# --------------------------------------------------------------------------- studies
# `groundiff study` (groundiff.app.study) runs each grid point x seed as a DVC experiment whose params.yaml
# carries a `tracking` section (RUN_ONLY: no stage reruns for it): the study, its grid point and its
# MLflow parent run. Params, not env vars, because a queued experiment runs in a temp workspace started
# by a DVC queue worker. Every stage run of such an experiment nests under the study's one parent run
# and carries these tags, so MLflow's compare view lines the seeds up:
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
    "STUDY_TAGS", "end_study_run", "find_study_run", "study_context", "study_run",
    "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "VIEW_KEY", "compare_url", "headline_columns", "is_headline",
    "open_experiment", "refresh_headline_view", "runs_url",
]
