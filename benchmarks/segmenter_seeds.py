"""How much of a Protocol II number is the variant, and how much the seed? Retrain with other seeds.

    python benchmarks/segmenter_seeds.py                                  # C, D, real_all; seeds 0 1 2
    python benchmarks/segmenter_seeds.py --variants C real_all --seeds 0 1 2 3 --workers 2
    python benchmarks/segmenter_seeds.py --out reports/segmenter_seeds.md
    python benchmarks/segmenter_seeds.py --seeds 0 1 2 3 4 --reuse-pipeline   # seed 0 from metrics/zs3.json
    python benchmarks/segmenter_seeds.py --variants real_all --real-images 600  # as many real images as C has synthetic
    python benchmarks/segmenter_seeds.py --variants C D --dev 500 --set color_aug=synthetic   # an ablation, val not read

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
from dataclasses import replace
from pathlib import Path

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
    from groundiff.segmenter import train_segmenter
    from groundiff.stages.common import Params, real_data
    from groundiff.stages.eval_zs3 import EvalZS3Params
    from groundiff.stages.train_segmenter import SYNTH, TrainSegmenterParams
    from groundiff.eval.zs3 import evaluate, variant_sources

    params = Params()
    cfg = params.section("train_segmenter", TrainSegmenterParams)
    scoring = params.section("eval_zs3", EvalZS3Params)
    split, real = params.class_split(), real_data(params)
    spec = cfg.variant(variant) if real_share is None else replace(cfg.variant(variant), real_share=real_share)
    segmenter_cfg = cfg.segmenter if seed is None else replace(cfg.segmenter, seed=seed)
    segmenter_cfg = replace(segmenter_cfg, **(overrides or {}))
    sources = variant_sources(spec, split, real if real_root is None else replace(real, root=real_root),
                              SYNTH if synth_root is None else Path(synth_root))
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


def real_subset(n: int, out: Path, seed: int = 0) -> Path:
    """A view of the world's real data whose train split is a seeded subset of `n` images."""
    from groundiff.stages.common import Params, real_data

    real = real_data(Params())
    total = len(split_ids(Path(real.root), real.split))
    if not 0 < n < total:
        raise ValueError(f"--real-images must be in 1..{total - 1} (the {real.split} split has {total} images)")
    kept, _ = dev_split(total - n, out, seed)
    return kept


def parse_overrides(items: list[str]) -> dict:
    """["color_aug=synthetic", "steps=2000"] -> SegmenterConfig fields (YAML values; lists become tuples)."""
    from dataclasses import fields

    import yaml

    from groundiff.segmenter import SegmenterConfig

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


def dev_split(holdout: int, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(fit root, dev root): the real train images minus `holdout` seeded ones, and those ones."""
    from real_share import holdout_roots  # beside this script

    from groundiff.stages.common import Params, real_data

    real = real_data(Params())
    return holdout_roots(Path(real.root), real.split, real.seen_labels, real.full_labels, holdout, seed, out)


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
        from groundiff.stages.common import Params
        from groundiff.stages.train_segmenter import TrainSegmenterParams

        stage_seed = Params().section("train_segmenter", TrainSegmenterParams).segmenter.seed
        reused = pipeline_rows(Path("metrics/zs3.json"), args.variants, args.seeds, stage_seed)  # fails early
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
        results.update(pipeline_rows(Path("metrics/zs3.json"), args.variants, args.seeds, stage_seed))
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
