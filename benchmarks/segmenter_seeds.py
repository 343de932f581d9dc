"""How much of a Protocol II number is the variant, and how much the seed? Retrain with other seeds.

    python -m benchmarks.segmenter_seeds                                  # C, D, real_all; seeds 0 1 2
    python -m benchmarks.segmenter_seeds --variants C real_all --seeds 0 1 2 3 --workers 2
    python -m benchmarks.segmenter_seeds --out reports/segmenter_seeds.md
    python -m benchmarks.segmenter_seeds --seeds 0 1 2 3 4 --reuse-pipeline   # seed 0 from metrics/zs3.json
    python -m benchmarks.segmenter_seeds --variants real_all --real-images 600  # as many real images as C has synthetic
    python -m benchmarks.segmenter_seeds --variants C D --dev 500 --set color_aug=synthetic   # an ablation, val not read

Each (variant, seed) trains `train_segmenter@<variant>` exactly as the stage does, with only
`train_segmenter.segmenter.seed` changed (init, batch order, augmentation, dropout), into a
temporary folder, and is scored on the real val split as `eval_zs3` scores it. It prints (and
with --out writes) hIoU, seen and unseen mIoU per seed, each variant's mean and standard
deviation, and each variant's mean hIoU as a share of real_all's (the issue's targets).
Needs `dvc repro synth_dataset` (the synthetic data) and the world's real data. A run trains
len(variants) x len(seeds) MaskFormers: about 6.5 min each on one thread at the defaults;
`--workers` runs that many at once (one thread each). `--reuse-pipeline` takes the params seed's
rows from the pipeline's own `metrics/zs3.json` instead of retraining them: training is
deterministic, so with `dvc status` clean those are the very models this script would train.
`--real-images N` trains on a seeded subset of N real train images instead of all of them (the
variants' synthetic data unchanged): is a gap to real_all one of quantity or of kind?
`--set KEY=VALUE` overrides a `train_segmenter.segmenter` key (YAML value) in every training;
with `--dev N` the models train on the real train images but N seeded held-out ones and are
scored on those N, with every class labelled, as benchmarks/real_share.py does: an ablation
chosen this way has not seen the val split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import dev_split, real_subset, train_and_score
from groundiff.core import paths

ZS3 = paths.metrics("zs3")  # eval_zs3's results: metrics/zs3.json


def parse_overrides(items: list[str]) -> dict:
    """["color_aug=synthetic", "steps=2000"] -> SegmenterConfig fields (YAML values; lists become tuples)."""
    from dataclasses import fields

    import yaml

    from groundiff.core.schema import SegmenterConfig

    known = {f.name for f in fields(SegmenterConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. color_aug=synthetic")
        if key not in known:
            raise ValueError(f"--set {key}: not a train_segmenter.segmenter key; known: {', '.join(sorted(known))}")
        parsed = yaml.safe_load(value)
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def pipeline_rows(zs3: Path, variants: list[str], seeds: list[int], stage_seed: int) -> dict[tuple[str, int], dict]:
    """The rows of `stage_seed` (the params seed the pipeline trained with) from eval_zs3's metrics."""
    if stage_seed not in seeds:
        return {}
    if not zs3.is_file():
        raise FileNotFoundError(f"{zs3}: no pipeline results to reuse; run `dvc repro eval_zs3` or drop --reuse-pipeline")
    rows = json.loads(zs3.read_text())
    missing = [v for v in variants if v not in rows]
    if missing:
        raise ValueError(f"{zs3} has no rows for {missing}: they are not pipeline variants; drop --reuse-pipeline")
    return {(v, stage_seed): rows[v] for v in variants}


def table(results: dict[tuple[str, int], dict], variants: list[str], seeds: list[int]) -> str:
    """Markdown: per-seed hIoU, mean ± sd of hIoU / seen / unseen, and the share of real_all's mean."""
    def stats(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    means = {v: stats([results[v, s]["hiou"] for s in seeds])[0] for v in variants}
    head = "| variant | " + " | ".join(f"hIoU seed {s}" for s in seeds) + " | hIoU mean ± sd | seen | unseen | share of real_all |"
    lines = [head, "|" + "---|" * (len(seeds) + 5)]
    for v in variants:
        row = [f"{results[v, s]['hiou']:.1f}" for s in seeds]
        cells = []
        for key in ("hiou", "miou_seen", "miou_unseen"):
            mean, sd = stats([results[v, s][key] for s in seeds])
            cells.append(f"{mean:.1f} ± {sd:.1f}")
        share = f"{100 * means[v] / means['real_all']:.1f}%" if means.get("real_all") else "—"
        lines.append(f"| {v} | " + " | ".join(row + cells + [share]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["C", "D", "real_all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="trainings at once (one CPU thread each)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--reuse-pipeline", action="store_true",
                        help="the params seed's rows from metrics/zs3.json instead of retraining (dvc status clean)")
    parser.add_argument("--real-images", type=int, default=None,
                        help="train on a seeded subset of this many real train images (default: all)")
    parser.add_argument("--dev", type=int, default=None, metavar="N",
                        help="hold out N real train images, train on the rest, score on those N (val not read)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train_segmenter.segmenter key in every training (repeatable)")
    args = parser.parse_args()
    if args.real_images is not None and args.reuse_pipeline:
        parser.error("--reuse-pipeline reads models trained on every real image: drop it with --real-images")
    if args.dev is not None and (args.reuse_pipeline or args.real_images is not None):
        parser.error("--dev trains on the real images but the held-out ones: drop --reuse-pipeline and --real-images")
    if args.overrides and args.reuse_pipeline:
        parser.error("--reuse-pipeline reads models trained with params.yaml as it is: drop it with --set")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        parser.error(str(err))

    reused = {}
    if args.reuse_pipeline:
        from groundiff.core.params import Params

        stage_seed = Params().section("train_segmenter").segmenter.seed
        reused = pipeline_rows(ZS3, args.variants, args.seeds, stage_seed)  # fails early
        print(f"seed {stage_seed}: the pipeline's rows from metrics/zs3.json ({', '.join(args.variants)}), "
              "read when the trainings end", flush=True)
    jobs = [(v, s) for v in args.variants for s in args.seeds if (v, s) not in reused]
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max_workers=args.workers) as pool:
        real_root, score_on = None, None
        if args.real_images is not None:
            try:
                real_root = str(real_subset(args.real_images, Path(tmp)))
            except ValueError as err:
                parser.error(str(err))
        if args.dev is not None:
            try:
                fit, dev = dev_split(args.dev, Path(tmp))
            except ValueError as err:
                parser.error(f"--dev: {err}")
            real_root, score_on = str(fit), (str(dev), "dev")
        futures = {job: pool.submit(train_and_score, *job, real_root=real_root, score_on=score_on,
                                    overrides=overrides) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    if reused:  # read again now: a pipeline run that finished meanwhile is the one reported
        results.update(pipeline_rows(ZS3, args.variants, args.seeds, stage_seed))
    text = table(results, args.variants, args.seeds)
    if args.dev is not None or overrides:
        text = (f"Scored on {f'{args.dev} held-out real train images (dev split)' if args.dev else 'val'}"
                + (f", with {', '.join(args.overrides)}" if overrides else "") + ".\n\n" + text)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Protocol II across segmenter seeds (`benchmarks/segmenter_seeds.py`)\n\n" + text)


if __name__ == "__main__":
    main()
