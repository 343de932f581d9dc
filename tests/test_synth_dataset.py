"""Label maps from grounding logits, and the synthetic VOC dataset: content, resume, determinism."""

import pytest
import torch

from groundiff.data.voc import IGNORE, read_split
from groundiff.diffusion.pipeline import SamplingConfig, load_pipeline
from groundiff.method.grounding import GroundingConfig, GroundingModule
from groundiff.method.synth_dataset import SynthDatasetConfig, label_map, synth_dataset, synth_prompts
from groundiff.worlds.base import make_split
from groundiff.worlds.shapes import CLASSES
from groundiff.testing import tiny_shapes_pipeline


def _logit(p):
    return torch.logit(torch.tensor(p))


def test_label_map_threshold_overlap_and_ignore():
    # two prompted classes (labels 5 and 2) over a 1x4 image
    probs = torch.tensor([[[0.9, 0.7, 0.2, 0.45]],   # class label 5
                          [[0.6, 0.8, 0.1, 0.30]]])  # class label 2
    logits = torch.logit(probs)
    # pixel 0: both confident, 5 wins; pixel 1: 2 wins; pixel 2: nobody -> background
    assert label_map(logits, [5, 2], 0.5, 0.5).tolist() == [[5, 2, 0, 0]]
    # with an ignore band [0.4, 0.5): pixel 3 (best 0.45) becomes 255
    assert label_map(logits, [5, 2], 0.5, 0.4).tolist() == [[5, 2, 0, IGNORE]]
    # a class prompted twice: both rows carry the same label
    assert label_map(logits, [3, 3], 0.5, 0.5).tolist() == [[3, 3, 0, 0]]


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="ignore_below <= threshold"):
        SynthDatasetConfig(threshold=0.4, ignore_below=0.6)


def test_prompts_cover_seen_and_unseen_with_kinds():
    cfg = SynthDatasetConfig(n_one=200, n_two=100, n_complicated=50, attributes=["red", "blue"],
                             contexts=["on a gray background"])
    table = synth_prompts(CLASSES, cfg)
    assert table["kind"].value_counts().to_dict() == {"one": 200, "two": 100, "complicated": 50}
    assert set("|".join(table["classes"]).split("|")) == set(CLASSES)
    comp = table[table["kind"] == "complicated"]["prompt"]
    assert all(p.endswith("on a gray background") and (" red " in p or " blue " in p) for p in comp)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    tiny_shapes_pipeline(folder)
    pipe = load_pipeline(folder)
    torch.manual_seed(0)
    cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32, d_model=32,
                                           n_heads=2, ffn_dim=64, n_layers=1)
    return pipe, GroundingModule(cfg).eval()


CFG = SynthDatasetConfig(n_one=3, n_two=3, n_complicated=2, attributes=["red"], shard_size=3,
                         threshold=0.5, ignore_below=0.3,
                         sampling=SamplingConfig(steps=2, guidance_scale=3.0, batch_size=2))


def test_dataset_is_voc_layout_and_resumes_identically(models, tmp_path):
    pipe, module = models
    split = make_split("shapes", CLASSES, ["ring", "heart", "arrow"])
    stats = synth_dataset(pipe, module, split, CFG, tmp_path / "full", ["a", "b"])
    assert stats["images"] == {"one": 3, "two": 3, "complicated": 2}
    samples = list(read_split(tmp_path / "full", "two"))
    assert len(samples) == 3 and samples[0][1].shape == (32, 32, 3)
    assert samples[0][2].max() <= 10 or IGNORE in samples[0][2]
    # interrupted after shard 1, then resumed: byte-identical to the uninterrupted run
    synth_dataset(pipe, module, split, CFG, tmp_path / "part", ["a", "b"], shards=[1])
    resumed = synth_dataset(pipe, module, split, CFG, tmp_path / "part", ["a", "b"])
    assert resumed["resumed_shards"] == 1
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "part") == files(tmp_path / "full")
    # other models -> start over
    again = synth_dataset(pipe, module, split, CFG, tmp_path / "part", ["a", "c"])
    assert again["resumed_shards"] == 0


def test_where_the_module_lives_is_not_part_of_the_fingerprint():
    """synth_dataset.grounding_dir names a folder; the module enters the fingerprint by content (model ids),
    so the param's default leaves the fingerprint, and the shipped dataset's marker, as they were."""
    from dataclasses import replace

    from groundiff.method.synth_dataset import _fingerprint

    table = synth_prompts(CLASSES, CFG)
    ids = ["pipe@1", "models/grounding@2"]
    assert _fingerprint(table, CFG, ids) == _fingerprint(table, replace(CFG, grounding_dir="models/other"), ids)
    assert _fingerprint(table, CFG, ids) != _fingerprint(table, CFG, ["pipe@1", "models/grounding@3"])
