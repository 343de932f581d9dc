"""Training the grounding module on real synthesize + pseudo_label outputs of a tiny shapes pipeline.

The oracle is an untrained tiny Mask R-CNN whose mask head is biased to "all foreground": it
finds every `star` (box-shaped masks) and never a `ring` or `heart` — a fixed mix of found and
missed classes. `heart` plays the unseen class.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from groundiff.core.params import ParamsError
from groundiff.data.prompts import PromptConfig, sample_prompts
from groundiff.diffusion.capture import replay_features
from groundiff.diffusion.pipeline import SamplingConfig, load_pipeline
from groundiff.method.grounding import GroundingModule
from groundiff.method.grounding.train import (
    TrainConfig, collate, grounding_loss, load_training_set, read_loss_log, replay_batch, train_grounding,
)
from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn
from groundiff.method.pseudo_label import PseudoLabelConfig, load_mask, pseudo_label, read_labels
from groundiff.diffusion.text import class_embeddings
from groundiff.core.params import Params
from groundiff.worlds.active import World
from groundiff.method.synthesis import SynthesisConfig, synthesize
from groundiff.worlds.shapes_diffusion import DiffusionConfig, assemble_pipeline, build_components

from conftest import tiny_params, write_params

SEEN = ("star", "ring")  # heart: unseen
#: a small module, so that a step takes ~30 ms
TINY = TrainConfig(lr=1e-3, batch_size=4, steps=6, bucket_widths=(4, 8, 8), d_model=32, n_heads=2,
                   ffn_dim=64, n_layers=1, checkpoint_every=2, log_every=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny shapes pipeline (16 px), 12 synthesized images and their pseudo-labels."""
    root = tmp_path_factory.mktemp("grounding_world")
    cfg = DiffusionConfig(image_size=16, vae_channels=8, block_out_channels=(8, 16, 16), attention_heads=2,
                          text_width=16)
    assemble_pipeline(build_components(cfg), 1.0).save_pretrained(root / "pipe")
    pipe = load_pipeline(root / "pipe")
    table = sample_prompts(("star", "ring", "heart"), PromptConfig(n=12, seed=0))
    sampling = SamplingConfig(steps=2, guidance_scale=2.0, batch_size=12)
    synthesize(pipe, table, SynthesisConfig(sampling=sampling, shard_size=6), root / "synth", "tiny")
    arch = DetectorArch(classes=("star", "ring", "heart"), widths=(8, 16, 16), fpn_channels=16)
    torch.manual_seed(0)
    detector = build_maskrcnn(arch).eval()
    detector.roi_heads.mask_predictor.mask_fcn_logits.bias.data.fill_(5.0)  # masks fill their boxes
    oracle = TorchvisionOracle(detector, arch.classes, score_threshold=0.0, arch=arch)
    pseudo_label(oracle, root / "synth", root / "labels", PseudoLabelConfig(score_threshold=0.0))
    return root


@pytest.fixture(scope="module")
def pipe(world):
    return load_pipeline(world / "pipe")


def test_the_fixture_has_found_missed_and_unseen_classes(world):
    labels = read_labels(world / "labels")
    found = labels.groupby("class")["found"].mean().to_dict()
    assert found == {"heart": 0.0, "ring": 0.0, "star": 1.0}
    assert load_mask(world / "labels", *labels[labels.found].iloc[0][["shard", "index", "k"]]).any()


# --- the loss, by hand ----------------------------------------------------------------------------


def softplus(x: float) -> float:  # BCE with logits x against target 0; against 1 it is softplus(-x)
    return math.log1p(math.exp(x))


