"""The one resumable training loop every trainer runs, and the end every training stage shares.

A trainer builds its model and optimizers, names what its result depends on (the fingerprint) and
supplies one optimisation step; the loop does the rest:

    loop = TrainingLoop(work_dir, fp, cfg.steps, {"model": model}, {"main": opt}, log_every=10,
                        checkpoint_every=100, desc="segmenter", on_log=on_log)
    loop.resume()                          # state of this fingerprint: restored; of another: deleted
    run = loop.run(lambda step: {"loss": train_step(step)})   # row -> log.csv, reports -> on_log
    run.start, run.seconds, run.train_seconds, run.last

- Resume or reset. The state (`<prefix>state.safetensors`: modules, optimizers, step, fingerprint,
  training seconds) is restored only when its fingerprint matches; the loss log is cut back to its
  step, so a resumed log equals an uninterrupted one. Any other state and its log are deleted.
- Exactness. The loop draws no random numbers and calls no optimizer. A step's randomness is the
  trainer's, derived from (seed, s), or drawn from torch's global generators, whose state the
  checkpoint keeps and a resume restores: a resumed run makes the same draws as an uninterrupted one.
- The loss log (`<prefix>log.csv`): one row per step, {"step": s, **the step's row}, appended at
  every report and checkpoint (a checkpoint's log always reaches its step).
- Cadence: a checkpoint every `checkpoint_every` steps and at the last; a report (the mean of every
  column since the last report, the step, this call's seconds) every `log_every` steps and at the
  last, to the progress bar and `on_log`, after that step's checkpoint (an `on_log` that raises
  loses none).
- Finished phases (multi-phase trainers): `finish` saves the weights with the fingerprint and
  drops the state; `load_finished` restores them when the fingerprint still matches.

A training stage ends with `publish`: model saved whole, loss curve, metrics JSON, MLflow, state deleted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from groundiff.core import losslog
from groundiff.core.checkpoint import load_training_state, read_meta, read_tensors, save_training_state
from groundiff.core.io import atomic_dir, write_json

Modules = Mapping[str, "torch.nn.Module | dict[str, torch.Tensor]"]


def mean_report(rows: list[dict], seconds: float) -> dict[str, float]:
    """The mean of every column but `step` over `rows`, then the last row's step and `seconds`."""
    report = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "step"}
    report.update(step=rows[-1]["step"], seconds=seconds)
    return report


@dataclass
class LoopResult:
    start: int  # the step this call resumed from (0: from scratch)
    seconds: float  # this call's time in the loop
    train_seconds: float  # time in the loop across every (interrupted) call
    last: dict | None  # the last report; None when no step was left to train


