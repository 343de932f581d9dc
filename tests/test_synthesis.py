"""Synthesis shards and pseudo-labels on a tiny shapes-style pipeline: content, resume, bad shards."""

from pathlib import Path

import numpy as np
import pytest
import torch

from groundiff.data.prompts import PromptConfig, sample_prompts
from groundiff.data.shards import ShardError, complete_shards, read_meta, read_shard
from groundiff.diffusion.capture import FeatureCapture, capture_call_for, replay_features
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn
from groundiff.method.pseudo_label import PseudoLabelConfig, load_mask, pseudo_label, read_labels
from groundiff.method.synthesis import SynthesisConfig, synthesize
from groundiff.worlds.shapes import CLASSES
from groundiff.testing import tiny_shapes_pipeline

CFG = SynthesisConfig(sampling=SamplingConfig(steps=3, guidance_scale=4.0, batch_size=4), capture_t=2, shard_size=5)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes_pipe")
    tiny_shapes_pipeline(folder)
    return load_pipeline(folder)


@pytest.fixture(scope="module")
def table():
    return sample_prompts(CLASSES[:4], PromptConfig(n=12, seed=0))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_hold_images_prompts_and_replayable_latents(pipe, table, tmp_path):
    stats = synthesize(pipe, table, CFG, tmp_path / "synth", model_id="tiny")
    assert stats == {"shards": 3, "resumed_shards": 0, "images": 12}
    shards = complete_shards(tmp_path / "synth")
    assert [s.name for s in shards] == ["shard_00000", "shard_00001", "shard_00002"]
    meta = read_meta(tmp_path / "synth")
    assert meta["prompt"].tolist() == table["prompt"].tolist()
    samples = read_shard(shards[0])
    assert samples[0].image.shape == (32, 32, 3) and samples[0].latent.shape == (4, 32, 32)
    # The stored latent replays to exactly the features a capture during generation records.
    rows = table.iloc[:2]
    with FeatureCapture(pipe.unet, capture_call_for(CFG.sampling.steps, CFG.capture_t)) as cap:
        images = generate(pipe, list(rows["prompt"]), list(rows["seed"]), CFG.sampling)
    np.testing.assert_array_equal(images[0], samples[0].image)
    latents = torch.stack([s.latent for s in samples[:2]])
    replayed = replay_features(pipe, latents, samples[0].timestep, [s.prompt for s in samples[:2]])
    assert max((a - b).abs().max().item() for a, b in zip(cap.result(), replayed)) <= 1e-5


def test_interrupted_synthesis_resumes_to_the_same_output(pipe, table, tmp_path):
    full = tmp_path / "full"
    synthesize(pipe, table, CFG, full, model_id="tiny")
    part = tmp_path / "part"
    synthesize(pipe, table, CFG, part, model_id="tiny", shards=[1])  # "killed" after one shard
    (part / "shard_00002.partial").mkdir()  # and half-way through another
    (part / "shard_00002.partial" / "junk").write_text("half-written")
    stats = synthesize(pipe, table, CFG, part, model_id="tiny")
    assert stats["resumed_shards"] == 1
    assert not (part / "shard_00002.partial").exists()
    assert _files(part) == _files(full)


def test_changed_table_starts_over(pipe, table, tmp_path):
    root = tmp_path / "synth"
    synthesize(pipe, table, CFG, root, model_id="tiny")
    other = sample_prompts(CLASSES[:4], PromptConfig(n=6, seed=1))
    stats = synthesize(pipe, other, CFG, root, model_id="tiny")
    assert stats["resumed_shards"] == 0 and len(complete_shards(root)) == 2


def test_corrupt_png_in_a_shard_is_named(pipe, table, tmp_path):
    root = tmp_path / "synth"
    synthesize(pipe, table.iloc[:5], CFG, root, model_id="tiny")
    png = next((root / "shard_00000" / "images").glob("*.png"))
    png.write_bytes(png.read_bytes()[:40])  # truncated
    with pytest.raises(ShardError, match=png.name):
        read_shard(root / "shard_00000")


def test_pseudo_labels_cover_every_prompted_class_and_resume(pipe, table, tmp_path):
    synth = tmp_path / "synth"
    synthesize(pipe, table, CFG, synth, model_id="tiny")
    torch.manual_seed(0)
    arch = DetectorArch(classes=CLASSES, widths=(8, 16, 16), fpn_channels=16, input_size=32)
    oracle = TorchvisionOracle(build_maskrcnn(arch).eval(), CLASSES, score_threshold=0.0, arch=arch)
    cfg = PseudoLabelConfig(score_threshold=0.0, batch_size=4)
    stats = pseudo_label(oracle, synth, tmp_path / "labels", cfg, oracle_id="tiny")
    labels = read_labels(tmp_path / "labels")
    assert len(labels) == sum(len(c.split("|")) for c in table["classes"]) == stats["class_instances"]
    row = labels.iloc[0]
    mask = load_mask(tmp_path / "labels", row["shard"], int(row["index"]), int(row["k"]))
    assert mask.shape == (32, 32) and mask.dtype == bool
    if not row["found"]:
        assert not mask.any()
    # an untrained detector with a threshold of 1.0 finds nothing: every class is recorded missing
    strict = pseudo_label(oracle, synth, tmp_path / "strict", PseudoLabelConfig(score_threshold=0.999), "tiny")
    assert strict["found_rate"] <= stats["found_rate"]
    before = _files(tmp_path / "labels")
    pseudo_label(oracle, synth, tmp_path / "labels", cfg, oracle_id="tiny")  # all shards done: no-op
    assert _files(tmp_path / "labels") == before
