"""The Protocol II segmenter: targets, loss parity with transformers, training, resume, save/load."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from groundiff.data.voc import IGNORE, VOCWriter, read_split
from groundiff.segmenter import (
    DataSource, SegmentationSet, SegmenterConfig, Segmenter, build_model, label_to_targets, maskformer_loss,
    semantic_scores, train_segmenter,
)
from groundiff.segmenter.train import _masked_focal_dice, augment, auxiliary_predictions, photometric_distort

CLASSES = ("square", "bar")


def tiny_cfg(**kw) -> SegmenterConfig:
    base = dict(backbone_widths=(8, 16), backbone_depths=(1, 1), stem_width=8, fpn_size=32, d_model=16,
                num_queries=6, decoder_layers=1, decoder_heads=2, decoder_ffn=32, input_size=32, steps=4,
                batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1)
    return SegmenterConfig(**{**base, **kw})


def make_voc(root: Path, n: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A tiny VOC dataset: a red square (label 1) and/or a blue bar (label 2) on grey, 255 borders."""
    rng = np.random.default_rng(seed)
    writer = VOCWriter(root)
    for i in range(n):
        image = np.full((size, size, 3), 110, np.uint8)
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size - 14, size=2)
        image[y:y + 12, x:x + 12] = (220, 30, 30)
        label[y:y + 12, x:x + 12] = 1
        if i % 2:
            image[:, 3:7] = (30, 30, 220)
            label[:, 3:7] = 2
        label[0, :] = IGNORE
        writer.add("train", f"img_{i:03d}", image, label)
    writer.close()
    return root


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


def test_label_to_targets_hand_made():
    label = np.array([[0, 0, 2], [0, 255, 2], [255, 255, 2]], np.uint8)
    masks, classes, valid = label_to_targets(label, num_labels=3)
    assert classes.tolist() == [0, 2]  # background is a class; 255 is none
    assert masks.dtype == torch.float32 and masks.shape == (2, 3, 3)
    assert masks[0].tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert masks[1].tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]
    assert valid.tolist() == [[True, True, True], [True, False, True], [False, False, True]]
    assert (masks.sum(0)[~valid] == 0).all()
    empty_masks, empty_classes, empty_valid = label_to_targets(np.full((2, 2), IGNORE, np.uint8), 3)
    assert empty_masks.shape == (0, 2, 2) and empty_classes.numel() == 0 and not empty_valid.any()
    with pytest.raises(ValueError, match="label 3"):
        label_to_targets(np.array([[3]], np.uint8), num_labels=3)


def test_loss_equals_transformers_loss_without_ignored_pixels():
    """Parity with MaskFormerForInstanceSegmentation's own loss (matching, CE, focal, dice)."""
    model = build_model(tiny_cfg(decoder_layers=3, dropout=0.0), CLASSES).eval()
    rng = np.random.default_rng(0)
    targets = [label_to_targets(rng.integers(0, 3, size=(32, 32)).astype(np.uint8), 3) for _ in range(3)]
    masks, classes = [t[0] for t in targets], [t[1] for t in targets]
    valid = torch.stack([t[2] for t in targets])
    x = torch.randn(3, 3, 32, 32)
    out = model(pixel_values=x, mask_labels=masks, class_labels=classes, output_hidden_states=True)
    ours, parts = maskformer_loss(model, out, masks, classes, valid)
    assert torch.allclose(ours, out.loss, rtol=1e-5)
    assert set(parts) == {"loss_cross_entropy", "loss_mask", "loss_dice"}
    # deep supervision: the last layer plus 2 intermediate ones, each through the decoder's final norm
    with_aux, _ = maskformer_loss(model, out, masks, classes, valid, aux=True)
    assert with_aux > ours
    aux = auxiliary_predictions(model, out)
    assert len(aux) == 2 and aux[0][0].shape == out.class_queries_logits.shape
    assert aux[0][1].shape == out.masks_queries_logits.shape


