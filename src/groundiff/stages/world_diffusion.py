"""Stage `world_diffusion`: train the shapes world's text-to-image model (resumable).

Output: a diffusers StableDiffusionPipeline folder, committed to git (cache: false) so a fresh
clone does not retrain; `dvc repro --force world_diffusion` does. Training state lives in
`worlds/shapes/state/diffusion/` while training runs: an interrupted run resumes from its last
checkpoint; the state is deleted once the pipeline is saved.

voc / coco: Stable Diffusion comes from outside. The stage checks that the pipeline folder (or
the hub id's cached snapshot) is complete and writes `worlds/<world>/diffusion/source.json`:
which pipeline, and the hashes world_setup recorded, so later stages re-run when it changes.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import from_params, to_dict
from groundiff.core.io import atomic_dir, write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.active import World
from groundiff.worlds.preflight import (describe_diffusion, diffusion_folder, missing_pipeline_parts,
                                       require_paper_world)
from groundiff.worlds.shapes_diffusion import (DiffusionConfig, RunOptions, first_cycle_config, loss_curve,
                                               seed_first_cycle, train_diffusion)
from groundiff.core.schema import WorldDiffusionParams

OUT = Path("worlds/shapes/diffusion")
STATE = Path("worlds/shapes/state/diffusion")
METRICS = Path("metrics/world_diffusion.json")
LOSS_PLOT = Path("metrics/world_diffusion_loss.csv")


def record_paper_pipeline(active: World) -> Path:
    """voc / coco: check the external pipeline is complete; write its source record; return the folder."""
    world, settings = active.name, active.paper
    require_paper_world(world, settings)
    sources = describe_diffusion(settings.diffusion)
    folder = diffusion_folder(settings.diffusion)
    missing = missing_pipeline_parts(folder)  # a hub snapshot is checked here (preflight: local folders)
    if missing:
        raise FileNotFoundError(f"{settings.diffusion}: the diffusers pipeline lacks {', '.join(missing)}; "
                                "a Stable Diffusion v1.x folder saved with save_pretrained has them all")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    sources["unet"] = {k: unet.get(k) for k in ("sample_size", "block_out_channels", "cross_attention_dim")}
    out = Path("worlds") / world / "diffusion"
    with atomic_dir(out) as tmp:
        write_json(tmp / "source.json", sources)
    write_json(METRICS, {"world": world, "source": settings.diffusion, **sources["unet"]})
    LOSS_PLOT.write_text("step,loss\n")  # nothing was trained here
    return out


def write_loss_plot(rows: list[dict], every: int = 20) -> None:
    """The UNet loss curve (every cycle, one step axis) as a DVC plot: the mean of each `every`-step window."""
    windows: dict[int, list[float]] = {}
    for r in rows:
        windows.setdefault((int(r["step"]) - 1) // every, []).append(float(r["loss"]))
    LOSS_PLOT.parent.mkdir(parents=True, exist_ok=True)
    with LOSS_PLOT.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        for w, losses in sorted(windows.items()):
            writer.writerow([(w + 1) * every, sum(losses) / len(losses)])


def locked_model_params(lock: Path | str = Path("dvc.lock")) -> dict | None:
    """`world_diffusion.model` as a dvc.lock (path, or its text) recorded it; None if it records no run."""
    import yaml

    if isinstance(lock, Path):
        if not lock.exists():
            raise FileNotFoundError(f"{lock} not found: run this in the project root")
        lock = lock.read_text()
    stage = ((yaml.safe_load(lock) or {}).get("stages") or {}).get("world_diffusion") or {}
    return (stage.get("params") or {}).get("params.yaml", {}).get("world_diffusion.model")


def _git(*args: str) -> bytes:
    import subprocess

    return subprocess.run(["git", *args], capture_output=True, check=True).stdout


def _first_cycle_revisions() -> Iterator[tuple[str, dict]]:
    """(revision, locked model params) of the working tree, then of each commit that changed dvc.lock."""
    import subprocess

    locked = locked_model_params()
    if locked is not None:
        yield "working tree", locked
    try:
        revs = _git("log", "--format=%H", "--", "dvc.lock").decode().split()
    except (OSError, subprocess.CalledProcessError):
        return  # not a git checkout: only the working tree can seed
    for rev in revs:
        locked = locked_model_params(_git("show", f"{rev}:dvc.lock").decode())
        if locked is not None:
            yield rev, locked


def _export(rev: str, dest: Path) -> tuple[Path, list[dict]]:
    """The pipeline folder and loss curve as of `rev` ("working tree" or a commit), copied under `dest`."""
    import io
    import subprocess
    import tarfile

    if rev == "working tree":
        pipeline, curve = OUT, (LOSS_PLOT.read_text() if LOSS_PLOT.exists() else "")
    else:
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", rev, str(OUT)))) as tar:
            tar.extractall(dest, filter="data")
        pipeline = dest / OUT
        try:
            curve = _git("show", f"{rev}:{LOSS_PLOT}").decode()
        except subprocess.CalledProcessError:  # an old commit without the plot: no curve to keep
            curve = ""
    rows = [{"step": int(r["step"]), "loss": float(r["loss"])} for r in csv.DictReader(io.StringIO(curve))]
    return pipeline, rows


def seed_from_shipped(params) -> tuple[Path, str]:
    """Prepare `dvc repro world_diffusion` to train only the second cycle, on a shipped first cycle.

    The first cycle comes from the newest shipped pipeline that is a first cycle alone, trained
    with today's first-cycle params: the working tree's if dvc.lock records no second cycle, else
    the newest such commit in git history (the shipped pipeline then already holds a second cycle,
    which a new second cycle must not be stacked on). So the result equals a from-scratch run of
    the same params. Returns the state folder and the revision that seeded it.
    """
    import tempfile

    if params.world.name != "shapes":
        raise ValueError(f"the {params.world.name} world's diffusion model is not trained by this project")
    cfg = params.section("world_diffusion").model
    if not cfg.finetune_steps:
        raise ValueError("world_diffusion.model.finetune_steps is 0: set the second cycle's length first")
    wanted = first_cycle_config(cfg)
    differing: set[str] = set()
    for rev, locked in _first_cycle_revisions():
        shipped = from_params(DiffusionConfig, locked, f"{rev}: dvc.lock: world_diffusion.model")
        changed = [k for k, v in first_cycle_config(shipped).items() if wanted[k] != v]
        if changed:
            differing.update(changed)
        elif not shipped.finetune_steps:
            with tempfile.TemporaryDirectory() as tmp:
                pipeline, rows = _export(rev, Path(tmp))
                if not (pipeline / "model_index.json").exists():
                    raise FileNotFoundError(f"{pipeline}: no shipped pipeline at {rev} (git checkout it, "
                                            "or train from scratch with `dvc repro --force world_diffusion`)")
                seed_first_cycle(pipeline, cfg, STATE, rows)
            return STATE, rev
    if differing:
        raise ValueError(f"world_diffusion.model.{', '.join(sorted(differing))} differ from what every shipped "
                         "first cycle was trained with (dvc.lock, also in git history): only finetune_* may "
                         "change to continue from one")
    raise ValueError("no shipped pipeline is a first cycle alone (dvc.lock, also in git history): train from "
                     "scratch with `dvc repro --force world_diffusion`")


def main(argv: list[str] | None = None) -> None:
    """Train (or record) the world's diffusion model; `--continue` seeds cycle 1 from the shipped one."""
    argv = argv or []
    params, world = open_stage("world_diffusion")
    if argv == ["--continue"]:
        state, rev = seed_from_shipped(params)
        print(f"world_diffusion: the first cycle shipped in {rev} seeds {state}; "
              "`dvc repro world_diffusion` now trains only the second cycle")
        return
    if argv:
        raise ValueError(f"unknown arguments {argv}: the stage takes none, or --continue")
    if params.world.name != "shapes":
        out = record_paper_pipeline(world)
        print(f"world_diffusion: the {params.world.name} world uses {world.paper.diffusion} "
              f"(recorded in {out}/source.json)")
        return
    p = params.section("world_diffusion")
    opts = RunOptions(**{**to_dict(p.run), "device": params.world.device})
    with tracking.stage_run("world_diffusion", {"model": to_dict(p.model), "run": to_dict(opts)}) as run:
        with atomic_dir(OUT) as tmp:
            metrics = train_diffusion(p.model, opts, tmp, STATE, on_log=lambda m: run.log_metrics(
                {k: v for k, v in m.items() if k != "step"}, step=m["step"]))
        write_loss_plot(loss_curve(p.model, STATE))
        write_json(METRICS, metrics)
        # Training is complete and shipped: drop the resumable state, so that a forced rerun
        # (`dvc repro --force world_diffusion`) trains from scratch instead of resuming at the end.
        shutil.rmtree(STATE)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(LOSS_PLOT)
    print(f"world_diffusion: saved the pipeline to {OUT}")


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
