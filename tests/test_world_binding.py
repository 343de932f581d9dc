"""The binding diagnostic (issue 26) on a tiny random shapes-world pipeline: class-word cosine on real and
constructed text encoders, DAAM IoU where the answer is known, per-layer attention inside vs outside."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import SamplingConfig, generate, image_size, load_pipeline
from groundiff.eval.metrics import pairwise_iou
from groundiff.testing import tiny_shapes_pipeline
from groundiff.worlds.binding import (DAAM_ROW, BindingConfig, _iou, attention_binding, auroc, bars_met,
                                      binding_prompts, binding_report, class_word_cosine)
from groundiff.worlds.oracle import Detections
from groundiff.worlds.shapes import CLASSES

NAMES = ("star", "ring", "heart")
CFG = BindingConfig(per_class=2, sampling=SamplingConfig(steps=3, guidance_scale=4.0, batch_size=8))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_shapes") / "diffusion"
    tiny_shapes_pipeline(folder)
    return load_pipeline(folder)


@pytest.fixture(scope="module")
def traced(pipe):
    """The images of `binding_prompts(NAMES, CFG)` and DAAM's heat maps of their class words, as
    attention_binding makes them (one batch, one generation)."""
    table = binding_prompts(NAMES, CFG)
    prompts, seeds = [p for _, p, _ in table], [s for _, _, s in table]
    with DAAMTrace(pipe) as trace:
        images = generate(pipe, prompts, seeds, CFG.sampling)
    heat = trace.heat_maps(prompts, [[n] for n, _, _ in table], image_size(pipe))
    return table, images, [m[0].numpy() for m in heat]


class ImageOracle:
    """An oracle that knows each image's answer in advance: {image bytes: (class, score, mask)}."""

    classes = CLASSES

    def __init__(self, answers: dict[bytes, tuple[str, float, np.ndarray]]) -> None:
        self.answers = answers

    def detect(self, images):
        out = []
        for im in images:
            answer = self.answers.get(np.ascontiguousarray(im).tobytes())
            if answer is None:
                out.append(Detections([], np.zeros(0, np.float32), np.zeros((0, *im.shape[:2]), bool)))
            else:
                name, score, mask = answer
                out.append(Detections([name], np.array([score], np.float32), mask[None]))
        return out


class CentreOracle:
    """Finds every class, each with the same central square as its mask."""

    classes = CLASSES

    def detect(self, images):
        h, w = images[0].shape[:2]
        mask = np.zeros((h, w), bool)
        mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
        n = len(self.classes)
        return [Detections(list(self.classes), np.linspace(0.9, 0.5, n, dtype=np.float32),
                           np.repeat(mask[None], n, 0)) for _ in images]


# --- 1. the text encoder ----------------------------------------------------------------------


def test_identical_classes_have_cosine_one(pipe):
    out = class_word_cosine(pipe, ["star", "star"])
    for key in ("class_word", "eos", "input_embedding"):
        assert out[key]["mean"] == pytest.approx(1.0, abs=1e-5)
        assert out[key]["min"] == pytest.approx(1.0, abs=1e-5)


def test_cosine_is_the_mean_over_pairs_of_the_class_word_states(pipe):
    classes = list(CLASSES)
    out = class_word_cosine(pipe, classes)
    tok = pipe.tokenizer
    values = []
    with torch.no_grad():
        states = []
        for name in classes:
            prompt = f"a photograph of a {name}"
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
            pos = [i for i, t in enumerate(ids[0].tolist()) if t in tok(name, add_special_tokens=False).input_ids]
            states.append(pipe.text_encoder(ids)[0][0, pos].mean(0))
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            values.append(torch.nn.functional.cosine_similarity(states[i], states[j], dim=0).item())
    assert out["class_word"]["mean"] == pytest.approx(np.mean(values), abs=1e-5)
    assert out["class_word"]["min"] == pytest.approx(min(values), abs=1e-5)
    assert out["class_word"]["max"] == pytest.approx(max(values), abs=1e-5)
    assert set(out["class_word"]["closest_pair"]) <= set(classes)
    for key in ("eos", "input_embedding"):
        assert -1.0 - 1e-6 <= out[key]["min"] <= out[key]["mean"] <= out[key]["max"] <= 1.0 + 1e-6