def test_ignored_pixels_do_not_change_the_mask_loss():
    logits, targets = torch.randn(2, 10), (torch.rand(2, 10) > 0.5).float()
    valid = torch.ones(2, 10)
    valid[:, 7:] = 0
    other = logits.clone()
    other[:, 7:] = torch.randn(2, 3) * 10
    assert all(torch.allclose(a, b) for a, b in zip(_masked_focal_dice(logits, targets, valid, 2),
                                                    _masked_focal_dice(other, targets, valid, 2)))


def test_augment_keeps_labels_aligned():
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:20, 4:12] = 255
    label = np.zeros((32, 32), np.uint8)
    label[8:20, 4:12] = 1
    cfg = tiny_cfg(input_size=48, scale_jitter=(0.6, 1.4))
    for seed in range(6):
        img, lab = augment(image, label, cfg, np.random.default_rng(seed))
        assert img.shape == (48, 48, 3) and lab.shape == (48, 48)
        assert set(np.unique(lab)) <= {0, 1, IGNORE}
        assert np.median(img[lab == 1]) == 255 and np.median(img[lab == 0]) == 0  # label follows the object
        assert (lab == 1).any()
    img, lab = augment(image, label, cfg, None)  # eval: plain resize
    assert (lab == 1).sum() == 12 * 18 and IGNORE not in lab


def test_photometric_distortion_changes_colours_not_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    outs = [photometric_distort(image, np.random.default_rng(seed)) for seed in range(40)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    changed = [not np.array_equal(o, image) for o in outs]
    assert 25 <= sum(changed) < 40  # some draws apply nothing (each distortion: probability 1/2)
    assert np.array_equal(photometric_distort(image, np.random.default_rng(3)), outs[3])  # seeded
    grey = np.repeat(rng.integers(0, 256, (16, 16, 1)), 3, axis=2).astype(np.uint8)
    for seed in range(20):  # no saturation to scale, no hue to turn: grey stays grey
        out = photometric_distort(grey, np.random.default_rng(seed)).astype(int)
        assert np.abs(out - out[..., :1]).max() <= 1
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:20, 4:12] = (200, 40, 40)
    label = np.zeros((32, 32), np.uint8)
    label[8:20, 4:12] = 1
    cfg = tiny_cfg(scale_jitter=(1.0, 1.0), hflip=False)
    for seed in range(6):
        img, lab = augment(image, label, cfg, np.random.default_rng(seed))
        img_d, lab_d = augment(image, label, cfg, np.random.default_rng(seed), distort=True)
        assert np.array_equal(img, image) and np.array_equal(lab_d, lab)  # not asked: untouched; labels never move
    assert any(not np.array_equal(augment(image, label, cfg, np.random.default_rng(s), distort=True)[0], image)
               for s in range(6))


def test_color_aug_distorts_the_sources_it_names():
    from groundiff.segmenter.train import _distorts

    real, generated = DataSource("real", "train"), DataSource("synth", "one", synthetic=True)
    assert [_distorts(tiny_cfg(color_aug=mode), s) for mode in ("none", "synthetic", "all") for s in (real, generated)] \
        == [False, False, False, True, True, True]
    with pytest.raises(ValueError, match="color_aug: 'yes' is not one of none, synthetic, all"):
        tiny_cfg(color_aug="yes")


def test_semantic_scores_drop_no_object():
    cls = torch.tensor([[[5.0, -5.0, 9.0], [-5.0, 5.0, -5.0]]])  # (1, Q=2, C=2 + no-object)
    masks = torch.tensor([[[[10.0, -10.0]], [[-10.0, 10.0]]]])  # (1, Q, 1, 2)
    scores = semantic_scores(cls, masks)
    assert scores.shape == (1, 2, 1, 2)
    assert scores[0].argmax(0).tolist() == [[0, 1]]