def test_loss_by_hand_for_both_strategies():
    # 2 images x 2 class slots, 2x2 maps.
    # (0, 0) found, logits 0, target all 1      -> ln 2 per pixel
    # (0, 1) missed, logits 2, target (stale) 1 -> normal: target forced to 0, softplus(2)
    # (1, 0) found, logits -1, half the target 1 -> (softplus(1) + softplus(-1)) / 2
    # (1, 1) padding, logits 100                -> never counts
    logits = torch.zeros(2, 2, 2, 2)
    logits[0, 1], logits[1, 0], logits[1, 1] = 2.0, -1.0, 100.0
    targets = torch.zeros(2, 2, 2, 2)
    targets[0, 0], targets[0, 1], targets[1, 0, 0] = 1.0, 1.0, 1.0
    found = torch.tensor([[True, False], [True, False]])
    class_mask = torch.tensor([[True, True], [True, False]])
    a, b, c = math.log(2), softplus(2.0), (softplus(1.0) + softplus(-1.0)) / 2

    loss, n = grounding_loss(logits, targets, found, class_mask, "without_zero_masks")
    assert n == 2 and loss.item() == pytest.approx((a + c) / 2, rel=1e-6)  # / batch size 2
    loss, n = grounding_loss(logits, targets, found, class_mask, "normal")
    assert n == 3 and loss.item() == pytest.approx((a + b + c) / 2, rel=1e-6)

    # nothing found: without zero masks has nothing to learn (and no gradient)
    logits.requires_grad_(True)
    loss, n = grounding_loss(logits, targets, torch.zeros(2, 2, dtype=torch.bool), class_mask, "without_zero_masks")
    loss.backward()
    assert n == 0 and loss.item() == 0.0 and not logits.grad.any()


def test_bad_strategy_is_a_clear_error(project):
    with pytest.raises(ValueError, match="without_zero_masks.*normal"):
        TrainConfig(strategy="zero_masks")
    with pytest.raises(ValueError, match="unknown training strategy"):
        grounding_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, dtype=torch.bool),
                       torch.ones(1, 1, dtype=torch.bool), "zeros")
    params = tiny_params()
    params["train_grounding"]["strategy"] = "zero_masks"
    write_params(project, params)
    with pytest.raises(ParamsError, match="train_grounding.*unknown training strategy"):
        Params().section("train_grounding")


# --- data -----------------------------------------------------------------------------------------


def test_unseen_classes_never_reach_training(world, pipe, tmp_path):
    samples, stats = load_training_set(world / "synth", world / "labels", SEEN)
    assert all(c in SEEN for s in samples for c in s.classes)
    labels = read_labels(world / "labels")
    assert stats["instances_dropped_unseen"] == int((labels["class"] == "heart").sum()) > 0
    # an image of a star and a heart keeps its star, with the star's own mask and found flag
    mixed = labels.groupby(["shard", "index"]).filter(lambda g: set(g["class"]) == {"star", "heart"})
    shard, index = mixed.iloc[0][["shard", "index"]]
    star_k = int(mixed[mixed["class"] == "star"]["k"].iloc[0])
    sample = next(s for s in samples if (s.shard, s.index) == (shard, index))
    assert sample.classes == ["star"] and sample.found.tolist() == [True]
    assert torch.equal(sample.masks[0], torch.from_numpy(load_mask(world / "labels", shard, index, star_k)))
    # images prompting only unseen classes are gone; seen_only=False would keep them
    heart_only = labels.groupby(["shard", "index"]).filter(lambda g: set(g["class"]) == {"heart"})
    assert len(samples) == stats["images_read"] - heart_only[["shard", "index"]].drop_duplicates().shape[0]
    everything, _ = load_training_set(world / "synth", world / "labels", None)
    assert {c for s in everything for c in s.classes} == {"star", "ring", "heart"}
    # the module is never even given an unseen class's embedding
    cfg = replace(TINY, steps=1, strategy="normal")  # normal: ring (never found) is kept too
    _, metrics = train_grounding(pipe, world / "synth", world / "labels", SEEN, cfg, tmp_path)
    assert metrics["classes"] == ["ring", "star"]
    # standardized embeddings: the statistics come from the training (seen) classes alone
    cfg = replace(cfg, standardize_text=True)
    model, _ = train_grounding(pipe, world / "synth", world / "labels", SEEN, cfg, tmp_path / "std")
    seen_table = class_embeddings(pipe, ["ring", "star"], cfg.template)
    torch.testing.assert_close(model.text_shift, seen_table.mean(0))
    assert model.text_shift.shape == (16,) and model.text_scale > 0


