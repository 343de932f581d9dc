"""Where tracking goes (project root, store, artifacts, commit), and a client that waits out a locked store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow takes ~1 s to import: stages with tracking off never pay for it
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "groundiff"
# MLflow 3 records what an experiment is for in this experiment tag; "custom_model_development" is the
# kind the UI calls "Machine learning" / "Model training" (genai_development opens on traces and the GenAI
# overview). Values: the `ExperimentKind` enum of MLflow's UI bundle (mlflow/server/js/build/static/js/main.*.js);
# mlflow/demo/generators/traces.py tags its demo experiment the same way. See `view` (the experiment in the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

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


def _commit_tags(sha: str, dirty: bool) -> dict[str, str]:
    return {"groundiff.commit": sha[:7], "groundiff.dirty": str(dirty).lower(), "mlflow.source.git.commit": sha}


# --------------------------------------------------------------------------- the client


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


# --------------------------------------------------------------------------- runs left unfinished


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


# --------------------------------------------------------------------------- the experiment


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


def open_experiment(root: Path | str | None = None) -> tuple[MlflowClient, str]:
    """(a client of the project's store, the groundiff experiment's id, created and tagged if absent)."""
    client = _client(root)
    return client, _experiment_id(client, root)