def test_a_text_encoder_with_orthogonal_class_states_gives_cosine_zero(pipe):
    """A real CLIPTextModel with no transformer layer, built so that its class words' states are
    orthogonal: zero-mean, disjoint token embeddings, no position embedding (the final LayerNorm only
    rescales a zero-mean vector)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = pipe.tokenizer
    classes = list(CLASSES)
    dim = 2 * len(classes)
    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=pipe.text_encoder.config.vocab_size, hidden_size=dim, intermediate_size=dim,
        num_hidden_layers=0, num_attention_heads=1, max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        encoder.get_submodule("embeddings.position_embedding").weight.zero_()
        weight = encoder.get_input_embeddings().weight
        weight.zero_()
        for k, name in enumerate(classes):
            (token,) = tok(name, add_special_tokens=False).input_ids
            weight[token, 2 * k], weight[token, 2 * k + 1] = 1.0, -1.0
    constructed = type("Pipe", (), {"tokenizer": tok, "text_encoder": encoder.eval(), "device": torch.device("cpu")})()
    out = class_word_cosine(constructed, classes)
    assert abs(out["class_word"]["mean"]) < 1e-6 and abs(out["class_word"]["max"]) < 1e-6
    assert abs(out["input_embedding"]["mean"]) < 1e-6


def test_cosine_needs_two_classes_and_known_words(pipe):
    with pytest.raises(ValueError, match="at least two classes"):
        class_word_cosine(pipe, ["star"])
    with pytest.raises(ValueError, match="unknown to this text encoder"):
        class_word_cosine(pipe, ["star", "dodecahedron"])


# --- 2. the cross-attention -------------------------------------------------------------------


def test_tracing_every_layer_changes_neither_images_nor_daam_maps(pipe):
    table = binding_prompts(NAMES, CFG)
    prompts, seeds, words = [p for _, p, _ in table], [s for _, _, s in table], [[n] for n, _, _ in table]
    size = image_size(pipe)
    with DAAMTrace(pipe) as daam_only:
        plain = generate(pipe, prompts, seeds, CFG.sampling)
    with DAAMTrace(pipe, all_layers=True) as every:
        traced = generate(pipe, prompts, seeds, CFG.sampling)
    np.testing.assert_array_equal(traced, plain)
    assert not any("Recorder" in type(p).__name__ for p in pipe.unet.attn_processors.values())
    # the shapes UNet: cross-attention in down 1-2 (1 each), mid (1), up 0-1 (2 each); DAAM skips 8x8 and mid
    assert len(every.recorded) == 7 and len(every.layers) == 3 and set(every.layers) <= set(every.recorded)
    for a, b in zip(daam_only.heat_maps(prompts, words, size), every.heat_maps(prompts, words, size)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # DAAM's map is the normalised mean of its layers' maps (bicubic upsampling is linear)
    layers = every.layer_maps(prompts, words, size)
    for per_layer, heat in zip(layers, every.heat_maps(prompts, words, size)):
        assert set(per_layer) == set(every.recorded)
        mean = torch.stack([per_layer[n] for n in every.layers]).mean(0)  # (1, H, W)
        lo, hi = mean.min(), mean.max()
        torch.testing.assert_close((mean - lo) / (hi - lo), heat, atol=1e-5, rtol=1e-5)


def test_daam_iou_is_100_against_its_own_mask_and_0_against_the_complement(pipe, traced):
    table, images, heat = traced
    exact = {im.tobytes(): (name, 0.9, h > CFG.daam_threshold) for (name, _, _), im, h in zip(table, images, heat)}
    inverse = {key: (name, score, ~mask) for key, (name, score, mask) in exact.items()}
    hit = attention_binding(pipe, ImageOracle(exact), NAMES, CFG)
    assert hit["scored"] == 6 and hit["skipped"] == 0 and hit["daam_miou"] == pytest.approx(100.0)
    assert all(v["daam_miou"] == pytest.approx(100.0) for v in hit["per_class"].values())
    # DAAM's own map separates its own mask perfectly: everything inside is above the threshold
    assert hit["layers"][DAAM_ROW]["auroc"] == pytest.approx(1.0)
    assert hit["layers"][DAAM_ROW]["inside_gt_outside"] == 1.0
    miss = attention_binding(pipe, ImageOracle(inverse), NAMES, CFG)
    assert miss["daam_miou"] == pytest.approx(0.0)
    assert miss["layers"][DAAM_ROW]["auroc"] == pytest.approx(0.0)
    # the per-layer maps do not depend on the oracle: inside and outside swap with the mask
    for name, row in hit["layers"].items():
        if name != DAAM_ROW:
            assert row["auroc"] + miss["layers"][name]["auroc"] == pytest.approx(1.0, abs=1e-6)


def test_images_the_oracle_misses_are_counted_and_skipped(pipe, traced):
    table, images, heat = traced
    answers = {}
    for (name, _, _), im, h in zip(table, images, heat):
        if name == "ring":
            continue  # never found
        # the first heart is found with a score under the threshold: skipped as well
        score = 0.01 if name == "heart" and not any(a[0] == "heart" for a in answers.values()) else 0.9
        answers[im.tobytes()] = (name, score, h > CFG.daam_threshold)
    out = attention_binding(pipe, ImageOracle(answers), NAMES, CFG)
    assert (out["images"], out["scored"], out["skipped"]) == (6, 3, 3)
    assert out["per_class"]["ring"] == {"scored": 0, "skipped": 2, "daam_miou": None}
    assert out["per_class"]["heart"]["scored"] == 1 and out["per_class"]["heart"]["skipped"] == 1
    assert out["daam_miou"] == pytest.approx(100.0)
    assert sum(not r["found"] for r in out["per_image"]) == 3


def test_layer_metrics_have_the_right_keys_ranges_and_counts(pipe):
    cfg = replace(CFG, sampling=replace(CFG.sampling, batch_size=4))  # two batches, each traced on its own
    out = attention_binding(pipe, CentreOracle(), NAMES, cfg)
    assert out["n_layers"] == 7 and len(out["layers"]) == 8  # 7 layers + the DAAM heat map
    assert 0.0 <= out["daam_miou"] <= 100.0 and out["scored"] == 6
    sides = {n: r["resolution"] for n, r in out["layers"].items()}
    assert sides[DAAM_ROW] == 32 and {sides[n] for n in out["layers"] if n != DAAM_ROW} == {16, 8}
    assert sum(r["daam"] for n, r in out["layers"].items() if n != DAAM_ROW) == 3
    for name, row in out["layers"].items():
        assert 0.0 <= row["inside"] <= 1.0 and 0.0 <= row["outside"] <= 1.0, name  # attention probability per step
        assert 0.0 <= row["inside_gt_outside"] <= 1.0 and 0.0 <= row["auroc"] <= 1.0, name
    count = sum(r["inside"] > r["outside"] for n, r in out["layers"].items() if n != DAAM_ROW)
    assert out["layers_inside_gt_outside"] == count
    report = binding_report({"cosine": class_word_cosine(pipe, NAMES), "attention": out})
    assert "DAAM mIoU" in report and f"{count} / 7" in report and "down_blocks.1.attentions.0" in report
    assert set(bars_met({"attention": out})) == {"class_word_cosine_mean_at_most", "daam_miou_at_least",
                                                 "layers_inside_gt_outside"}
    assert bars_met({"attention": out})["class_word_cosine_mean_at_most"] is None


def test_the_oracle_must_know_every_class(pipe):
    oracle = CentreOracle()
    oracle.classes = ("star",)
    with pytest.raises(ValueError, match="cannot detect"):
        attention_binding(pipe, oracle, NAMES, CFG)


def test_prompts_are_seeded_and_extend_with_per_class():
    small = binding_prompts(NAMES, BindingConfig(per_class=2))
    big = binding_prompts(NAMES, BindingConfig(per_class=5))
    assert [r for r in big if r[0] == "ring"][:2] == [r for r in small if r[0] == "ring"]
    assert len({s for _, _, s in big}) == len(big)
    assert small[0][1] == "a photograph of a star"
    with pytest.raises(ValueError, match="per_class"):
        BindingConfig(per_class=0)
    with pytest.raises(ValueError, match="template"):
        BindingConfig(template="a photograph")


# --- 3. the metrics themselves ----------------------------------------------------------------


def test_iou_and_auroc_match_references():
    rng = np.random.default_rng(0)
    preds, targets = rng.random((20, 8, 8)) > 0.5, rng.random((20, 8, 8)) > 0.6
    targets[0] = preds[0] = False  # both empty: 1, as Protocol I scores it
    ours = [_iou(p, t) for p, t in zip(preds, targets)]
    np.testing.assert_allclose(ours, pairwise_iou(preds, targets))
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) > 0.7
    assert auroc(scores, labels) == pytest.approx(
        np.mean([(a > b) + 0.5 * (a == b) for a in scores[labels] for b in scores[~labels]]))
    assert np.isnan(auroc(scores, np.zeros(200, bool)))
    sklearn = pytest.importorskip("sklearn.metrics")
    assert auroc(scores, labels) == pytest.approx(sklearn.roc_auc_score(labels, scores))