class TrainingLoop:
    """Steps `start`..`steps - 1` of one resumable training in `work_dir` (see the module docstring)."""

    def __init__(self, work_dir: Path, fingerprint: str, steps: int, modules: Modules,
                 optimizers: Mapping[str, torch.optim.Optimizer], *, log_every: int, checkpoint_every: int,
                 desc: str, on_log: Callable[[dict], None] | None = None, progress: bool = True,
                 prefix: str = "") -> None:
        self.work_dir, self.fingerprint, self.steps = Path(work_dir), fingerprint, steps
        self.modules, self.optimizers = dict(modules), dict(optimizers)
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.desc, self.on_log, self.progress = desc, on_log, progress
        self.state = state_path(self.work_dir, prefix)
        self.log = self.work_dir / f"{prefix}log.csv"
        self.start: int | None = None
        self._earlier_seconds = 0.0

    def resume(self) -> int:
        """Restore the state if it was written for this fingerprint, else delete it and the log;
        returns the step to continue from."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.start = 0
        if self.state.exists() and read_meta(self.state).get("fingerprint") == self.fingerprint:
            meta = load_training_state(self.state, self.modules, self.optimizers)
            self.start, self._earlier_seconds = meta["step"], meta.get("train_seconds", 0.0)
            _set_rng_state(read_tensors(self.state, "rng."))
            losslog.truncate(self.log, self.start)
        else:
            if self.state.exists():
                print(f"{self.desc}: {self.state} was written for other params or data; starting over")
                self.state.unlink()
            self.log.unlink(missing_ok=True)
        return self.start

    def run(self, step_fn: Callable[[int], dict[str, Any]]) -> LoopResult:
        """Train: `step_fn(step)` makes optimisation step `step` and returns its loss-log row."""
        if self.start is None:
            self.resume()
        t0 = time.time()
        unsaved: list[dict] = []  # rows not yet in the log
        window: list[dict] = []  # rows since the last report
        last = None
        bar = tqdm(range(self.start, self.steps), initial=self.start, total=self.steps, desc=self.desc,
                   mininterval=5, disable=not self.progress)
        for step in bar:
            row = {"step": step + 1, **step_fn(step)}
            unsaved.append(row)
            window.append(row)
            done = step + 1 == self.steps
            if (step + 1) % self.checkpoint_every == 0 or done:
                losslog.append_rows(self.log, unsaved)  # the log must reach the state's step
                unsaved = []
                save_training_state(self.state, {**self.modules, "rng": _rng_state()}, self.optimizers, {
                    "step": step + 1, "fingerprint": self.fingerprint,
                    "train_seconds": self._earlier_seconds + time.time() - t0})
            if (step + 1) % self.log_every == 0 or done:
                losslog.append_rows(self.log, unsaved)
                unsaved, last, window = [], mean_report(window, time.time() - t0), []
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                if self.on_log:
                    self.on_log(last)
        seconds = time.time() - t0
        return LoopResult(self.start, seconds, self._earlier_seconds + seconds, last)

    def finish(self, path: Path, modules: Modules) -> None:
        """Save a finished phase's weights (`modules`) to `path` with the fingerprint; drop the state."""
        save_finished(path, modules, self.fingerprint, self.steps)
        self.state.unlink(missing_ok=True)


def state_path(work_dir: Path, prefix: str = "") -> Path:
    """Where a TrainingLoop with this `prefix` keeps its resumable state in `work_dir`."""
    return Path(work_dir) / f"{prefix}state.safetensors"


def _rng_state() -> dict[str, torch.Tensor]:
    """torch's global generators (CPU; CUDA once used): a step that draws from them (torchvision's
    Mask R-CNN samples its RoIs there) continues after a resume as it would have without one."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    cuda = [state[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in state]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_finished(path: Path, modules: Modules, fingerprint: str, step: int) -> None:
    """Write weights as a finished phase of the training with `fingerprint` (e.g. shipped ones)."""
    save_training_state(path, modules, {}, {"step": step, "fingerprint": fingerprint})


def load_finished(path: Path, fingerprint: str, modules: Modules) -> bool:
    """Load a finished phase's weights into `modules` if `path` holds them for `fingerprint`."""
    if not path.exists() or read_meta(path).get("fingerprint") != fingerprint:
        return False
    load_training_state(path, modules, {})
    return True


# --- the end of a training stage ------------------------------------------------------------------


def publish(run, state: Path, metrics: dict, metrics_path: Path, loss_plot: Path, *, out: Path | None = None,
            save: Callable[[Path], None] | None = None, copy_log: bool = True) -> None:
    """Ship a finished training: `save(folder)` builds `out` whole (atomically), the state's
    `log.csv` becomes the `loss_plot` (unless `copy_log` is False: the caller wrote it), the metrics
    go to `metrics_path` and with the plot to MLflow (`run`), and the resumable state is deleted,
    so that a forced rerun trains from scratch instead of resuming at the end."""
    if save is not None:
        with atomic_dir(out) as tmp:
            save(tmp)
    if copy_log:
        loss_plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(state / "log.csv", loss_plot)
    write_json(metrics_path, metrics)
    run.log_metrics(metrics)  # numbers only: the run drops the rest
    run.log_artifact(loss_plot)
    shutil.rmtree(state)
