"""Protocol II: the variant matrix, scoring, and the train_segmenter / eval_zs3 stages end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from groundiff.core.params import ParamsError
from groundiff.data.voc import VOCWriter, read_split
from groundiff.stages import eval_zs3, train_segmenter, world_data
from groundiff.core.params import Params
from groundiff.stages.common import run_stage
from groundiff.worlds.active import World
from groundiff.core.paths import SYNTH_SEGMENTATION as SYNTH
from groundiff.worlds.base import make_split
from groundiff.eval.zs3 import (PAPER_VARIANTS, VariantSpec, dvc_stage, markdown_table, pick_figure_images,
                           prediction_figure, score_confusion, variant_sources)

from conftest import write_params

TINY_SEGMENTER = dict(backbone_widths=[8, 16], backbone_depths=[1, 1], stem_width=8, fpn_size=32, d_model=16,
                      num_queries=6, decoder_layers=1, decoder_heads=2, decoder_ffn=32, input_size=32, steps=2,
                      batch_size=2, checkpoint_every=1, log_every=1)


def make_synth(project: Path, per_split: int = 3) -> Path:
    """A stand-in for the synth_dataset stage: real val images (every class labelled) as one/two/complicated."""
    samples = list(read_split(project / "data/shapes/real", "val"))
    writer = VOCWriter(project / SYNTH)
    for k, split in enumerate(("one", "two", "complicated")):
        for i in range(per_split):
            image_id, image, label = samples[(k * per_split + i) % len(samples)]
            writer.add(split, f"{split}_{i:03d}", image, label)
    writer.close()
    return project / SYNTH


def tiny_project(project: Path) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_segmenter"]["segmenter"].update(TINY_SEGMENTER)
    params["eval_zs3"].update(figure_images=3)
    write_params(project, params)
    world_data.main()
    make_synth(project)
    return params


def test_params_define_the_paper_variants():
    cfg = Params(Path(__file__).resolve().parents[1] / "params.yaml").section("train_segmenter")
    assert cfg.variants == PAPER_VARIANTS
    assert list(cfg.variants) == ["A", "B", "C", "D", "E", "real_seen", "real_all"]


def test_dvc_stages_split_the_variants_by_synthetic_data():
    """train_segmenter@ (synthetic data: depends on it) and train_reference@ (real alone: does not)."""
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    cfg = Params(root / "params.yaml").section("train_segmenter")
    synthetic, reference = stages["train_segmenter"], stages["train_reference"]
    assert synthetic["foreach"] + reference["foreach"] == list(cfg.variants)
    assert all(cfg.variants[v].synthetic for v in synthetic["foreach"])
    assert not any(cfg.variants[v].synthetic for v in reference["foreach"])
    assert "data/synth/segmentation" in synthetic["do"]["deps"]
    assert "data/synth/segmentation" not in reference["do"]["deps"]
    # the two stage bodies are one recipe: only the synthetic-data dependency differs
    without_synth = [d for d in synthetic["do"]["deps"] if d != "data/synth/segmentation"]
    assert reference["do"] == {**synthetic["do"], "deps": without_synth}
    assert [dvc_stage(v, cfg.variants[v]) for v in ("D", "real_all")] == \
        ["train_segmenter@D", "train_reference@real_all"]


def test_variant_sources_in_order(project):
    split = make_split("shapes", ["circle", "ring", "square"], ["ring"])
    real = World(Params()).real_data
    src = {name: variant_sources(spec, split, real, "synth") for name, spec in PAPER_VARIANTS.items()}
    as_tuples = {k: [(s.root, s.split, s.labels, s.ignore_labels) for s in v] for k, v in src.items()}
    seen_real = ("data/shapes/real", "train", "SegmentationClass", (2,))  # ring hidden at load time too
    assert as_tuples["A"] == [("synth", "one", "SegmentationClass", ())]
    assert as_tuples["B"] == [("synth", "two", "SegmentationClass", ())]
    assert as_tuples["C"] == [("synth", "one", "SegmentationClass", ()), ("synth", "two", "SegmentationClass", ())]
    assert as_tuples["D"] == [seen_real] + as_tuples["C"]
    assert as_tuples["E"] == as_tuples["D"] + [("synth", "complicated", "SegmentationClass", ())]
    assert as_tuples["real_seen"] == [seen_real]
    assert as_tuples["real_all"] == [("data/shapes/real", "train", "SegmentationClassFull", ())]
    assert [s.share for s in src["D"]] == [0.25, None, None]  # real a quarter of the samples, synthetic the rest
    assert [s.share for s in src["C"]] == [None, None] and [s.share for s in src["real_all"]] == [None]
    assert [s.synthetic for s in src["E"]] == [False, True, True, True]  # what color_aug "synthetic" distorts
    with pytest.raises(ValueError, match="real_share"):
        VariantSpec(["one"], "none", real_share=0.5)  # nothing to share with
    with pytest.raises(ValueError, match="needs data"):
        VariantSpec([], "none")
    with pytest.raises(ValueError, match="real"):
        VariantSpec(["one"], "some")


def test_score_confusion_hand_made():
    split = make_split("shapes", ["circle", "ring", "square"], ["ring"])
    conf = np.zeros((4, 4), np.int64)
    conf[0, 0] = 10  # background
    conf[1, 1], conf[1, 0] = 3, 1  # circle: IoU 3/4
    conf[2, 2], conf[2, 3] = 1, 1  # ring (unseen): 1/2; its miss is a square false positive
    conf[3, 3] = 2  # square: 2/3
    r = score_confusion(conf, split, "ignore")
    assert r["miou_seen"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert r["miou_unseen"] == pytest.approx(50.0)
    s, u = r["miou_seen"], r["miou_unseen"]
    assert r["hiou"] == pytest.approx(2 * s * u / (s + u))
    assert set(r["per_class"]) == {"circle", "ring", "square"}
    with_bg = score_confusion(conf, split, "seen")
    assert with_bg["per_class"]["background"] == pytest.approx(100 * 10 / 11)
    assert with_bg["miou_seen"] == pytest.approx(100 * (10 / 11 + 3 / 4 + 2 / 3) / 3)
    conf[3], conf[:, 3] = 0, 0  # square absent from truth and prediction: no IoU, left out of the mean
    assert score_confusion(conf, split)["per_class"]["square"] is None
    table = markdown_table({"A": r}, split)
    assert "| A |" in table and "paper" in table and "83.4" in table  # Model-E, VOC seen


def test_pick_figure_images_prefers_unseen():
    split = make_split("shapes", ["circle", "ring"], ["ring"])
    truths = [np.array([[0, 1]]), np.array([[0, 2]]), np.array([[0, 0]]), np.array([[1, 2]]), np.array([[1, 1]])]
    assert pick_figure_images(truths, split, 3) == [0, 1, 3]
    assert pick_figure_images(truths, split, 1) == [1]
    assert pick_figure_images(truths, split, 10) == [0, 1, 3, 4]


def test_prediction_figure_draws_rows_and_names_the_label_column(tmp_path):
    """One row per image (image | labels | each prediction) over the legend; the labels' caption is a parameter."""
    from PIL import Image

    split = make_split("shapes", ["circle", "ring"], ["ring"])
    images = [np.zeros((8, 8, 3), np.uint8)] * 3
    labels = [np.pad(np.ones((4, 8), np.uint8), ((0, 4), (0, 0)))] * 3
    readings = {"real_all": [np.full((8, 8), 2, np.uint8)] * 3}
    truth = prediction_figure(images, labels, readings, split, tmp_path / "truth.png")
    named = prediction_figure(images, labels, readings, split, tmp_path / "figures" / "label.png",
                              truth_caption="label (grounding)")
    with Image.open(truth) as a, Image.open(named) as b:
        assert a.size == b.size and a.width == 3 * 8 * 4  # 3 columns of 8 px tiles at scale 4
        assert a.height > (3 + 1) * 8 * 4  # 3 image rows and a legend row, plus captions
        assert np.array(a).tolist() != np.array(b).tolist()  # only the caption differs
    assert prediction_figure(images, labels, readings, split, tmp_path / "default.png", truth_caption="truth")
    with Image.open(truth) as a, Image.open(tmp_path / "default.png") as c:
        assert np.array(a).tolist() == np.array(c).tolist()  # "truth" is the default