def test_batches_mixing_capture_timesteps_replay_per_timestep(world, pipe):
    samples, _ = load_training_set(world / "synth", world / "labels", SEEN)
    batch = collate(samples[:3], {"star": 0, "ring": 1})
    mixed = replay_batch(pipe, batch.latents, [1, 11, 1], batch.prompts)
    for i, t in enumerate([1, 11, 1]):
        alone = replay_features(pipe, batch.latents[i:i + 1], t, batch.prompts[i:i + 1])
        assert max((m[i] - a[0]).abs().max().item() for m, a in zip(mixed, alone)) <= 1e-5


# --- training -------------------------------------------------------------------------------------


def test_loss_decreases_and_module_saves_and_loads(world, pipe, tmp_path):
    cfg = replace(TINY, steps=40, checkpoint_every=40)
    model, metrics = train_grounding(pipe, world / "synth", world / "labels", SEEN, cfg, tmp_path / "work")
    losses = [v for _, v in read_loss_log(tmp_path / "work/log.csv")]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    # without zero masks: only images with a found (star) class are used
    assert metrics["images_used"] == metrics["images_with_kept_class"] - metrics["images_skipped_nothing_found"]
    assert metrics["images_skipped_nothing_found"] > 0 and not model.training

    model.save_pretrained(tmp_path / "module")
    loaded = GroundingModule.from_pretrained(tmp_path / "module")
    samples, _ = load_training_set(world / "synth", world / "labels", SEEN)
    batch = collate(samples[:4], {"ring": 0, "star": 1})
    feats = replay_batch(pipe, batch.latents, batch.timesteps, batch.prompts)
    emb = torch.randn(4, batch.class_ids.shape[1], 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, emb, batch.class_mask), model(feats, emb, batch.class_mask))


def test_missed_classes_without_zero_masks_vs_normal(world, pipe, tmp_path):
    # every label missing: without zero masks there is nothing to learn, normal learns zeros
    labels = tmp_path / "labels"
    shutil.copytree(world / "labels", labels)
    for csv in labels.glob("shard_*/labels.csv"):
        table = pd.read_csv(csv)
        table.assign(found=False).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="nothing to learn.*strategy 'normal'"):
        train_grounding(pipe, world / "synth", labels, SEEN, TINY, tmp_path / "a")
    model, metrics = train_grounding(pipe, world / "synth", labels, SEEN, replace(TINY, strategy="normal"),
                                     tmp_path / "b")
    assert metrics["images_used"] == metrics["images_with_kept_class"] and metrics["instances_found"] == 0
    assert math.isfinite(metrics["final_loss"])