def test_training_learns_and_predicts_label_maps(voc, tmp_path):
    cfg = tiny_cfg(steps=40, batch_size=4, checkpoint_every=100, log_every=10, scale_jitter=(1.0, 1.0))
    logs = []
    seg, summary = train_segmenter([DataSource(str(voc), "train")], CLASSES, cfg, tmp_path / "work",
                                   on_log=logs.append, progress=False)
    assert [m["step"] for m in logs] == [10, 20, 30, 40]
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert summary["samples"] == {f"{voc}:train (SegmentationClass)": 8} and summary["final_loss"] == logs[-1]["loss"]
    images = [np.full((32, 32, 3), 110, np.uint8), np.full((24, 40, 3), 110, np.uint8)]
    preds = seg.predict(images)
    assert [p.shape for p in preds] == [(32, 32), (24, 40)]
    assert all(p.dtype == np.uint8 and p.max() <= len(CLASSES) for p in preds)
    with (tmp_path / "work" / "log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 41))


def test_resume_equals_uninterrupted_run(voc, tmp_path):
    sources = [DataSource(str(voc), "train"), DataSource(str(voc), "train", ignore_labels=(2,))]
    cfg = tiny_cfg(steps=4, checkpoint_every=2, log_every=1)
    full, _ = train_segmenter(sources, CLASSES, cfg, tmp_path / "full", progress=False)

    def crash(m):
        if m["step"] == 3:  # after the step-2 checkpoint, before the step-4 one
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmenter(sources, CLASSES, cfg, tmp_path / "resumed", on_log=crash, progress=False)
    resumed, summary = train_segmenter(sources, CLASSES, cfg, tmp_path / "resumed", progress=False)
    assert summary["resumed_from"] == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full/log.csv").read_text() == (tmp_path / "resumed/log.csv").read_text()
    # another config does not resume from this state
    _, other = train_segmenter(sources, CLASSES, replace(cfg, lr=5e-4), tmp_path / "resumed", progress=False)
    assert other["resumed_from"] == 0


def test_save_load_round_trip(voc, tmp_path):
    seg, _ = train_segmenter([DataSource(str(voc), "train")], CLASSES, tiny_cfg(steps=2), tmp_path / "w", progress=False)
    seg.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model/model.safetensors").is_file() and (tmp_path / "model/config.json").is_file()
    loaded = Segmenter.from_pretrained(tmp_path / "model")
    assert loaded.classes == CLASSES and loaded.labels == ("background", *CLASSES) and loaded.input_size == 32
    images = [image for _, image, _ in read_split(voc, "train")]
    assert all((p == q).all() for p, q in zip(seg.predict(images), loaded.predict(images)))
    weights = load_file(str(tmp_path / "model/model.safetensors"))
    assert torch.equal(weights["class_predictor.weight"], seg.model.class_predictor.weight.detach())
    # issue 27: a damaged weights file is one ModelFileError naming the folder and the cause
    from groundiff.core.checkpoint import ModelFileError

    weights_file = tmp_path / "model/model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"model: the segmenter saved there cannot be loaded \("):
        Segmenter.from_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="segmenter.json"):
        Segmenter.from_pretrained(tmp_path / "w")


def test_segmentation_set_concatenates_and_hides_labels(voc):
    data = SegmentationSet([DataSource(str(voc), "train"), DataSource(str(voc), "train", ignore_labels=(2,))])
    assert len(data) == 16
    _, first = data.load(1)
    _, hidden = data.load(9)  # the same image from the second source
    assert 2 in first and 2 not in hidden and (hidden[first == 2] == IGNORE).all()


def test_source_shares_set_the_sampling_probabilities(voc):
    from groundiff.segmenter.train import _batch

    # 8 samples each; the first source gets 75% of the draws, the second (no share) the rest
    data = SegmentationSet([DataSource(str(voc), "train", share=0.75), DataSource(str(voc), "train", ignore_labels=(2,))])
    np.testing.assert_allclose(data.probabilities, [0.75 / 8] * 8 + [0.25 / 8] * 8)
    assert SegmentationSet([DataSource(str(voc), "train")]).probabilities is None  # uniform, as before
    # the batch draw follows them (deterministic in (seed, step))
    a = _batch(data, tiny_cfg(), 3, len(CLASSES) + 1, "cpu")[0]
    b = _batch(data, tiny_cfg(), 3, len(CLASSES) + 1, "cpu")[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="sum to"):
        SegmentationSet([DataSource(str(voc), "train", share=0.5)])  # alone, it must be 1
    with pytest.raises(ValueError, match="share must be"):
        DataSource(str(voc), "train", share=1.5)


def test_source_probabilities_from_shares_and_sizes():
    from groundiff.segmenter.train import source_probabilities

    # 0.5 to the first 2 items; the other half split by size over the 3 without a share; empty sources get 0
    np.testing.assert_allclose(source_probabilities([0.5, None, None], [2, 3, 0]), [0.25, 0.25] + [0.5 / 3] * 3)
    assert source_probabilities([None, None], [4, 5]) is None
    with pytest.raises(ValueError, match="synthetic has a share but no samples"):
        source_probabilities([0.5, None], [0, 3], ["synthetic", "real"])
    with pytest.raises(ValueError, match="sum to 1.2"):
        source_probabilities([0.6, 0.6], [2, 2])


@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_pretrained_backbone_weights_are_loaded(tmp_path, kind):
    """`backbone` = a saved checkpoint folder (a hub id works the same): weights land in the encoder."""
    from transformers import ResNetBackbone, ResNetConfig, SwinBackbone, SwinConfig

    if kind == "resnet":
        source = ResNetBackbone(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                             out_features=["stage1", "stage2"]))
    else:
        # MaskFormer always takes Swin's four stages
        source = SwinBackbone(SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=32,
                                         window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"]))
    source.save_pretrained(tmp_path / "backbone")
    model = build_model(tiny_cfg(backbone=str(tmp_path / "backbone")), CLASSES)
    encoder = model.model.pixel_level_module.encoder.state_dict()
    src = source.state_dict()
    if kind == "resnet":
        pairs = {"embedder.embedder.convolution.weight": "embedder.embedder.convolution.weight"}
    else:  # MaskFormerSwin keeps transformers 4.x names
        pairs = {"swin.embeddings.patch_embeddings.projection.weight": "model.embeddings.patch_embeddings.projection.weight",
                 "swin.encoder.layers.1.blocks.0.attention.q_proj.weight":
                     "model.encoder.layers.1.blocks.0.attention.self.query.weight",
                 "swin.encoder.layers.1.blocks.0.mlp.fc2.bias": "model.encoder.layers.1.blocks.0.output.dense.bias"}
    assert all(torch.equal(encoder[ours], src[theirs]) for theirs, ours in pairs.items())
    assert model(pixel_values=torch.randn(2, 3, 64, 64)).masks_queries_logits.shape[:2] == (2, 6)


def test_training_pins_its_cpu_threads_and_restores_them(voc, tmp_path):
    """The thread count is part of the result (float sums in another order), so training pins it."""
    before, seen = torch.get_num_threads(), []
    train_segmenter([DataSource(str(voc), "train")], CLASSES, tiny_cfg(steps=2, num_threads=2), tmp_path / "w",
                    on_log=lambda m: seen.append(torch.get_num_threads()), progress=False)
    assert seen == [2, 2] and torch.get_num_threads() == before


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of 32"):
        SegmenterConfig(fpn_size=48)
    with pytest.raises(ValueError, match="decoder_heads"):
        SegmenterConfig(d_model=30, decoder_heads=4)
    with pytest.raises(ValueError, match="scale_jitter"):
        SegmenterConfig(scale_jitter=(1.2, 0.8))
    with pytest.raises(ValueError, match="num_threads"):
        SegmenterConfig(num_threads=-1)
