"""synth_dataset.labels: oracle — the world's detector labels the generated images (the oracle_labels study),
and the default (the grounding module's labels) leaves the dataset as it was."""

from __future__ import annotations

import pickle
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from groundiff.data.voc import load_label_png, read_split
from groundiff.diffusion.pipeline import SamplingConfig, load_pipeline
from groundiff.method.grounding import GroundingConfig, GroundingModule
from groundiff.method.oracle_labels import oracle_label_map, oracle_label_maps
from groundiff.method.synth_dataset import SynthDatasetConfig, _fingerprint, synth_dataset, synth_prompts
from groundiff.testing import tiny_shapes_pipeline
from groundiff.worlds.base import make_split
from groundiff.worlds.oracle import DetectorArch, Detections, TorchvisionOracle, build_maskrcnn
from groundiff.worlds.shapes import CLASSES

SPLIT = make_split("shapes", CLASSES, ["ring", "heart", "arrow"])
CFG = SynthDatasetConfig(n_one=3, n_two=3, n_complicated=2, attributes=["red"], shard_size=3,
                         threshold=0.5, ignore_below=0.3,
                         sampling=SamplingConfig(steps=2, guidance_scale=3.0, batch_size=2))
ORACLE_CFG = replace(CFG, labels="oracle", oracle_score=0.0)


def test_oracle_labels_paint_each_prompted_class_once_most_confident_on_top():
    masks = np.zeros((4, 4, 6), bool)
    masks[0, :, :3] = True  # star 0.9: left half
    masks[1, :, 2:] = True  # ring 0.7: right half, overlapping the star in column 2
    masks[2, :, 5] = True  # star 0.6: a second star, not the top one
    masks[3, 0, :] = True  # heart 0.8: not prompted
    label_of = {"star": 1, "ring": 2, "heart": 3}
    det = Detections(["star", "heart", "ring", "star"], np.array([0.9, 0.8, 0.7, 0.6]), masks[[0, 3, 1, 2]])
    out = oracle_label_map(det, ["star", "ring"], label_of, min_score=0.5)
    assert out.tolist() == [[1, 1, 1, 2, 2, 2]] * 4  # star wins the overlap; the 2nd star and the heart are no labels
    weak = oracle_label_map(Detections(["star", "ring"], np.array([0.9, 0.4]), masks[[0, 1]]),
                            ["star", "ring"], label_of, min_score=0.5)
    assert weak.tolist() == [[1, 1, 1, 0, 0, 0]] * 4  # ring below min_score: background


def test_bad_label_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="labels: 'detector' is not one of grounding, oracle"):
        replace(CFG, labels="detector")
    with pytest.raises(ValueError, match=r"oracle_score: a detector score in \[0, 1\], got 1.5"):
        replace(CFG, oracle_score=1.5)


