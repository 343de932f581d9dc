"""A tiny, deterministic shapes world, and one resumable stage run on it, for subprocess tests.

    python tests/_resume_worker.py build MODELS                  # pipeline, grounding module, detector
    python tests/_resume_worker.py synthesize MODELS OUT
    python tests/_resume_worker.py synth_dataset MODELS OUT
    python tests/_resume_worker.py pseudo_label MODELS OUT SYNTH  # labels SYNTH's shards into OUT

test_resume_kill.py SIGKILLs these runs part-way and reruns them in-process with `run`; the
models are built once, seeded, so every process sees the same weights. test_distributed.py uses
the same world.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from groundiff.data.prompts import PromptConfig, sample_prompts
from groundiff.diffusion.pipeline import SamplingConfig, load_pipeline
from groundiff.method.synth_dataset import SynthDatasetConfig
from groundiff.method.synthesis import SynthesisConfig
from groundiff.worlds.base import make_split
from groundiff.worlds.shapes import CLASSES

SPLIT = make_split("shapes", CLASSES, ["ring", "heart", "arrow"])
SYNTH_CFG = SynthesisConfig(sampling=SamplingConfig(steps=3, guidance_scale=4.0, batch_size=2), capture_t=2,
                            shard_size=2)
DATASET_CFG = SynthDatasetConfig(n_one=8, n_two=8, n_complicated=4, attributes=["red"], shard_size=2,
                                 threshold=0.5, ignore_below=0.3,
                                 sampling=SamplingConfig(steps=2, guidance_scale=3.0, batch_size=2))
N_PROMPTS = 24  # -> 12 synthesis shards: plenty of room to be killed in the middle


def table():
    return sample_prompts(CLASSES[:4], PromptConfig(n=N_PROMPTS, seed=0))


def build(models: Path) -> Path:
    """Write the tiny pipeline (`pipe/`), grounding module (`grounding/`) and detector (`detector/`)."""
    from groundiff.method.grounding import GroundingConfig, GroundingModule
    from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn
    from groundiff.testing import tiny_shapes_pipeline

    pipe = tiny_shapes_pipeline(models / "pipe")
    torch.manual_seed(0)
    cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32, d_model=32,
                                           n_heads=2, ffn_dim=64, n_layers=1)
    GroundingModule(cfg).eval().save_pretrained(models / "grounding")
    torch.manual_seed(0)
    arch = DetectorArch(classes=CLASSES, widths=(8, 16, 16), fpn_channels=16, input_size=32)
    TorchvisionOracle(build_maskrcnn(arch).eval(), CLASSES, score_threshold=0.0, arch=arch).save_pretrained(
        models / "detector")
    return models


def run(kind: str, models: Path, out: Path, synth: Path | None = None) -> dict:
    """Run stage-like work `kind` on the tiny world into `out` (resuming what is there)."""
    torch.set_num_threads(1)  # the same arithmetic in every process: bit-identical outputs
    if kind == "synthesize":
        from groundiff.method.synthesis import synthesize

        return synthesize(load_pipeline(models / "pipe"), table(), SYNTH_CFG, out, model_id="tiny")
    if kind == "synth_dataset":
        from groundiff.method.grounding import GroundingModule
        from groundiff.method.synth_dataset import synth_dataset

        module = GroundingModule.from_pretrained(models / "grounding")
        return synth_dataset(load_pipeline(models / "pipe"), module, SPLIT, DATASET_CFG, out, ["tiny", "tiny"])
    if kind == "pseudo_label":
        from groundiff.worlds.oracle import TorchvisionOracle
        from groundiff.method.pseudo_label import PseudoLabelConfig, pseudo_label

        oracle = TorchvisionOracle.from_pretrained(models / "detector", score_threshold=0.0)
        return pseudo_label(oracle, synth, out, PseudoLabelConfig(score_threshold=0.0, batch_size=2), "tiny")
    raise ValueError(f"unknown kind {kind!r}")


if __name__ == "__main__":
    command, models, *rest = sys.argv[1:]
    if command == "build":
        build(Path(models))
    else:
        run(command, Path(models), Path(rest[0]), Path(rest[1]) if len(rest) > 1 else None)
