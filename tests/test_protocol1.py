"""Protocol I end to end on tiny random models: the test set, one generation scored by both methods, the stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_params, write_params
from groundiff.data.prompts import PromptConfig, class_list, sample_prompts
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.method.generate import generate_grounded
from groundiff.method.grounding import GroundingConfig, GroundingModule
from groundiff.worlds.oracle import DetectorArch, TorchvisionOracle, build_maskrcnn
from groundiff.eval.protocol1 import (CATEGORIES, PAIR_COLUMNS, THRESHOLD_GRID, EvalConfig, Protocol1Result, evaluate,
                                 flat_metrics, markdown_report, overlay_figure, protocol1_prompts, threshold_curve)
from groundiff.worlds.base import make_split
from groundiff.worlds.shapes import CLASSES
from groundiff.testing import tiny_shapes_pipeline

SPLIT = make_split("shapes", CLASSES, ["ring", "heart", "arrow"])
CFG = EvalConfig(per_category=3, sampling=SamplingConfig(steps=3, guidance_scale=7.5, batch_size=7),
                 oracle_score_threshold=0.0, examples_per_category=1)


def save_world(root: Path) -> None:
    """A tiny random shapes-world pipeline, oracle and grounding module where the stages look."""
    torch.manual_seed(0)
    pipe = tiny_shapes_pipeline(root / "worlds/shapes/diffusion")
    arch = DetectorArch(classes=tuple(CLASSES), widths=(8, 16, 16), fpn_channels=16, box_head_dim=32)
    torch.manual_seed(0)
    oracle = TorchvisionOracle(build_maskrcnn(arch).eval(), arch.classes, arch=arch)
    oracle.save_pretrained(root / "worlds/shapes/detector")
    torch.manual_seed(0)
    cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32,
                                           d_model=32, n_heads=2, ffn_dim=64, n_layers=1)
    GroundingModule(cfg).save_pretrained(root / "models/grounding")


class RecordingOracle:
    """The untrained Mask R-CNN (score threshold 0, many detections so it 'finds' most classes),
    never finding `missing`; remembers the images it was shown."""

    def __init__(self, root: Path, missing: str) -> None:
        self.inner = TorchvisionOracle.from_pretrained(root / "worlds/shapes/detector", score_threshold=0.0)
        self.inner.model.roi_heads.detections_per_img = 300
        self.classes, self.missing, self.seen_images = self.inner.classes, missing, []

    def detect(self, images):
        self.seen_images.extend(np.array(im) for im in images)
        out = self.inner.detect(images)
        for det in out:
            keep = [i for i, c in enumerate(det.classes) if c != self.missing]
            det.classes, det.scores, det.masks = [det.classes[i] for i in keep], det.scores[keep], det.masks[keep]
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    save_world(root)
    return root


@pytest.fixture(scope="module")
def run(world):
    pipe = load_pipeline(world / "worlds/shapes/diffusion")
    model = GroundingModule.from_pretrained(world / "models/grounding")
    oracle = RecordingOracle(world, missing="star")
    table = protocol1_prompts(SPLIT, CFG)
    return pipe, model, oracle, table, evaluate(pipe, oracle, model, table, SPLIT, CFG, progress=False)


# --- the test set ---------------------------------------------------------------------------


def test_prompts_cover_the_five_categories_with_distinct_classes():
    table = protocol1_prompts(SPLIT, EvalConfig(per_category=40))
    assert list(table["category"].unique()) == list(CATEGORIES)
    assert (table.groupby("category").size() == 40).all()
    assert table["seed"].is_unique
    for row in table.itertuples():
        names = class_list(row.classes)
        assert row.prompt == (f"a photograph of a {names[0]}" if len(names) == 1
                              else f"a photograph of a {names[0]} and a {names[1]}")
        kinds = sorted("seen" if n in SPLIT.seen else "unseen" for n in names)
        assert kinds == {"one_seen": ["seen"], "one_unseen": ["unseen"], "two_seen": ["seen", "seen"],
                         "two_seen_unseen": ["seen", "unseen"], "two_unseen": ["unseen", "unseen"]}[row.category]
        assert len(set(names)) == len(names)  # two distinct classes
    one_seen = table[table["category"] == "one_seen"]["classes"]
    assert set(one_seen) == set(SPLIT.seen)  # every seen class is tested
    mixed = table[table["category"] == "two_seen_unseen"]["classes"].map(lambda c: class_list(c)[0] in SPLIT.unseen)
    assert 0 < mixed.sum() < len(mixed)  # the unseen class comes first in some prompts, second in others


def test_prompts_are_seeded_prefix_stable_and_disjoint_from_training():
    small = protocol1_prompts(SPLIT, EvalConfig(per_category=10))
    big = protocol1_prompts(SPLIT, EvalConfig(per_category=60))
    for category in CATEGORIES:  # more images per category extend each category, not reshuffle it
        a = small[small["category"] == category][["prompt", "seed"]].values.tolist()
        b = big[big["category"] == category][["prompt", "seed"]].values.tolist()
        assert b[:10] == a
    assert protocol1_prompts(SPLIT, EvalConfig(per_category=60)).equals(big)
    train = PromptConfig()  # the training prompts' seed (params.yaml prompts.seed)
    assert EvalConfig().seed != train.seed
    training = sample_prompts(SPLIT.seen, PromptConfig(n=5000, seed=train.seed))
    train_pairs = set(map(tuple, training[["prompt", "seed"]].values.tolist()))
    test_pairs = set(map(tuple, big[["prompt", "seed"]].values.tolist()))
    assert not train_pairs & test_pairs
    assert not set(training["seed"]) & set(big["seed"])  # not even a starting noise is shared


def test_prompts_need_two_seen_and_two_unseen_classes():
    with pytest.raises(ValueError, match="at least two seen and two unseen"):
        protocol1_prompts(make_split("shapes", CLASSES, ["ring"]), EvalConfig())
    with pytest.raises(ValueError, match="capture step t=30"):
        EvalConfig(capture_t=30)


# --- evaluation -----------------------------------------------------------------------------


def test_metrics_have_the_table_keys_and_percent_values(run):
    *_, result = run
    assert set(result.metrics) == {"ours", "daam"}
    for method in ("ours", "daam"):
        assert list(result.metrics[method]) == list(CATEGORIES)
        for value in result.metrics[method].values():
            assert value is not None and 0.0 <= value <= 100.0
    assert set(flat_metrics(result.metrics)) == {f"{m}_{c}" for m in ("ours", "daam") for c in CATEGORIES}
    json.dumps(result.metrics), json.dumps(result.details())  # JSON-ready
    assert set(result.per_class["ours"]) == set(CLASSES)


def test_both_methods_are_scored_on_the_same_images_and_pairs(run, world):
    pipe, model, oracle, table, result = run
    pairs = result.pairs
    assert len(pairs) == table["n_objects"].sum()
    # a pair has an IoU for both methods exactly when the oracle found its class
    assert (pairs["found"] == pairs["iou_ours"].notna()).all()
    assert (pairs["found"] == pairs["iou_daam"].notna()).all()
    # the oracle's misses are excluded from both and counted
    star = pairs["class"] == "star"
    assert star.any() and not pairs.loc[star, "found"].any()
    assert result.per_class["oracle_missed"]["star"] == star.sum() and result.per_class["ours"]["star"] is None
    for c in CATEGORIES:
        n = result.counts[c]
        assert n["images"] == CFG.per_category and n["evaluated"] + n["oracle_missed"] == n["pairs"]
        found = pairs[(pairs["category"] == c) & pairs["found"]]
        assert result.metrics["ours"][c] == pytest.approx(100 * found["iou_ours"].mean(), abs=1e-3)
    # the oracle labelled the generated images themselves (one generation, hooks leave images alone)
    plain = generate(pipe, list(table["prompt"]), list(table["seed"]), CFG.sampling)
    assert len(oracle.seen_images) == len(table)
    assert np.abs(np.stack(oracle.seen_images).astype(int) - plain.astype(int)).max() <= 1


def test_examples_match_an_independent_run_of_each_method(run):
    pipe, model, _, table, result = run
    assert [e.category for e in result.examples] == list(CATEGORIES)
    assert {e.seen for e in result.examples} == {True, False}
    for ex in result.examples[:3:2]:  # a one-object and a two-object image
        row = table[table["prompt"] == ex.prompt].iloc[0]
        names = class_list(row["classes"])
        k = names.index(ex.class_name)
        # ours, alone for this image (batch of one)
        grounded = generate_grounded(pipe, model, ex.prompt, names, int(row["seed"]), CFG.sampling,
                                     CFG.capture_t, CFG.template_one, CFG.mask_threshold)
        assert np.abs(grounded.image.astype(int) - ex.image.astype(int)).max() <= 1
        assert (grounded.masks[k] == ex.ours).mean() >= 0.99
        # DAAM, alone for this image
        with DAAMTrace(pipe) as trace:
            generate(pipe, [ex.prompt], [int(row["seed"])], CFG.sampling)
        heat = trace.heat_maps([ex.prompt], [names], 32)[0][k].numpy()
        assert ((heat > CFG.daam_threshold) == ex.daam).mean() >= 0.99


def test_threshold_sweep_matches_the_headline_threshold(run):
    *_, result = run
    curve = result.threshold_curve
    assert set(curve) == {*CATEGORIES, "seen_classes"}
    for c in CATEGORIES:  # CFG.mask_threshold is 0.5, a grid value: its column is Table 1's number
        assert curve[c]["0.5"] == pytest.approx(result.metrics["ours"][c], abs=1e-3)
    seen = result.pairs[result.pairs["found"] & result.pairs["seen"]]
    assert curve["seen_classes"]["0.5"] == pytest.approx(100 * seen["iou_ours"].mean(), abs=1e-3)
    assert result.best_seen_threshold() in THRESHOLD_GRID


def test_threshold_curve_and_best_seen_threshold_on_hand_made_pairs():
    rows = [(0, "one_seen", "p", 1, 0, "star", True, True, 0.9, 0.0, 0.0),
            (1, "one_unseen", "p", 2, 0, "ring", False, True, 0.9, 0.0, 0.0),
            (2, "one_seen", "p", 3, 0, "cross", True, False, 0.0, np.nan, np.nan)]  # missed: not scored
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    sweep = np.full((3, len(THRESHOLD_GRID)), 0.2)
    sweep[0, THRESHOLD_GRID.index(0.3)] = 0.8  # the seen pair is best at 0.3 ...
    sweep[1, THRESHOLD_GRID.index(0.6)] = 1.0  # ... the unseen one at 0.6, which must not count
    sweep[2] = np.nan
    curve = threshold_curve(pairs, sweep)
    assert curve["seen_classes"]["0.3"] == pytest.approx(80.0) and curve["seen_classes"]["0.6"] == pytest.approx(20.0)
    assert curve["one_unseen"]["0.6"] == pytest.approx(100.0) and curve["two_seen"]["0.5"] is None
    result = Protocol1Result({}, {}, {}, pairs, [], curve)
    assert result.best_seen_threshold() == 0.3
    # ties go to the threshold nearest 0.5
    assert Protocol1Result({}, {}, {}, pairs, [], {"seen_classes": {"0.4": 50.0, "0.7": 50.0}}).best_seen_threshold() == 0.4


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_other_test_mode_is_the_second_row_and_the_modes_swap(run, world):
    """norm_at_test: the headline in one mode, the same pairs in the other; "batch" runs a train-mode
    copy image by image, and neither the module passed in nor its folder changes."""
    pipe, model, oracle, table, result = run
    assert result.norm_at_test == "running" and list(result.other_norm) == list(CATEGORIES)
    pairs = result.pairs
    assert (pairs["found"] == pairs["iou_ours_other"].notna()).all()
    assert (pairs["iou_ours_other"] != pairs["iou_ours"])[pairs["found"]].any()  # train mode: other masks
    saved = _folder_bytes(world / "models/grounding")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    batch = evaluate(pipe, oracle, model, table, SPLIT, replace(CFG, norm_at_test="batch"), progress=False)
    assert batch.norm_at_test == "batch"
    assert batch.metrics["ours"] == pytest.approx(result.other_norm, abs=1e-9)
    assert batch.other_norm == pytest.approx(result.metrics["ours"], abs=1e-9)
    assert batch.metrics["daam"] == result.metrics["daam"]
    # evaluation never writes into the module: not in memory, not on disk
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _folder_bytes(world / "models/grounding") == saved

    # "batch" is the released test.py: the module in train mode on one image, its own statistics
    first = batch.examples[0]
    row = table[table["prompt"] == first.prompt].iloc[0]
    assert int(row["index"]) == 0  # the first image the train-mode copy saw: reproducible from a fresh one
    fresh = GroundingModule.from_pretrained(world / "models/grounding").train()
    names = class_list(row["classes"])
    grounded = generate_grounded(pipe, fresh, first.prompt, names, int(row["seed"]), CFG.sampling,
                                 CFG.capture_t, CFG.template_one, CFG.mask_threshold)
    assert (grounded.masks[names.index(first.class_name)] == first.ours).mean() >= 0.99
    eval_mode = generate_grounded(pipe, model, first.prompt, names, int(row["seed"]), CFG.sampling,
                                  CFG.capture_t, CFG.template_one, CFG.mask_threshold)
    assert not np.array_equal(eval_mode.probabilities, grounded.probabilities)  # the modes differ

    details = batch.details()["norm_at_test"]
    assert details == {"headline": "batch", "other": "running", "ours_other": result.metrics["ours"]}
    logged = result.logged_metrics()
    assert {f"ours_norm_batch_{c}" for c in CATEGORIES} <= set(logged)
    text = markdown_report(result, CFG)
    assert "| ours, norm_at_test: batch |" in text and "`norm_at_test: running`" in text
    assert "norm_at_test batch" in result.summary()


def test_report_and_figure(run, tmp_path):
    *_, result = run
    text = markdown_report(result, CFG, "shapes world, split 1")
    assert "| DAAM |" in text and "| ours (grounding module) |" in text
    assert "64.84" in text and "90.30" in text and "paper" in text.lower()  # the paper's numbers, labelled
    assert "## Ours at other mask thresholds" in text and "all seen-class pairs" in text
    image = overlay_figure(result.examples)
    assert image.size[0] == 4 * 128  # image | oracle | ours | DAAM at 4x
    assert overlay_figure([]).size[0] > 0


# --- the stage ------------------------------------------------------------------------------


def _stage_params(seed: int = 2023) -> dict:
    params = tiny_params()
    params["eval_grounding"].update(seed=seed, per_category=2, oracle_score_threshold=0.0, examples_per_category=1,
                                    sampling={"steps": 2, "guidance_scale": 7.5, "eta": 0.0, "batch_size": 5})
    params["synthesize"]["sampling"]["steps"] = 2  # features of the step trained on: no warning
    return params


def test_stage_writes_metrics_report_and_figure(project, capsys):
    from groundiff.stages import eval_grounding

    save_world(project)
    write_params(project, _stage_params())
    eval_grounding.main()
    metrics = json.loads((project / "metrics/protocol1.json").read_text())
    assert set(metrics) == {"ours", "daam"}
    for method in metrics.values():
        assert list(method) == sorted(CATEGORIES)  # write_json sorts keys
        assert all(v is None or 0.0 <= v <= 100.0 for v in method.values())
    details = json.loads((project / "metrics/protocol1_details.json").read_text())
    assert sum(n["images"] for n in details["counts"].values()) == 10
    assert set(details["threshold_curve"]["seen_classes"]) == {str(t) for t in THRESHOLD_GRID}
    assert details["norm_at_test"]["headline"] == "running" and set(details["norm_at_test"]["ours_other"]) == set(CATEGORIES)
    table = (project / "reports/protocol1.md").read_text()
    assert "| DAAM |" in table and "| ours, norm_at_test: batch |" in table
    with Image.open(project / "reports/figures/protocol1_overlays.png") as img:
        assert img.size[0] > 0
    assert "eval_grounding" in capsys.readouterr().out


def test_stage_tests_the_module_that_grounding_dir_names(project):
    """eval_grounding.grounding_dir points the stage at another module folder (e.g. an imported one),
    never at one outside the project."""
    from groundiff.core.params import ParamsError
    from groundiff.stages import eval_grounding

    save_world(project)
    (project / "models/grounding").rename(project / "models/grounding-official")
    params = _stage_params()
    params["eval_grounding"].update(grounding_dir="models/grounding-official", norm_at_test="batch", per_category=1)
    write_params(project, params)
    eval_grounding.main()
    details = json.loads((project / "metrics/protocol1_details.json").read_text())
    assert details["norm_at_test"]["headline"] == "batch"
    params["eval_grounding"]["grounding_dir"] = "../elsewhere"
    write_params(project, params)
    with pytest.raises(ParamsError, match="leaves the project"):
        eval_grounding.main()


def test_check_against_training():
    from groundiff.core.params import ParamsError
    from groundiff.eval.protocol1 import check_against_training

    assert check_against_training(CFG, train_seed=0, train_capture_t=1, train_steps=3) is None
    warning = check_against_training(CFG, train_seed=0, train_capture_t=5, train_steps=3)
    assert warning.startswith("the grounding module was trained on features at t=5 of 3 steps")
    with pytest.raises(ParamsError, match="own seed stream"):
        check_against_training(CFG, train_seed=CFG.seed, train_capture_t=1, train_steps=3)


def test_stage_refuses_the_training_seed(project):
    from groundiff.core.params import ParamsError
    from groundiff.stages import eval_grounding

    params = _stage_params(seed=yaml.safe_load((project / "params.yaml").read_text())["prompts"]["seed"])
    write_params(project, params)
    with pytest.raises(ParamsError, match="own seed stream"):
        eval_grounding.main()
