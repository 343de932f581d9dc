"""Atomic file writes and resumable training state in safetensors (never pickle).

A training state is one safetensors file: model and optimizer tensors under prefixed keys, and
everything else (step, config fingerprint, optimizer hyper-parameters) as JSON in its metadata.
Files are written to a temporary name and renamed, so a run killed mid-write leaves the previous
checkpoint intact and nothing half-written is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (e.g. a training config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_training_state(
    path: str | Path,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
) -> None:
    """Save modules (or raw tensor dicts), optimizers and JSON metadata to one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        sd = module.state_dict() if isinstance(module, torch.nn.Module) else module
        for key, value in sd.items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    opt_meta = {}
    for name, opt in optimizers.items():
        opt_tensors, opt_meta[name] = _optimizer_tensors(opt, f"optim.{name}")
        tensors.update(opt_tensors)
    metadata = {"meta": json.dumps(meta), "optimizers": json.dumps(opt_meta)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


class CheckpointError(ValueError):
    """A training state on disk cannot be read (damaged, or not written by `save_training_state`)."""


class ModelFileError(CheckpointError):
    """A saved model folder cannot be loaded: a damaged file, or weights that do not fit its config."""


@contextmanager
def loading_model(folder: str | Path, what: str) -> Iterator[None]:
    """Turn any failure to load the `what` saved in `folder` into one ModelFileError that names the
    folder and the cause (a missing folder's FileNotFoundError, already clear, passes through).

    Safetensors, torch and transformers fail in many ways on a truncated file or a config.json whose
    widths disagree with the weights (SafetensorError, RuntimeError "size mismatch ...", JSONDecodeError,
    OSError); a user needs the same answer to each: this file is not the model, remake it.
    """
    try:
        yield
    except (FileNotFoundError, ModelFileError):
        raise
    except Exception as err:  # noqa: BLE001 (every loader failure means: these files are not that model)
        raise ModelFileError(f"{folder}: the {what} saved there cannot be loaded ({_cause(err)}); the files are "
                             "damaged or do not belong together. Remake the folder") from err


def _cause(err: Exception) -> str:
    """The informative part of a loader's error, on one line (torch lists size mismatches line by line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    text = "; ".join(detail[:2] or lines[:2]) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


def _read_state(path: str | Path, tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors or {}) of a training state; a damaged file is one clear CheckpointError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        json.loads(metadata["meta"])
        return metadata, load_file(str(path)) if tensors else {}
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(
            f"{path}: unreadable training state ({type(err).__name__}: {err}); delete it to start this "
            "training from scratch"
        ) from err


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a training state, without loading its tensors."""
    return json.loads(_read_state(path, tensors=False)[0]["meta"])


def read_tensors(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a training state saved under `prefix` (e.g. "rng."), keyed without it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_training_state(
    path: str | Path,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizers: dict[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Restore what `save_training_state` wrote, in place; returns the metadata."""
    metadata, tensors = _read_state(path, tensors=True)
    for name, module in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if isinstance(module, torch.nn.Module):
            module.load_state_dict(sd)
        else:
            for key, value in sd.items():
                module[key].copy_(value)
    opt_meta = json.loads(metadata["optimizers"])
    for name, opt in optimizers.items():
        prefix = f"optim.{name}."
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix):].split(".", 1)
                state.setdefault(int(idx), {})[field] = value
        for idx, scalars in opt_meta[name]["scalars"].items():
            state.setdefault(int(idx), {}).update(scalars)
        opt.load_state_dict({"state": state, "param_groups": opt_meta[name]["param_groups"]})
    return json.loads(metadata["meta"])
