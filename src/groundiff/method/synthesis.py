"""Synthesis: prompts -> images + capture-step latents, in resumable shards.

Each prompt-table row is generated from its own seed, batched, with DDIM; the UNet input at the
capture step (the paper's t, counted from the end: the released code captures at t=1, the final
step; the paper's ablation found t=5 best) is kept so that features can be replayed later.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from groundiff.core.checkpoint import write_text_atomic
from groundiff.data.shards import complete_shards, drop_damaged, shard_name, write_shard
from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.pipeline import SamplingConfig, generate
from groundiff.core.schema import SynthesisConfig


def table_fingerprint(table: pd.DataFrame, cfg: SynthesisConfig, model_id: str) -> str:
    payload = json.dumps({"cfg": asdict(cfg), "model": model_id,
                          "rows": table[["prompt", "seed"]].values.tolist()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_fingerprint(source: str | Path) -> str:
    """A model's identity for output fingerprints: `<folder>@<hash of its files>`, or a hub id as is.

    By content, not by path: a model retrained in place (same folder, new weights) must not
    resume shards that its predecessor generated.
    """
    path = Path(source)
    if not path.exists():
        return str(source)  # a hub id: the id is all there is to go by
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return f"{source}@{digest.hexdigest()[:16]}"


def prepare_output(root: Path, fingerprint: str, marker: str = "synthesis.json",
                   subdirs: tuple[str, ...] = ()) -> None:
    """Keep finished shards only if they were made from the same table, settings and model.

    The fingerprint is written atomically: a run killed at any point leaves either no marker or a
    whole one, so the next run never misreads it (an unreadable marker simply means start over).
    What a killed run left half-written (`*.partial` shard folders, temporary files of atomic
    writes) is removed here, once, before any worker starts writing.
    """
    marker_path = root / marker
    if root.exists() and _read_fingerprint(marker_path) != fingerprint:
        shutil.rmtree(root)  # written for other params: nothing there can be reused
    root.mkdir(parents=True, exist_ok=True)
    for sub in subdirs:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for folder in (root, *(root / sub for sub in subdirs)):
        for leftover in [*folder.glob("*.partial"), *folder.glob(".*.tmp")]:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
    write_text_atomic(marker_path, json.dumps({"fingerprint": fingerprint}) + "\n")


def _read_fingerprint(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None  # missing or damaged: treat as "made for something else"


@dataclass(frozen=True)
class ShardPlan:
    """What a (resumed) run has to do: decided once, by the driver, before any shard is written."""

    n_shards: int  # shards the whole table makes
    todo: list[int]  # requested shards not finished yet, in order
    resumed: int  # requested shards already finished (kept as they are)


def check_shards(shards: list[int] | None, n_shards: int) -> list[int]:
    """The requested shard numbers (all by default); out-of-range ones are an error, not empty shards."""
    if shards is None:
        return list(range(n_shards))
    bad = [s for s in shards if not 0 <= s < n_shards]
    if bad:
        raise ValueError(f"shards {bad} do not exist: the table makes shards 0..{n_shards - 1}")
    return list(dict.fromkeys(shards))


def shard_rows(table: pd.DataFrame, shard_size: int, shard: int) -> pd.DataFrame:
    """The rows of shard `shard`: the unit of work a (remote) worker gets."""
    return table.iloc[shard * shard_size:(shard + 1) * shard_size]


def plan_synthesis(table: pd.DataFrame, cfg: SynthesisConfig, root: Path, model_id: str,
                   shards: list[int] | None = None) -> ShardPlan:
    """Check the inputs, prepare `root` (fingerprint) and list the shards still to write.

    Everything that can fail on bad input fails here, before `root` is touched.
    """
    if len(table) == 0:
        raise ValueError("the prompt table is empty: nothing to synthesize (prompts.n must be > 0)")
    n_shards = math.ceil(len(table) / cfg.shard_size)
    requested = check_shards(shards, n_shards)
    prepare_output(root, table_fingerprint(table, cfg, model_id))
    # A finished shard is kept only when its files are as its writer recorded them.
    done = {p.name for p in drop_damaged(complete_shards(root), "synthesis")}
    todo = [s for s in requested if shard_name(s) not in done]
    return ShardPlan(n_shards, todo, len(requested) - len(todo))


def synthesize_shard(pipe, rows: pd.DataFrame, cfg: SynthesisConfig) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Generate one shard's rows: (images, latents (N, C, h, w), timesteps (N,))."""
    call = capture_call_for(cfg.sampling.steps, cfg.capture_t)
    images, latents, timesteps = [], [], []
    for i in range(0, len(rows), cfg.sampling.batch_size):
        chunk = rows.iloc[i:i + cfg.sampling.batch_size]
        with FeatureCapture(pipe.unet, call, record_features=False) as cap:
            images.extend(generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), cfg.sampling, fp32_call=call))
        latents.append(cap.latents.float().cpu())
        timesteps.append(torch.full((len(chunk),), cap.timestep, dtype=torch.long))
    return images, torch.cat(latents), torch.cat(timesteps)


def write_synthesis_shard(pipe, rows: pd.DataFrame, cfg: SynthesisConfig, root: Path, shard: int) -> Path:
    """Generate shard `shard` from its rows and write it atomically under `root`."""
    images, latents, timesteps = synthesize_shard(pipe, rows, cfg)
    return write_shard(root, shard, rows.reset_index(drop=True), images, latents, timesteps)


def synthesis_stats(plan: ShardPlan, table: pd.DataFrame) -> dict:
    return {"shards": plan.n_shards, "resumed_shards": plan.resumed, "images": len(table)}


def synthesize(pipe, table: pd.DataFrame, cfg: SynthesisConfig, root: Path, model_id: str,
               shards: list[int] | None = None) -> dict:
    """Write every (or the listed) shard of `table` under `root`, skipping finished ones.

    Serial, in this process; `groundiff.method.distributed.synthesize_distributed` runs the same plan
    and the same per-shard function on a Dask cluster.
    """
    plan = plan_synthesis(table, cfg, root, model_id, shards)
    for s in tqdm(plan.todo, desc="synthesize shards", mininterval=5):
        write_synthesis_shard(pipe, shard_rows(table, cfg.shard_size, s), cfg, root, s)
    return synthesis_stats(plan, table)
