"""Choose Model D's `real_share` without looking at the test split: score it on held-out real *train* images.

    python -m benchmarks.real_share                                   # shares 0.5 0.25 0.1, 500 held out
    python -m benchmarks.real_share --variant E --shares 0.5 0.1 --holdout 1000 --workers 2

`real_share` is the fraction of each batch drawn from the real seen-only images when a variant
mixes them with synthetic data (D, E). Scoring candidate shares on `eval_zs3`'s val split and
shipping the best would tune on the test. Here a seeded `--holdout` of the real train images is
set aside as a dev split: the variant trains on the rest of the real train images (unseen classes
hidden, as always) plus its synthetic splits, and is scored on the dev images with *every* class
labelled (the world's full labels), exactly as eval_zs3 scores val. The val split is never read.

The folders are views (`_common.holdout_roots`): a temporary VOC root whose image and label
folders link to the world's real data, with its own split lists. Needs `dvc repro synth_dataset` and the world's real data
with full labels on disk (the shapes world's SegmentationClassFull). About 3 min per share on
one thread; `--workers` trains that many at once.
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import dev_split, train_and_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="D", help="a variant with real and synthetic data (D or E)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--holdout", type=int, default=500, help="real train images held out as the dev split")
    parser.add_argument("--seed", type=int, default=0, help="which images are held out")
    parser.add_argument("--workers", type=int, default=2, help="trainings at once (one CPU thread each)")
    args = parser.parse_args()

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
