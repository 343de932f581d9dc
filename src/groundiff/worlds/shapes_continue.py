"""A longer second diffusion cycle without retraining the first: seed it from a shipped pipeline.

    rev = seed_from_shipped(cfg, state_dir)   # then train_diffusion(cfg, ...) trains cycle 2 only

The first cycle comes from the newest shipped pipeline that is a first cycle alone, trained with
`cfg`'s first-cycle fields as dvc.lock records them: the working tree's if dvc.lock records no
second cycle, else the newest such commit in git history (the shipped pipeline then already holds
a second cycle, which a new second cycle must not be stacked on). So the result equals a
from-scratch run of the same params. Run from the project root (dvc.lock and git are read there).
"""

from __future__ import annotations

import csv
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from groundiff.core import paths
from groundiff.core.params import from_params
from groundiff.core.schema import DiffusionConfig
from groundiff.worlds.shapes_diffusion import first_cycle_config, seed_first_cycle

PIPELINE = paths.world_diffusion("shapes")
LOSS_PLOT = paths.loss_plot("world_diffusion")


class NoShippedFirstCycle(ValueError):
    """Neither dvc.lock nor git history holds a pipeline this second cycle can continue from."""


def locked_model_params(lock: Path | str = paths.DVC_LOCK) -> dict | None:
    """`world_diffusion.model` as a dvc.lock (path, or its text) recorded it; None if it records no run."""
    import yaml

    if isinstance(lock, Path):
        if not lock.exists():
            raise FileNotFoundError(f"{lock} not found: run this in the project root")
        lock = lock.read_text()
    stage = ((yaml.safe_load(lock) or {}).get("stages") or {}).get("world_diffusion") or {}
    return (stage.get("params") or {}).get("params.yaml", {}).get("world_diffusion.model")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], capture_output=True, check=True).stdout


def shipped_revisions() -> Iterator[tuple[str, dict]]:
    """(revision, locked model params) of the working tree, then of each commit that changed dvc.lock."""
    locked = locked_model_params()
    if locked is not None:
        yield "working tree", locked
    try:
        revs = _git("log", "--format=%H", "--", str(paths.DVC_LOCK)).decode().split()
    except (OSError, subprocess.CalledProcessError):
        return  # not a git checkout: only the working tree can seed
    for rev in revs:
        locked = locked_model_params(_git("show", f"{rev}:{paths.DVC_LOCK}").decode())
        if locked is not None:
            yield rev, locked


def export_shipped(rev: str, dest: Path) -> tuple[Path, list[dict]]:
    """The pipeline folder and loss curve as of `rev` ("working tree" or a commit), copied under `dest`."""
    if rev == "working tree":
        pipeline, curve = PIPELINE, (LOSS_PLOT.read_text() if LOSS_PLOT.exists() else "")
    else:
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", rev, str(PIPELINE)))) as tar:
            tar.extractall(dest, filter="data")
        pipeline = dest / PIPELINE
        try:
            curve = _git("show", f"{rev}:{LOSS_PLOT}").decode()
        except subprocess.CalledProcessError:  # an old commit without the plot: no curve to keep
            curve = ""
    rows = [{"step": int(r["step"]), "loss": float(r["loss"])} for r in csv.DictReader(io.StringIO(curve))]
    return pipeline, rows


def seed_from_shipped(cfg: DiffusionConfig, state: Path) -> str:
    """Seed `state` (train_diffusion's work dir) with the shipped first cycle `cfg` continues;
    returns the revision it came from. Raises NoShippedFirstCycle when there is none."""
    if not cfg.finetune_steps:
        raise ValueError("world_diffusion.model.finetune_steps is 0: set the second cycle's length first")
    wanted = first_cycle_config(cfg)
    differing: set[str] = set()
    for rev, locked in shipped_revisions():
        shipped = from_params(DiffusionConfig, locked, f"{rev}: dvc.lock: world_diffusion.model")
        changed = [k for k, v in first_cycle_config(shipped).items() if wanted[k] != v]
        if changed:
            differing.update(changed)
        elif not shipped.finetune_steps:
            with tempfile.TemporaryDirectory() as tmp:
                pipeline, rows = export_shipped(rev, Path(tmp))
                if not (pipeline / "model_index.json").exists():
                    raise NoShippedFirstCycle(f"{pipeline}: no shipped pipeline at {rev} (git checkout it)")
                seed_first_cycle(pipeline, cfg, state, rows)
            return rev
    if differing:
        raise ValueError(f"world_diffusion.model.{', '.join(sorted(differing))} differ from what every shipped "
                         "first cycle was trained with (dvc.lock, also in git history): only finetune_* may "
                         "change to continue from one")
    raise NoShippedFirstCycle("no shipped pipeline is a first cycle alone (dvc.lock, also in git history)")