def test_training_resumes_exactly(world, pipe, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_step_3(m):
        if m["step"] == 3:
            raise Stop

    args = (pipe, world / "synth", world / "labels", SEEN)
    with pytest.raises(Stop):
        train_grounding(*args, TINY, tmp_path / "a", on_log=stop_at_step_3)  # state saved at step 2
    resumed, _ = train_grounding(*args, TINY, tmp_path / "a")
    fresh, _ = train_grounding(*args, TINY, tmp_path / "b")
    for (key, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    assert [s for s, _ in read_loss_log(tmp_path / "a/log.csv")] == [1, 2, 3, 4, 5, 6], "no duplicate rows"
    assert read_loss_log(tmp_path / "a/log.csv") == read_loss_log(tmp_path / "b/log.csv")

    # a state written for another config is not resumed from
    other = replace(TINY, lr=3e-3)
    again, _ = train_grounding(*args, other, tmp_path / "a")
    fresh_other, _ = train_grounding(*args, other, tmp_path / "c")
    for a, b in zip(again.state_dict().values(), fresh_other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_released_codes_options_train_resume_exactly_and_save(world, pipe, tmp_path):
    """spectral_norm biggan (u0 moves every training step and travels in the resumable state and
    the saved module) and decoder_init cloned, through the real training loop."""
    from groundiff.method.grounding.model import PowerIterationConv2d

    class Stop(Exception):
        pass

    def stop_at_step_3(m):
        if m["step"] == 3:
            raise Stop

    cfg = replace(TINY, spectral_norm="biggan", decoder_init="cloned", n_layers=2)
    args = (pipe, world / "synth", world / "labels", SEEN)
    with pytest.raises(Stop):
        train_grounding(*args, cfg, tmp_path / "a", on_log=stop_at_step_3)
    resumed, _ = train_grounding(*args, cfg, tmp_path / "a")
    fresh, _ = train_grounding(*args, cfg, tmp_path / "b")
    for (key, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    conv = fresh.mix_convs[0].conv1
    assert isinstance(conv, PowerIterationConv2d) and float(conv.sv0) != 1.0  # trained: sigma recorded
    assert not torch.equal(fresh.layers[0].linear1.weight, fresh.layers[1].linear1.weight)  # cloned, then trained
    fresh.save_pretrained(tmp_path / "module")
    loaded = GroundingModule.from_pretrained(tmp_path / "module")
    assert (loaded.config.spectral_norm, loaded.config.decoder_init) == ("biggan", "cloned")
    assert torch.equal(loaded.mix_convs[0].conv1.u0, conv.u0)


# --- the stage ------------------------------------------------------------------------------------


def test_stage_writes_module_metrics_and_plot(project, world):
    from groundiff.stages import train_grounding as stage

    shutil.copytree(world / "pipe", project / "worlds/shapes/diffusion")
    shutil.copytree(world / "synth", project / "data/synth/train")
    shutil.copytree(world / "labels", project / "data/synth/train_labels")
    params = tiny_params()
    # split 1 holds out ring and heart: the stage trains on star only
    params["train_grounding"].update(steps=3, batch_size=4, bucket_widths=[4, 8, 8], d_model=32, n_heads=2,
                                     ffn_dim=64, n_layers=1, checkpoint_every=2, log_every=1)
    write_params(project, params)
    with pytest.raises(ValueError, match="standardize_text: false"):  # one class: nothing to standardise against
        stage.main()
    assert not (project / "models/grounding").exists()
    params["train_grounding"]["standardize_text"] = False
    write_params(project, params)
    stage.main()
    model = GroundingModule.from_pretrained(project / "models/grounding")
    assert model.config.d_model == 32 and not (project / "models/grounding.partial").exists()
    assert not (project / "models/grounding_state").exists()
    metrics = json.loads((project / "metrics/train_grounding.json").read_text())
    assert metrics["classes"] == ["star"] and metrics["steps"] == 3 and metrics["strategy"] == "without_zero_masks"
    plot = pd.read_csv(project / "metrics/train_grounding_loss.csv")
    assert list(plot.columns) == ["step", "loss"] and plot["step"].tolist() == [1, 2, 3]


def test_a_batch_larger_than_the_data_is_a_warning_and_recorded_truthfully(world, pipe, tmp_path):
    """Issue 27, class 5: batch_size 64 over the ~12 training images holds them all, and says so."""
    cfg = replace(TINY, steps=1, batch_size=64, strategy="normal")
    with pytest.warns(UserWarning, match=r"train_grounding.batch_size is 64, but there are only \d+ training images"):
        _, metrics = train_grounding(pipe, world / "synth", world / "labels", SEEN, cfg, tmp_path)
    assert metrics["batch_size"] == metrics["images_used"] < 64 and metrics["batch_size_requested"] == 64
    _, exact = train_grounding(pipe, world / "synth", world / "labels", SEEN, replace(cfg, batch_size=4),
                               tmp_path / "b")
    assert exact["batch_size"] == 4 and "batch_size_requested" not in exact
