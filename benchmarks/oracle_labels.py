"""How much of a synthetic variant's gap to real_all do the grounding module's labels explain?

    python -m benchmarks.oracle_labels                              # C, seeds 0-4, two at a time
    python -m benchmarks.oracle_labels --variants C D --seeds 0 1 --workers 2

The synthetic dataset's images stay as they are; only their labels change, to what the world's
oracle detector finds in them: for each class the prompt names, the oracle's top-scoring instance
of that class with score >= --min-score, painted in increasing score order over background (a
class the oracle misses stays background). These are the labels of a grounding module that agreed
with the oracle everywhere, the reference Protocol I scores against. Each (variant, seed) then
trains on the relabelled copy exactly as `train_segmenter@<variant>` does and is scored as
`eval_zs3` scores it (`_common.train_and_score`). Scoring on the val split is fine here:
this is a diagnosis, and nothing is chosen from it.

If the oracle's labels lift the variant little, the labels are not what holds it back: the
synthetic images are (how many, and how far they are from the real ones). Prints the share of
pixels on which the two label sets agree, and per seed the variant's hIoU with the oracle's labels.
Compare with `segmenter_seeds.py` on the same seeds (the grounding module's labels). Needs an up to
date `dvc repro synth_dataset` and the world's oracle. About 6.5 min per training on one thread.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import train_and_score
from groundiff.worlds.oracle import Detections


def oracle_label_map(det: Detections, prompted: list[str], label_of: dict[str, int], min_score: float) -> np.ndarray:
    """(H, W) uint8 label map from one image's detections.

    Per prompted class its top-scoring instance (`Detections.best_mask`) if its score >= min_score;
    the instances are painted from the lowest score up, so where two overlap the more confident
    one wins; 0 elsewhere.
    """
    found = []
    for name in dict.fromkeys(prompted):  # a class prompted twice is labelled once
        mask, score = det.best_mask(name)
        if mask is not None and score >= min_score:
            found.append((score, name, mask))
    out = np.zeros(det.masks.shape[1:], np.uint8)
    for _, name, mask in sorted(found, key=lambda item: item[0]):
        out[np.asarray(mask, bool)] = label_of[name]
    return out


def relabel(dst: Path, min_score: float, batch: int = 50) -> float:
    """Copy the synthetic dataset to `dst` with the oracle's labels; returns the pixel agreement."""
    from PIL import Image

    from groundiff.data.prompts import CLASS_SEP
    from groundiff.data.voc import load_label_png, save_label_png
    from groundiff.core.params import Params
    from groundiff.core.paths import GROUNDING, SYNTH_SEGMENTATION as OUT
    from groundiff.method.synth_dataset import _fingerprint, synth_prompts
    from groundiff.method.synthesis import _read_fingerprint, model_fingerprint
    from groundiff.worlds.active import World

    params = Params()
    world = World(params)
    split, cfg = world.split, params.section("synth_dataset")
    table = synth_prompts(split.classes, cfg)
    marker = OUT / "synth_dataset.json"
    want = _fingerprint(table, cfg, [model_fingerprint(world.pipeline), model_fingerprint(GROUNDING)])
    if _read_fingerprint(marker) != want:
        raise SystemExit(f"{OUT} was not made with the current params and models: run `dvc repro synth_dataset` first")
    shutil.copytree(OUT, dst)
    oracle = world.load_oracle(score_threshold=min_score)
    label_of = {c: split.label(c) for c in split.classes}
    agree, total = 0, 0
    for start in range(0, len(table), batch):
        rows = table.iloc[start:start + batch]
        ids = [f"synth_{int(i):06d}" for i in rows["index"]]
        images = [np.array(Image.open(OUT / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids]
        for image_id, det, names in zip(ids, oracle.detect(images), rows["classes"]):
            label = oracle_label_map(det, names.split(CLASS_SEP), label_of, min_score)
            before = load_label_png(OUT / "SegmentationClass" / f"{image_id}.png")
            agree, total = agree + int((before == label).sum()), total + label.size
            save_label_png(dst / "SegmentationClass" / f"{image_id}.png", label)
    return agree / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["C"], help="variants with synthetic data (A-E)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--min-score", type=float, default=0.5, help="oracle score an instance needs to be a label")
    parser.add_argument("--workers", type=int, default=2, help="trainings at once (one CPU thread each)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "segmentation"
        agreement = relabel(root, args.min_score)
        print(f"the oracle's labels agree with the grounding module's on {100 * agreement:.1f}% of pixels", flush=True)
        jobs = [(v, s) for v in args.variants for s in args.seeds]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {job: pool.submit(train_and_score, *job, synth_root=str(root)) for job in jobs}
            results = {job: future.result() for job, future in futures.items()}
    print(f"\nWith the oracle's labels (score >= {args.min_score:g}) on the same synthetic images:")
    print("| variant | " + " | ".join(f"hIoU seed {s}" for s in args.seeds) + " | mean ± sd |")
    print("|" + "---|" * (len(args.seeds) + 2))
    for v in args.variants:
        values = [results[v, s]["hiou"] for s in args.seeds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {v} | " + " | ".join(f"{x:.1f}" for x in values) + f" | {statistics.fmean(values):.1f} ± {sd:.1f} |")


if __name__ == "__main__":
    main()
