"""Choose Model D's `real_share` without looking at the test split: score it on held-out real *train* images.

    python benchmarks/real_share.py                                   # shares 0.5 0.25 0.1, 500 held out
    python benchmarks/real_share.py --variant E --shares 0.5 0.1 --holdout 1000 --workers 2

`real_share` is the fraction of each batch drawn from the real seen-only images when a variant
mixes them with synthetic data (D, E). Scoring candidate shares on `eval_zs3`'s val split and
shipping the best would tune on the test. Here a seeded `--holdout` of the real train images is
set aside as a dev split: the variant trains on the rest of the real train images (unseen classes
hidden, as always) plus its synthetic splits, and is scored on the dev images with *every* class
labelled (the world's full labels), exactly as eval_zs3 scores val. The val split is never read.

The folders are views: a temporary VOC root whose image and label folders link to the world's
real data, with its own split lists. Needs `dvc repro synth_dataset` and the world's real data
with full labels on disk (the shapes world's SegmentationClassFull). About 3 min per share on
one thread; `--workers` trains that many at once.
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def holdout_roots(real_root: Path, train_split: str, seen_labels: str, full_labels: str, holdout: int,
                  seed: int, out: Path) -> tuple[Path, Path]:
    """(fit root, dev root) under `out`: the real train ids split in two, seeded.

    fit: `<train_split>.txt` = the kept ids, label folders as in the real root.
    dev: `dev.txt` = the held-out ids, `SegmentationClass` = the full labels (every class).
    """
    from groundiff.data.voc import split_ids

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="D", help="a variant with real and synthetic data (D or E)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--holdout", type=int, default=500, help="real train images held out as the dev split")
    parser.add_argument("--seed", type=int, default=0, help="which images are held out")
    parser.add_argument("--workers", type=int, default=2, help="trainings at once (one CPU thread each)")
    args = parser.parse_args()

    # segmenter_seeds sits beside this script, so it is on the path when run as one
    from segmenter_seeds import dev_split, train_and_score

    with tempfile.TemporaryDirectory() as tmp:
        try:
            fit, dev = dev_split(args.holdout, Path(tmp), args.seed)
        except ValueError as err:
            parser.error(f"--holdout: {err}")
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {s: pool.submit(train_and_score, args.variant, real_share=s, real_root=str(fit),
                                      score_on=(str(dev), "dev")) for s in args.shares}
            results = {s: f.result() for s, f in futures.items()}
    print(f"\n{args.variant} on {args.holdout} held-out real train images (val not read):")
    print("| real_share | dev hIoU | seen | unseen |\n|---|---|---|---|")
    for share, r in results.items():
        print(f"| {share:g} | {r['hiou']:.1f} | {r['miou_seen']:.1f} | {r['miou_unseen']:.1f} |")
    best = max(results, key=lambda s: results[s]["hiou"])
    print(f"best on the dev split: real_share {best:g}")


if __name__ == "__main__":
    main()
