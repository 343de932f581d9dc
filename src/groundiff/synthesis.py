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

from groundiff.data.shards import complete_shards, shard_name, write_shard
from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.pipeline import SamplingConfig, generate


@dataclass(frozen=True)
class SynthesisConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    capture_t: int = 1  # steps counted from the end; 1 = final step (released code), 5 = paper's best
    shard_size: int = 100  # rows per shard: the unit of resumption and of distribution

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        capture_call_for(self.sampling.steps, self.capture_t)  # validates the range


def table_fingerprint(table: pd.DataFrame, cfg: SynthesisConfig, model_id: str) -> str:
    payload = json.dumps({"cfg": asdict(cfg), "model": model_id,
                          "rows": table[["prompt", "seed"]].values.tolist()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prepare_output(root: Path, fingerprint: str) -> None:
    """Keep finished shards only if they were made from the same table, settings and model."""
    marker = root / "synthesis.json"
    if root.exists() and (not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != fingerprint):
        shutil.rmtree(root)  # written for other params: nothing there can be reused
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")


def synthesize_shard(pipe, rows: pd.DataFrame, cfg: SynthesisConfig) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Generate one shard's rows: (images, latents (N, C, h, w), timesteps (N,))."""
    call = capture_call_for(cfg.sampling.steps, cfg.capture_t)
    images, latents, timesteps = [], [], []
    for i in range(0, len(rows), cfg.sampling.batch_size):
        chunk = rows.iloc[i:i + cfg.sampling.batch_size]
        with FeatureCapture(pipe.unet, call, record_features=False) as cap:
            images.extend(generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), cfg.sampling))
        latents.append(cap.latents.float().cpu())
        timesteps.append(torch.full((len(chunk),), cap.timestep, dtype=torch.long))
    return images, torch.cat(latents), torch.cat(timesteps)


def synthesize(pipe, table: pd.DataFrame, cfg: SynthesisConfig, root: Path, model_id: str,
               shards: list[int] | None = None) -> dict:
    """Write every (or the listed) shard of `table` under `root`, skipping finished ones."""
    prepare_output(root, table_fingerprint(table, cfg, model_id))
    n_shards = math.ceil(len(table) / cfg.shard_size)
    todo = range(n_shards) if shards is None else shards
    done = {p.name for p in complete_shards(root)}
    skipped = 0
    for s in tqdm(todo, desc="synthesize shards", mininterval=5):
        if shard_name(s) in done:
            skipped += 1
            continue
        rows = table.iloc[s * cfg.shard_size:(s + 1) * cfg.shard_size]
        images, latents, timesteps = synthesize_shard(pipe, rows, cfg)
        write_shard(root, s, rows.reset_index(drop=True), images, latents, timesteps)
    return {"shards": n_shards, "resumed_shards": skipped, "images": len(table)}
