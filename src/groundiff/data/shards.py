"""Synthetic-sample shards: what `synthesize` writes and every later stage reads.

    <root>/shard_00000/
        images/000000.png ...        the generated images (PNG, lossless)
        latents.safetensors          "latents" (N, C, h, w) float32: the UNet input at the capture
                                     step; "timesteps" (N,) int64; "index" (N,) int64
        meta.csv                     index, prompt, classes ('|'-joined), n_objects, seed
        .manifest.json               the writer's record: every file's size and md5 (see below)
    <root>/shard_00001/ ...

Features are *not* stored (~60 MB per SD image): `capture.replay_features` recomputes them from
the latent with one UNet call. A shard is written under `shard_XXXXX.partial/` and renamed when
complete, so a reader never sees half a shard and a resumed run redoes only unfinished shards.

A finished shard can still be damaged later (a truncated copy, an edited image). So the writer
records each file's size and md5 in the shard's `.manifest.json`, and a resumed run checks every
shard it would keep against it (`damaged_files`: sizes, then hashes; milliseconds per shard) and
redoes the damaged ones instead of passing them on. The manifest is the local writer's record, not
part of the dataset: `.dvcignore` leaves it out of DVC's hashes, so the data's md5s are what they
were. A shard without one (pulled from a remote, whose files DVC itself checked) is checked by
reading every file instead.
"""

from __future__ import annotations

import hashlib
import json
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

from groundiff.core.io import file_digest
from groundiff.data.prompts import class_list

META_COLUMNS = ["index", "prompt", "classes", "n_objects", "seed"]
MANIFEST = ".manifest.json"  # listed in .dvcignore: not part of the data's hash


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, source: str = "") -> None:
    """Record every file of `folder` (size, md5) and what it was made from (`source`, e.g. an input's
    content digest) in `folder/.manifest.json`. Call it last, before the folder is renamed into place."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): [p.stat().st_size, _md5(p)] for p in _data_files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, sort_keys=True) + "\n")


def manifest_source(folder: Path) -> str | None:
    """The `source` a shard's writer recorded, or None when it has no readable manifest."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def content_digest(folder: Path) -> str:
    """A digest of a folder's files (names and bytes; the manifest aside): what a derived shard is keyed on."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for p in _data_files(folder):
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0" + _md5(p).encode())
    return digest.hexdigest()[:16]


def damaged_files(folder: Path) -> list[str]:
    """What is wrong with a finished shard, one entry per file (empty: intact).

    With a manifest: files missing, added, of another size or another md5 than its writer recorded.
    Without one: files that cannot be read whole (PNGs decoded, tensors loaded, tables parsed).
    """
    folder = Path(folder)
    try:
        recorded = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return _unreadable_files(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MANIFEST}: unreadable"]
    present = {p.relative_to(folder).as_posix(): p for p in _data_files(folder)}
    problems = [f"{name}: missing" for name in sorted(set(recorded) - set(present))]
    problems += [f"{name}: not written by this shard's writer" for name in sorted(set(present) - set(recorded))]
    for name in sorted(set(recorded) & set(present)):
        size, md5 = recorded[name]
        actual = present[name].stat().st_size
        if actual != size:
            problems.append(f"{name}: {actual} bytes, its writer wrote {size}")
        elif _md5(present[name]) != md5:
            problems.append(f"{name}: changed since it was written (md5)")
    return problems


def _unreadable_files(folder: Path) -> list[str]:
    problems = []
    for p in _data_files(folder):
        try:
            if p.suffix in (".png", ".jpg"):
                with Image.open(p) as img:
                    img.load()
            elif p.suffix == ".safetensors":
                load_file(str(p))
            elif p.suffix == ".csv":
                pd.read_csv(p)
        except Exception as err:  # noqa: BLE001 (any failure to read means damaged)
            problems.append(f"{p.relative_to(folder).as_posix()}: unreadable ({type(err).__name__}: {err})")
    return problems


def drop_damaged(shards: list[Path], what: str) -> list[Path]:
    """The intact ones of `shards`; each damaged one is deleted (to be redone) with a warning naming it."""
    import warnings

    intact = []
    for shard in shards:
        problems = damaged_files(shard)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            warnings.warn(f"{shard}: damaged {what} shard ({shown}); redoing it", stacklevel=2)
            shutil.rmtree(shard)
        else:
            intact.append(shard)
    return intact


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
    write_manifest(partial)
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