def test_the_default_labels_keep_the_fingerprint_the_shipped_dataset_was_made_with():
    """The hash below is what the code before `labels` existed gave this config: the grounding module's
    dataset resumes its shards (no byte changes); the oracle's settings enter only when the oracle labels."""
    table = synth_prompts(CLASSES, CFG)
    ids = ["pipe@1", "models/grounding@2"]
    assert _fingerprint(table, CFG, ids) == "c8f961b5de5fd85c"
    assert _fingerprint(table, replace(CFG, oracle_score=0.9), ids) == "c8f961b5de5fd85c"  # unused: not in it
    assert _fingerprint(table, ORACLE_CFG, ids) != _fingerprint(table, CFG, ids)
    assert _fingerprint(table, ORACLE_CFG, ids) != _fingerprint(table, replace(ORACLE_CFG, oracle_score=0.5), ids)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny shapes pipeline, an untrained grounding module and an untrained oracle (score threshold 0,
    so that it finds something), each saved to a folder as the stages read them."""
    root = tmp_path_factory.mktemp("models")
    tiny_shapes_pipeline(root / "pipe")
    pipe = load_pipeline(root / "pipe")
    torch.manual_seed(0)
    cfg = GroundingConfig.from_unet_config(pipe.unet.config, text_dim=16, image_size=32, d_model=32,
                                           n_heads=2, ffn_dim=64, n_layers=1)
    GroundingModule(cfg).save_pretrained(root / "grounding")
    arch = DetectorArch(classes=CLASSES, widths=(8, 16, 16), fpn_channels=16, input_size=32)
    TorchvisionOracle(build_maskrcnn(arch).eval(), CLASSES, arch=arch).save_pretrained(root / "detector")
    return root


def _oracle(root):
    return TorchvisionOracle.from_pretrained(root / "detector", score_threshold=0.0)


def test_oracle_labels_are_the_oracles_detections_on_the_saved_images(models, tmp_path):
    pipe = load_pipeline(models / "pipe")
    module = GroundingModule.from_pretrained(models / "grounding").eval()
    oracle = _oracle(models)
    grounded = synth_dataset(pipe, module, SPLIT, CFG, tmp_path / "grounding", ["a", "b"])
    labelled = synth_dataset(pipe, module, SPLIT, ORACLE_CFG, tmp_path / "oracle", ["a", "b", "o"], oracle=oracle)
    assert labelled["images"] == grounded["images"] == {"one": 3, "two": 3, "complicated": 2}

    table = synth_prompts(CLASSES, ORACLE_CFG).set_index("index")
    agree = total = painted = 0
    for kind in ("one", "two", "complicated"):
        for (image_id, image, label), (same_id, same_image, grounding_label) in zip(
                read_split(tmp_path / "oracle", kind), read_split(tmp_path / "grounding", kind)):
            assert image_id == same_id and np.array_equal(image, same_image)  # the same generated images
            names = table.loc[int(image_id.removeprefix("synth_")), "classes"].split("|")
            (expected,) = oracle_label_maps(oracle, [image], [names], SPLIT, ORACLE_CFG.oracle_score)
            assert np.array_equal(label, expected), image_id
            assert set(np.unique(label).tolist()) <= {0} | {SPLIT.label(n) for n in names}
            agree += int((label == grounding_label).sum())
            total += label.size
            painted += int((label > 0).sum())
    assert painted > 0  # the oracle did label something: the comparison above is not of empty maps
    assert labelled["label_agreement"] == round(agree / total, 5) and "label_agreement" not in grounded
    with pytest.raises(ValueError, match="labels: oracle needs the world's oracle detector"):
        synth_dataset(pipe, module, SPLIT, ORACLE_CFG, tmp_path / "none", ["a"])
    with pytest.raises(ValueError, match="labels: grounding labels with the grounding module; pass no oracle"):
        synth_dataset(pipe, module, SPLIT, CFG, tmp_path / "none", ["a"], oracle=oracle)


def test_dask_workers_load_the_oracle_themselves_and_write_the_same_bytes(models, tmp_path):
    """The stage hands the workers (the oracle's id, a picklable loader); in-process workers here."""
    from dask.distributed import Client

    from groundiff.core.schema import DistributedConfig
    from groundiff.method.distributed import run_synth_dataset, synth_dataset_distributed

    source = (str(models / "detector"), partial(_oracle, models))
    assert pickle.loads(pickle.dumps(source))[1]().classes == CLASSES  # travels to a worker as it is
    serial = run_synth_dataset(models / "pipe", models / "grounding", SPLIT, ORACLE_CFG, tmp_path / "serial",
                               DistributedConfig(""), oracle=source)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dist = synth_dataset_distributed(models / "pipe", models / "grounding", SPLIT, ORACLE_CFG, tmp_path / "dist",
                                         _model_ids(models), client=client, oracle=source)
    assert dist == serial and serial["label_agreement"] >= 0
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "dist") == files(tmp_path / "serial")
    label = load_label_png(next((tmp_path / "dist" / "SegmentationClass").glob("*.png")))
    assert label.shape == np.array(Image.open(next((tmp_path / "dist" / "JPEGImages").glob("*.jpg")))).shape[:2]


def _model_ids(models) -> list[str]:
    from groundiff.method.synthesis import model_fingerprint

    return [model_fingerprint(str(models / p)) for p in ("pipe", "grounding", "detector")]


def test_the_synth_dataset_stage_labels_with_the_worlds_oracle(grounded_world):
    """params.yaml `synth_dataset.labels: oracle` reaches the stage: it loads the world's oracle (with
    `oracle_score` as its threshold) and records how often its labels agree with the grounding module's."""
    import yaml

    from conftest import write_params
    from groundiff.stages import synth_dataset as stage

    arch = DetectorArch(classes=CLASSES, widths=(8, 16, 16), fpn_channels=16, input_size=32)
    TorchvisionOracle(build_maskrcnn(arch).eval(), CLASSES, arch=arch).save_pretrained(
        grounded_world / "worlds/shapes/detector")
    params = yaml.safe_load((grounded_world / "params.yaml").read_text())
    params["synth_dataset"].update(n_one=2, n_two=2, n_complicated=0, shard_size=2, labels="oracle", oracle_score=0.0,
                                   sampling={"steps": 2, "guidance_scale": 3.0, "batch_size": 2})
    write_params(grounded_world, params)
    stage.main()
    stats = yaml.safe_load((grounded_world / "metrics/synth_dataset.json").read_text())
    assert stats["images"] == {"one": 2, "two": 2, "complicated": 0} and 0 <= stats["label_agreement"] <= 1
    oracle = TorchvisionOracle.from_pretrained(grounded_world / "worlds/shapes/detector", score_threshold=0.0)
    table = synth_prompts(CLASSES, SynthDatasetConfig(**{k: v for k, v in params["synth_dataset"].items()
                                                         if k not in ("sampling",)})).set_index("index")
    split = make_split("shapes", CLASSES, params["shapes"]["splits"][1])
    for kind in ("one", "two"):
        for image_id, image, label in read_split(grounded_world / "data/synth/segmentation", kind):
            names = table.loc[int(image_id.removeprefix("synth_")), "classes"].split("|")
            assert np.array_equal(label, oracle_label_maps(oracle, [image], [names], split, 0.0)[0]), image_id
