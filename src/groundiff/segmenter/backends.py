"""Which library trains and loads a Protocol II segmenter: `SegmenterConfig.backend` picks the trainer,
a saved segmenter's `segmenter.json` ("backend", absent = transformers) picks the loader.

    segmenter, summary = train(sources, classes, cfg, work_dir)   # cfg.backend: transformers | mmseg
    segmenter = load_segmenter("models/segmenter/C")              # either kind; .predict(images)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from groundiff.segmenter.model import META_FILE, Segmenter, SegmenterConfig, TrainedSegmenter
from groundiff.segmenter.train import DataSource, train_segmenter


def train(sources: Sequence[DataSource], classes: Sequence[str], cfg: SegmenterConfig, work_dir: Path,
          device: str = "cpu", on_log: Callable[[dict], None] | None = None, progress: bool = True):
    """Train with `cfg.backend`'s library; returns (segmenter, summary) as `train_segmenter` does."""
    if cfg.backend == "mmseg":
        from groundiff.segmenter.mmseg_backend import train_mmseg

        return train_mmseg(sources, classes, cfg, work_dir, device=device, on_log=on_log, progress=progress)
    return train_segmenter(sources, classes, cfg, work_dir, device=device, on_log=on_log, progress=progress)


def load_segmenter(path: str | Path, device: str = "cpu") -> TrainedSegmenter:
    """A saved segmenter of either backend (`Segmenter` or `MMSegSegmenter`), by its segmenter.json."""
    path = Path(path)
    meta_file = path / META_FILE
    backend = json.loads(meta_file.read_text()).get("backend", "transformers") if meta_file.is_file() else "transformers"
    if backend == "mmseg":
        from groundiff.segmenter.mmseg_backend import MMSegSegmenter

        return MMSegSegmenter.from_pretrained(path, device=device)
    return Segmenter.from_pretrained(path, device=device)
