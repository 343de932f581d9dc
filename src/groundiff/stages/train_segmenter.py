"""Stages `train_segmenter@<variant>` and `train_reference@<variant>`: train one Protocol II MaskFormer.

    python -m groundiff.stages.train_segmenter A          # dvc repro train_segmenter@A
    python -m groundiff.stages.train_segmenter real_all   # dvc repro train_reference@real_all

Variants with synthetic data are `train_segmenter@` stages, those on real data alone (the
references) `train_reference@` ones. Output: `models/segmenter/<variant>/`, metrics and loss curve
in `metrics/train_segmenter/`; `models/segmenter_state/<variant>/` resumes an interrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from groundiff.core import paths, tracking
from groundiff.core.params import Params, ParamsError
from groundiff.core.training import publish
from groundiff.eval.zs3 import dvc_stage, variant_sources
from groundiff.segmenter import train
from groundiff.stages.common import open_stage, run_stage


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    variants = Params(paths.PARAMS).section("train_segmenter")  # which DVC stage trains the variant
    if len(args) != 1:
        raise ParamsError(f"usage: python -m groundiff.stages.train_segmenter <variant>; variants: {', '.join(variants.variants)}")
    name = args[0]
    params, world = open_stage(dvc_stage(name, variants.variant(name)))
    cfg, spec = params.get("train_segmenter.segmenter"), params.get(f"train_segmenter.variants.{name}")
    split = world.split
    sources = variant_sources(spec, split, world.real_data, paths.SYNTH_SEGMENTATION)
    for s in sources:  # a missing split list is named (run_stage adds the stage that writes it)
        if not (path := Path(s.root) / "ImageSets" / "Segmentation" / f"{s.split}.txt").is_file():
            raise FileNotFoundError(f"{path}: missing training split {s.split!r}")
    logged = {**params.logged(), "variant": name, "sources": [str(s) for s in sources]}
    state, out = paths.SEGMENTER_STATE / name, paths.SEGMENTERS / name
    with tracking.stage_run(dvc_stage(name, spec), logged) as run:
        segmenter, summary = train(
            sources, split.classes, cfg, state, device=params.world.device,
            on_log=lambda m: run.log_metrics({k: v for k, v in m.items() if k != "step"}, step=m["step"]))
        metrics = {"variant": name, "sources": [str(s) for s in sources], **summary}
        publish(run, state, metrics, paths.SEGMENTER_METRICS / f"{name}.json",
                paths.SEGMENTER_METRICS / f"{name}_loss.csv", out=out, save=segmenter.save_pretrained)
    loss = "n/a" if summary["final_loss"] is None else f"{summary['final_loss']:.3f}"
    pace = "" if summary["seconds_per_step"] is None else f", {summary['seconds_per_step']:.3f} s/step"
    print(f"{dvc_stage(name, spec)}: {sum(summary['samples'].values())} images from {len(sources)} source(s), "
          f"final loss {loss}{pace}; saved to {out}")


if __name__ == "__main__":
    run_stage(main)
