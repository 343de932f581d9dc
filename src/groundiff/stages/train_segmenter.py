"""Stages `train_segmenter@<variant>` and `train_reference@<variant>`: train one Protocol II MaskFormer.

    python -m groundiff.stages.train_segmenter A          # dvc repro train_segmenter@A
    python -m groundiff.stages.train_segmenter real_all   # dvc repro train_reference@real_all

Variants with synthetic data are `train_segmenter@<variant>` stages; those on real data alone
(the references) are `train_reference@<variant>`, which do not depend on the synthetic dataset.

params.yaml `train_segmenter`: `segmenter` (the SegmenterConfig every variant shares) and
`variants` (name -> synthetic splits + real data; see `groundiff.eval.zs3`). Output:
`models/segmenter/<variant>/` (transformers save_pretrained + segmenter.json), metrics
`metrics/train_segmenter/<variant>.json`, loss curve `metrics/train_segmenter/<variant>_loss.csv`.
Training state in `models/segmenter_state/<variant>/` makes an interrupted run resume; it is
deleted once the model is saved.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import ParamsError, to_dict
from groundiff.segmenter import SegmenterConfig, train_segmenter
from groundiff.core.io import atomic_dir, write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.eval.zs3 import VariantSpec, variant_sources
from groundiff.core.schema import TrainSegmenterParams

#: The synthetic dataset (synth_dataset); the real data is the world's (world_data).
SYNTH = Path("data/synth/segmentation")
MODELS = Path("models/segmenter")
STATE = Path("models/segmenter_state")
METRICS = Path("metrics/train_segmenter")


def dvc_stage(name: str, spec: VariantSpec) -> str:
    """The DVC stage that trains variant `name`: train_reference@ for real data alone, else train_segmenter@."""
    return f"{'train_segmenter' if spec.synthetic else 'train_reference'}@{name}"


def _check_sources(sources) -> None:
    """A missing split list is one clear error naming the stage that writes it."""
    for source in sources:
        path = Path(source.root) / "ImageSets" / "Segmentation" / f"{source.split}.txt"
        if not path.is_file():
            stage = "synth_dataset" if Path(source.root) == SYNTH else "world_data"
            raise FileNotFoundError(f"{path}: missing training split {source.split!r}; run `dvc repro {stage}`")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    params, world = open_stage("train_segmenter")
    cfg = params.section("train_segmenter")
    if len(args) != 1:
        raise ParamsError(f"usage: python -m groundiff.stages.train_segmenter <variant>; variants: {', '.join(cfg.variants)}")
    name = args[0]
    spec = cfg.variant(name)
    split = world.split
    sources = variant_sources(spec, split, world.real_data, SYNTH)
    _check_sources(sources)
    logged = {"train_segmenter": {"segmenter": to_dict(cfg.segmenter), "variant": name, **asdict(spec),
                                  "sources": [str(s) for s in sources]},
              **params.logged()}
    with tracking.stage_run(dvc_stage(name, spec), logged) as run:
        state = STATE / name
        segmenter, summary = train_segmenter(
            sources, split.classes, cfg.segmenter, state, device=params.world.device,
            on_log=lambda m: run.log_metrics({k: v for k, v in m.items() if k != "step"}, step=m["step"]))
        with atomic_dir(MODELS / name) as tmp:
            segmenter.save_pretrained(tmp)
        METRICS.mkdir(parents=True, exist_ok=True)
        shutil.copy(state / "log.csv", METRICS / f"{name}_loss.csv")
        metrics = {"variant": name, "sources": [str(s) for s in sources], **summary}
        write_json(METRICS / f"{name}.json", metrics)
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        run.log_artifact(METRICS / f"{name}_loss.csv")
        shutil.rmtree(state)
    loss = "n/a" if summary["final_loss"] is None else f"{summary['final_loss']:.3f}"
    pace = "" if summary["seconds_per_step"] is None else f", {summary['seconds_per_step']:.3f} s/step"
    print(f"{dvc_stage(name, spec)}: {sum(summary['samples'].values())} images from {len(sources)} source(s), "
          f"final loss {loss}{pace}; saved to {MODELS / name}")


if __name__ == "__main__":
    run_stage(main)
