"""What the Protocol II studies share: train a variant as its stage does and score it as eval_zs3
does, and views of the world's real data with some train images held out.

Used by segmenter_seeds, real_share and oracle_labels (run them as `python -m benchmarks.<name>`).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from groundiff.data.voc import split_ids


def train_and_score(variant: str, seed: int | None = None, real_share: float | None = None,
                    real_root: str | None = None, score_on: tuple[str, str] | None = None,
                    synth_root: str | None = None, overrides: dict | None = None) -> dict:
    """Train `variant` as its stage does and score it as eval_zs3 does; returns the zs3 row.

    Overrides, each only when given: the segmenter seed, the variant's real_share, the folder its
    real images come from (`real_root`), the (root, split) it is scored on (`score_on`; default
    eval_zs3's), the synthetic dataset's folder (`synth_root`), and SegmenterConfig fields
    (`overrides`). benchmarks/real_share.py uses real_root and score_on; benchmarks/oracle_labels.py
    uses synth_root.
    """
    from groundiff.core import paths
    from groundiff.core.params import Params
    from groundiff.eval.zs3 import evaluate, variant_sources
    from groundiff.segmenter import train_segmenter
    from groundiff.worlds.active import World

    params = Params()
    world = World(params)
    cfg = params.section("train_segmenter")
    scoring = params.section("eval_zs3")
    split, real = world.split, world.real_data
    spec = cfg.variant(variant) if real_share is None else replace(cfg.variant(variant), real_share=real_share)
    segmenter_cfg = cfg.segmenter if seed is None else replace(cfg.segmenter, seed=seed)
    segmenter_cfg = replace(segmenter_cfg, **(overrides or {}))
    sources = variant_sources(spec, split, real if real_root is None else replace(real, root=real_root),
                              paths.SYNTH_SEGMENTATION if synth_root is None else Path(synth_root))
    with tempfile.TemporaryDirectory() as work:
        segmenter, _ = train_segmenter(sources, split.classes, segmenter_cfg, Path(work),
                                       device=params.world.device, progress=False)
    root, split_name = score_on or (real.root, scoring.split)
    result, _ = evaluate(segmenter, root, split_name, split, scoring.background, scoring.batch_size)
    label = " ".join([variant] + [f"{k} {v}" for k, v in (("seed", seed), ("real_share", real_share),
                                                          ("synthetic data", synth_root)) if v is not None]
                     + [f"{k}={v}" for k, v in (overrides or {}).items()])
    print(f"{label}: hIoU {result['hiou']:.1f} on {split_name} (seen {result['miou_seen']:.1f}, "
          f"unseen {result['miou_unseen']:.1f})", flush=True)
    return result


def holdout_roots(real_root: Path, train_split: str, seen_labels: str, full_labels: str, holdout: int,
                  seed: int, out: Path) -> tuple[Path, Path]:
    """(fit root, dev root) under `out`: the real train ids split in two, seeded.

    fit: `<train_split>.txt` = the kept ids, label folders as in the real root.
    dev: `dev.txt` = the held-out ids, `SegmentationClass` = the full labels (every class).
    """
    ids = split_ids(real_root, train_split)
    if not 0 < holdout < len(ids):
        raise ValueError(f"the held-out count must be in 1..{len(ids) - 1} (the {train_split} split has {len(ids)} images), "
                         f"got {holdout}")
    dev = set(np.random.default_rng(seed).choice(len(ids), size=holdout, replace=False).tolist())
    fit_ids = [i for k, i in enumerate(ids) if k not in dev]
    dev_ids = [i for k, i in enumerate(ids) if k in dev]
    fit, held = out / "fit", out / "dev"
    for root, links, split, members in ((fit, {"JPEGImages": "JPEGImages", seen_labels: seen_labels,
                                               full_labels: full_labels}, train_split, fit_ids),
                                        (held, {"JPEGImages": "JPEGImages", "SegmentationClass": full_labels},
                                         "dev", dev_ids)):
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        for name, target in links.items():  # a dict: one link when seen and full labels are one folder
            (root / name).symlink_to((real_root / target).resolve(), target_is_directory=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(members) + "\n")
    return fit, held


def _real_data():
    from groundiff.core.params import Params
    from groundiff.worlds.active import World

    return World(Params()).real_data


def dev_split(holdout: int, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(fit root, dev root): the real train images minus `holdout` seeded ones, and those ones."""
    real = _real_data()
    return holdout_roots(Path(real.root), real.split, real.seen_labels, real.full_labels, holdout, seed, out)


def real_subset(n: int, out: Path, seed: int = 0) -> Path:
    """A view of the world's real data whose train split is a seeded subset of `n` images."""
    real = _real_data()
    total = len(split_ids(Path(real.root), real.split))
    if not 0 < n < total:
        raise ValueError(f"--real-images must be in 1..{total - 1} (the {real.split} split has {total} images)")
    kept, _ = dev_split(total - n, out, seed)
    return kept
