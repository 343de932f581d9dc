"""Writing outputs safely: whole or not at all, and never outside the project."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from groundiff.core.checkpoint import write_text_atomic
from groundiff.core.errors import ParamsError


def project_path(path: str | Path, root: Path | None = None) -> Path:
    """Resolve a path from params relative to the project root and refuse ones that escape it."""
    root = (root or Path.cwd()).resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ParamsError(f"path {str(path)!r} leaves the project ({root}); use a path inside it")
    return resolved


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory output in `<path>.partial` and swap it in only when complete."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)


def write_json(path: Path, data: Any) -> None:
    """`data` as sorted, indented JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