def test_unknown_variant_and_missing_data_are_clear(project, capsys):
    with pytest.raises(ParamsError, match=r"unknown segmenter variant 'Z'.*A, B, C, D, E, real_seen, real_all"):
        train_segmenter.main(["Z"])
    with pytest.raises(ParamsError, match="usage"):
        train_segmenter.main([])
    with pytest.raises(FileNotFoundError, match="data/shapes/real/ImageSets/Segmentation/train.txt: missing"):
        train_segmenter.main(["real_seen"])
    with pytest.raises(SystemExit):  # as `python -m` runs it: the stage that writes the split is named
        run_stage(lambda: train_segmenter.main(["real_seen"]))
    assert capsys.readouterr().err.rstrip().endswith("run `dvc repro world_data`")


def test_train_all_variants_then_eval(project):
    """Every variant's sources exist and train on a tiny project; eval_zs3 writes json, table, figure."""
    params = tiny_project(project)
    variants = list(params["train_segmenter"]["variants"])
    for name in variants:
        train_segmenter.main([name])
        assert (project / "models/segmenter" / name / "segmenter.json").is_file()
        metrics = json.loads((project / "metrics/train_segmenter" / f"{name}.json").read_text())
        assert metrics["steps"] == 2 and metrics["variant"] == name
    d = json.loads((project / "metrics/train_segmenter/D.json").read_text())
    assert [s.split(" ")[0] for s in d["samples"]] == ["data/shapes/real:train", "data/synth/segmentation:one",
                                                       "data/synth/segmentation:two"]
    assert (project / "metrics/train_segmenter/E_loss.csv").read_text().startswith("step,loss")
    assert not (project / "models/segmenter_state/E").exists()

    eval_zs3.main()
    results = json.loads((project / "metrics/zs3.json").read_text())
    assert sorted(results) == sorted(variants)
    split = World(Params()).split
    for r in results.values():
        assert set(r) == {"miou_seen", "miou_unseen", "hiou", "per_class"}
        assert set(r["per_class"]) == set(split.classes)
        assert all(v is None or 0 <= v <= 100 for v in r["per_class"].values())
    table = (project / "reports/zs3.md").read_text()
    assert all(f"| {v} |" in table for v in variants) and "Stable Diffusion + PASCAL VOC" in table
    assert (project / "reports/figures/zs3_predictions.png").is_file()

    # a missing model names the command that makes it
    import shutil

    shutil.rmtree(project / "models/segmenter/B")
    shutil.rmtree(project / "models/segmenter/real_all")
    with pytest.raises(FileNotFoundError, match=r"dvc repro train_segmenter@B` && `dvc repro train_reference@real_all"):
        eval_zs3.main()

    # a study scores some variants on dev: the missing ones are not needed, the table names the split
    params["eval_zs3"].update(split="dev", variants=["A", "C"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    eval_zs3.main()
    assert list(json.loads((project / "metrics/zs3.json").read_text())) == ["A", "C"]
    assert "scored on the real `dev` split" in (project / "reports/zs3.md").read_text()
