"""StageRun, the logging handle of one MLflow run (params flattened, numbers only), and how a run ends."""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundiff.core.tracking.store import _end_later, _warn
from groundiff.core.tracking.view import is_headline

if TYPE_CHECKING:  # mlflow takes ~1 s to import: stages with tracking off never pay for it
    from mlflow.tracking import MlflowClient

# MLflow's limits (mlflow.utils.validation): longer param values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


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
