"""`groundiff` command line: the paper's Fig. 1 experience on the current world.

    groundiff generate "a photograph of a star and a ring" --classes star ring --seed 0 --out out/
    groundiff demo               # the same in a browser: http://127.0.0.1:7860 (docs/demo.md)
    groundiff classes            # the world's vocabulary and its seen/unseen split
    groundiff world voc          # switch params.yaml to the paper's VOC world (its settings too)
    groundiff import-official grounding_module.pth --out models/grounding-official
                                 # the authors' released module as a module folder (docs/official.md)
    groundiff study seeds        # a study of studies.yaml as DVC experiments -> reports/studies/seeds.md
    groundiff mlflow-import      # the shipped run's committed metrics into mlflow.db, for `mlflow ui` (docs/mlflow.md)

Reads params.yaml in the current directory (the project root) for the world, its models and the
sampling settings; the grounding module comes from `models/grounding` (train_grounding's output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from groundiff.app.hints import error_message
from groundiff.core import paths
from groundiff.core.errors import ParamsError, WorldError

if TYPE_CHECKING:
    from groundiff.core.params import Params
    from groundiff.worlds.active import World


def _open(path: str | Path = paths.PARAMS) -> tuple[Params, World]:
    """params.yaml, every section validated, and its world (checked: the split exists)."""
    from groundiff.core.params import Params
    from groundiff.worlds.active import World, check

    params = Params(path)
    check(params)
    return params, World(params)


def _generate(args: argparse.Namespace) -> None:
    from groundiff.app.grounder import Grounder
    from groundiff.method.generate import save_grounded

    params, world = _open()
    split = world.split
    split.check_known(args.classes, "--classes")
    grounder = Grounder(params, world, args.grounding, precision=args.precision)
    result = grounder(args.prompt, args.classes, args.seed, steps=args.steps, guidance=args.guidance,
                      threshold=args.threshold)
    written = save_grounded(result, Path(args.out), scale=args.scale)
    for name, mask in zip(result.classes, result.masks):
        tag = "seen" if name in split.seen else "unseen"
        print(f"{name} ({tag} in grounding training): {int(mask.sum())} pixels")
    print("wrote " + ", ".join(str(p) for p in written))


def _demo(args: argparse.Namespace) -> None:
    from groundiff.app.demo import serve

    params, world = _open()
    serve(params, world, host=args.host, port=args.port, grounding=args.grounding, precision=args.precision,
          scale=args.scale, queue_size=args.queue)


def _classes(args: argparse.Namespace) -> None:
    params, world = _open()
    split = world.split
    print(f"world {split.world}, split {params.world.split}")
    print("seen:   " + ", ".join(split.seen))
    print("unseen: " + ", ".join(split.unseen))


def _world(args: argparse.Namespace) -> None:
    from groundiff.app.presets import apply_preset

    overrides = {"world.split": args.split} if args.split is not None else {}
    if args.device:
        overrides["world.device"] = args.device
    path = Path(args.params)
    original = path.read_text()
    changes = apply_preset(path, args.world, overrides)
    try:  # the result must validate; otherwise params.yaml is left as it was
        params, world = _open(path)
        split = world.split
    except Exception:
        path.write_text(original)
        raise
    print(f"params.yaml: world {args.world}, split {params.world.split} ({len(split.seen)} seen, "
          f"{len(split.unseen)} unseen), device {params.world.device}; {len(changes)} key(s) changed")
    for line in changes:
        print("  " + line)
    if args.world != "shapes":
        print(f"next: set {args.world}.diffusion / oracle / data_root in params.yaml if needed, then "
              f"`dvc repro world_setup` checks everything is in place (docs/gpu.md)")


def _import_official(args: argparse.Namespace) -> None:
    from groundiff.method.grounding.official import import_official

    summary = import_official(args.checkpoint, args.out, spectral_norm=args.spectral_norm, overwrite=args.force)
    print(f"{args.out}: the released grounding module ({summary['tensors']} tensors, {summary['parameters']:,} "
          f"parameters, {summary['spectral_norm']} spectral norm; sha256 {summary['sha256'][:16]}...)")
    print(f"use it: eval_grounding.grounding_dir / synth_dataset.grounding_dir: {args.out} in params.yaml, "
          f"or groundiff generate ... --grounding {args.out}")


def _study(args: argparse.Namespace) -> None:
    from groundiff.app.study import run_study

    run_study(args.name, ".", jobs=args.jobs, dry_run=args.dry_run, report_only=args.report_only)


def _mlflow_import(args: argparse.Namespace) -> None:
    from groundiff.app.mlflow_import import import_shipped

    result = import_shipped(".", force=args.force)
    what = {"imported": "imported", "replaced": f"replaced an older import ({result.deleted} runs deleted);",
            "skipped": "already imported (same files; --force re-imports):"}[result.action]
    print(f"{what} {result.runs} shipped runs into {result.tracking_uri} (parent run {result.parent_run_id})")
    store = result.tracking_uri.removeprefix("sqlite:///")
    if result.tracking_uri.startswith("sqlite:///"):
        print(f"browse: mlflow ui --backend-store-uri sqlite:///{store} --default-artifact-root "
              f"{Path(store).parent / 'mlruns'}")
    print(f"then open {result.url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundiff", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an image and a mask per named class")
    gen.add_argument("prompt", help='e.g. "a photograph of a star and a ring"')
    gen.add_argument("--classes", nargs="+", required=True, help="classes to ground (seen or unseen)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="out", help="output folder")
    gen.add_argument("--steps", type=int, default=None, help="DDIM steps (default: synthesize.sampling.steps)")
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: synthesize's)")
    gen.add_argument("--threshold", type=float, default=0.5, help="mask = sigmoid(logit) > threshold")
    gen.add_argument("--scale", type=int, default=8, help="upscale the saved PNGs (tiny worlds)")
    gen.add_argument("--grounding", default=str(paths.GROUNDING), help="trained grounding module folder")
    gen.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                     help="UNet autocast while denoising (default: synthesize's); fp32 is far faster on CPUs "
                          "without native bf16")
    gen.set_defaults(func=_generate)
    demo = sub.add_parser("demo", help="serve the Fig. 1 experience as a web app (Gradio) on this machine")
    demo.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes it to the network)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--grounding", default=str(paths.GROUNDING), help="trained grounding module folder")
    demo.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                      help="UNet autocast while denoising (default: synthesize's), as for generate")
    demo.add_argument("--scale", type=int, default=8, help="upscale the shown and downloadable PNGs (as generate)")
    demo.add_argument("--queue", type=int, default=8, help="requests that may wait; one generates at a time")
    demo.set_defaults(func=_demo)
    cls = sub.add_parser("classes", help="list the world's classes and seen/unseen split")
    cls.set_defaults(func=_classes)
    world = sub.add_parser("world", help="switch params.yaml to a world and its settings (shapes, voc, coco)")
    world.add_argument("world", choices=["shapes", "voc", "coco"])
    world.add_argument("--split", type=int, default=None,
                       help="seen/unseen split (voc: 1-3 for Protocol I, 0 = ZS3Net's unseen set for Protocol II)")
    world.add_argument("--device", default=None, help="torch device (default: cuda for voc/coco, cpu for shapes)")
    world.add_argument("--params", default="params.yaml", help="the params file to rewrite")
    world.set_defaults(func=_world)
    official = sub.add_parser("import-official",
                              help="convert the authors' released grounding_module.pth into a module folder")
    official.add_argument("checkpoint", help="the released grounding_module.pth (a tensor-only state dict)")
    official.add_argument("--out", default="models/grounding-official", help="module folder to write")
    official.add_argument("--spectral-norm", choices=["biggan", "torch"], default="biggan",
                          help="biggan: the released code's power iteration, u0 kept (default); torch: torch's "
                               "parametrization, set to give the same eval-mode sigma")
    official.add_argument("--force", action="store_true", help="replace --out if it exists")
    official.set_defaults(func=_import_official)
    study = sub.add_parser("study", help="run a study of studies.yaml as DVC experiments and write "
                                          "reports/studies/<name>.md|json")
    study.add_argument("name", help="a study in studies.yaml, e.g. seeds")
    study.add_argument("--jobs", "-j", type=int, default=1,
                       help="DVC queue workers running experiments at once (each trains with world.num_threads)")
    study.add_argument("--dry-run", action="store_true", help="print the dvc exp run commands; run nothing")
    study.add_argument("--report-only", action="store_true",
                       help="write the report from the finished experiments; queue nothing")
    study.set_defaults(func=_study)
    imp = sub.add_parser("mlflow-import", help="load the shipped run's committed metrics into mlflow.db as "
                                               "'shipped results' runs, to browse with `mlflow ui`")
    imp.add_argument("--force", action="store_true", help="re-import even if the same files are already imported")
    imp.set_defaults(func=_mlflow_import)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ParamsError, WorldError, OSError, ValueError, KeyError) as err:  # OSError: FileNotFound/Exists too
        print(f"groundiff: error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
