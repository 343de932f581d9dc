"""Synthetic-sample shards: what `synthesize` writes and every later stage reads.

    <root>/shard_00000/
        images/000000.png ...        the generated images (PNG, lossless)
        latents.safetensors          "latents" (N, C, h, w) float32: the UNet input at the capture
                                     step; "timesteps" (N,) int64; "index" (N,) int64
        meta.csv                     index, prompt, classes ('|'-joined), n_objects, seed
    <root>/shard_00001/ ...

Features are *not* stored (~60 MB per SD image): `capture.replay_features` recomputes them from
the latent with one UNet call. A shard is written under `shard_XXXXX.partial/` and renamed when
complete, so a reader never sees half a shard and a resumed run redoes only unfinished shards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from groundiff.data.prompts import class_list

META_COLUMNS = ["index", "prompt", "classes", "n_objects", "seed"]


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def complete_shards(root: Path) -> list[Path]:
    """Finished shards under `root`, in order (partial ones are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("shard_")
                  and not p.name.endswith(".partial") and (p / "meta.csv").is_file())


def write_shard(root: Path, shard: int, meta: pd.DataFrame, images: np.ndarray,
                latents: torch.Tensor, timesteps: torch.Tensor) -> Path:
    """Atomically write one shard. images: (N, H, W, 3) uint8; latents: (N, C, h, w)."""
    if not (len(meta) == len(images) == len(latents) == len(timesteps)):
        raise ValueError("meta, images, latents and timesteps must have one entry per sample")
    final = Path(root) / shard_name(shard)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    for idx, image in zip(meta["index"], images):
        Image.fromarray(image).save(partial / "images" / f"{int(idx):06d}.png")
    save_file({
        "latents": latents.detach().float().cpu().contiguous(),
        "timesteps": timesteps.detach().long().cpu().contiguous(),
        "index": torch.tensor(meta["index"].to_numpy(copy=True), dtype=torch.long),
    }, str(partial / "latents.safetensors"))
    meta[META_COLUMNS].to_csv(partial / "meta.csv", index=False)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


@dataclass
class Sample:
    index: int
    prompt: str
    classes: list[str]
    seed: int
    image: np.ndarray  # (H, W, 3) uint8
    latent: torch.Tensor  # (C, h, w)
    timestep: int


class ShardError(ValueError):
    """A shard on disk is damaged or inconsistent."""


def read_shard(path: Path) -> list[Sample]:
    """All samples of a shard; a corrupt image or mismatched tensors raise ShardError naming the file."""
    path = Path(path)
    meta = pd.read_csv(path / "meta.csv", keep_default_na=False)
    try:
        tensors = load_file(str(path / "latents.safetensors"))
    except Exception as err:  # safetensors raises several types for truncated files
        raise ShardError(f"{path / 'latents.safetensors'}: unreadable ({err}); delete the shard and rerun the stage") from err
    if tensors["index"].tolist() != meta["index"].tolist():
        raise ShardError(f"{path}: latents and meta.csv list different samples; delete the shard and rerun")
    samples = []
    for row, latent, t in zip(meta.itertuples(index=False), tensors["latents"], tensors["timesteps"]):
        image_path = path / "images" / f"{int(row.index):06d}.png"
        try:
            with Image.open(image_path) as img:
                image = np.array(img.convert("RGB"))
        except Exception as err:
            raise ShardError(f"{image_path}: not a readable PNG ({err}); delete {path} and rerun the stage") from err
        samples.append(Sample(int(row.index), row.prompt, class_list(row.classes), int(row.seed), image,
                              latent, int(t)))
    return samples


def iter_samples(root: Path) -> Iterator[Sample]:
    shards = complete_shards(root)
    if not shards:
        raise FileNotFoundError(f"{root}: no finished shards")
    for shard in shards:
        yield from read_shard(shard)


def read_meta(root: Path) -> pd.DataFrame:
    """The meta tables of all finished shards, concatenated (cheap: no images or tensors)."""
    shards = complete_shards(root)
    if not shards:
        raise FileNotFoundError(f"{root}: no finished shards")
    return pd.concat([pd.read_csv(s / "meta.csv", keep_default_na=False).assign(shard=s.name) for s in shards],
                     ignore_index=True)
