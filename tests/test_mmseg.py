"""The mmseg backend of Protocol II: mmseg's IoUMetric agrees with ours, and mmseg's MaskFormer trains,
resumes, saves, loads and is scored by the stages. Needs `bash scripts/install_mmseg.sh` (marker `mmseg`:
skipped without it, except in CI, where GROUNDIFF_REQUIRE_MMSEG=1 makes a missing mmseg fail)."""

from __future__ import annotations

import builtins
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from groundiff.core.schema import SegmenterConfig
from groundiff.eval.metrics import class_iou, confusion_matrix, zero_shot_scores
from groundiff.segmenter import DataSource, load_segmenter, train

from test_segmenter import CLASSES, make_voc, tiny_cfg

needs_mmseg = pytest.mark.mmseg


def mm_cfg(**kw) -> SegmenterConfig:
    return tiny_cfg(backend="mmseg", d_model=32, fpn_size=64, decoder_heads=2, **kw)  # widths differ, as in params


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


def _mmseg_iou(preds, labels, num_classes):
    """Per-class IoU as mmseg's users get it: IoUMetric.process per image, then its own reduction."""
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(ignore_index=255, iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{k}" for k in range(num_classes)]}
    for pred, label in zip(preds, labels):
        metric.process({}, [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}])
    summary = metric.compute_metrics(metric.results)
    areas = [sum(r[i] for r in metric.results) for i in range(4)]  # intersect, union, pred, label
    per_class = metric.total_area_to_metrics(*areas, ["mIoU"])["IoU"]
    return np.asarray(per_class, dtype=np.float64), summary


@needs_mmseg
def test_our_per_class_iou_equals_mmseg_iou_metric():
    """The same predictions and labels through eval.metrics and mmseg's IoUMetric: per-class IoU to
    1e-6, NaN for the class absent from both, and seen / unseen / hIoU from either agree."""
    rng = np.random.default_rng(0)
    num_classes = 11  # background + 10, as the shapes world
    labels, preds = [], []
    for _ in range(12):
        label = rng.integers(0, num_classes - 1, size=(40, 48)).astype(np.uint8)  # class 10 never in the truth
        label[rng.random(label.shape) < 0.1] = 255  # VOC's ignore
        pred = label.copy()
        noise = rng.random(label.shape) < 0.3
        pred[noise] = rng.integers(0, num_classes - 1, size=int(noise.sum()))
        pred[pred == 255] = 0  # a model never predicts ignore
        labels.append(label)
        preds.append(pred)
    conf = sum(confusion_matrix(p, t, num_classes) for p, t in zip(preds, labels))
    ours = class_iou(conf)
    theirs, summary = _mmseg_iou(preds, labels, num_classes)
    assert np.isnan(ours[10]) and np.isnan(theirs[10])
    np.testing.assert_allclose(ours[:10], theirs[:10], atol=1e-6, rtol=0)
    assert abs(summary["mIoU"] - round(100 * float(np.nanmean(ours)), 2)) < 1e-9  # mmseg rounds to 2 places
    seen, unseen = [1, 2, 3, 4, 5, 6, 7], [8, 9, 10]
    a = zero_shot_scores(conf, seen, unseen)
    s, u = float(np.nanmean(theirs[seen])), float(np.nanmean(theirs[unseen]))
    assert abs(a["seen"] - s) < 1e-6 and abs(a["unseen"] - u) < 1e-6 and abs(a["hiou"] - 2 * s * u / (s + u)) < 1e-6


@needs_mmseg
def test_config_is_mmsegs_packaged_maskformer_shrunk():
    from mmseg.registry import MODELS

    from groundiff.segmenter.mmseg_backend import MMSEG_CONFIG, mmseg_config, packaged_config, require_mmseg

    require_mmseg()
    assert packaged_config().name == Path(MMSEG_CONFIG).name
    cfg = mm_cfg()
    config = mmseg_config(cfg, CLASSES, [DataSource("voc", "train")], Path("work"))
    model = MODELS.build(config.model)
    assert type(model).__name__ == "EncoderDecoder" and type(model.decode_head).__name__ == "MaskFormerHead"
    assert model.decode_head.num_classes == len(CLASSES) + 1 and model.decode_head.num_queries == cfg.num_queries
    assert [m.out_channels for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)][-1] == cfg.backbone_widths[-1]
    assert not any(type(m).__name__ == "SyncBatchNorm" for m in model.modules())
    assert config.train_cfg.max_iters == cfg.steps and config.train_dataloader.batch_size == cfg.batch_size
    with pytest.raises(ValueError, match="doubles its width"):
        mmseg_config(replace(cfg, backbone_widths=(8, 24)), CLASSES, [DataSource("voc", "train")], Path("w"))
    # the paper worlds: mmseg's recipe as packaged, ResNet-50 from torchvision's weights (loaded only by init_weights)
    paper = mmseg_config(replace(cfg, backbone="microsoft/resnet-50"), CLASSES, [DataSource("voc", "train")], Path("w"))
    assert paper.model.backbone.depth == 50 and paper.model.backbone.init_cfg.checkpoint == "torchvision://resnet50"
    assert paper.model.decode_head.num_queries == 100 and paper.model.decode_head.num_classes == len(CLASSES) + 1
    with pytest.raises(ValueError, match="microsoft/resnet-50"):
        mmseg_config(replace(cfg, backbone="microsoft/swin-tiny"), CLASSES, [DataSource("voc", "train")], Path("w"))


@needs_mmseg
def test_hidden_labels_are_ignored_and_the_sampler_draws_as_the_transformers_backend(voc):
    from mmengine.registry import DATA_SAMPLERS
    from mmseg.registry import DATASETS

    from groundiff.segmenter import SegmentationSet
    from groundiff.segmenter.mmseg_backend import require_mmseg

    require_mmseg()
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    kwargs = dict(data_root=str(voc), ann_file="ImageSets/Segmentation/train.txt", pipeline=pipeline,
                  data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                  metainfo=dict(classes=("background", *CLASSES)))
    plain = DATASETS.build(dict(type="GroundiffVOCDataset", **kwargs))
    hidden = DATASETS.build(dict(type="GroundiffVOCDataset", ignore_labels=[2], **kwargs))
    a, b = plain[1]["gt_seg_map"], hidden[1]["gt_seg_map"]  # image 1 has the bar (label 2)
    assert (a == 2).any() and not (b == 2).any()
    assert (b[a == 2] == 255).all() and (b[a != 2] == a[a != 2]).all()

    sources = [DataSource(str(voc), "train"), DataSource(str(voc), "train", share=0.25)]
    concat = DATASETS.build(dict(type="ConcatDataset", datasets=[dict(type="GroundiffVOCDataset", **kwargs)] * 2))
    sampler = DATA_SAMPLERS.build(dict(type="GroundiffStepSampler", batch_size=4, shares=[None, 0.25], seed=3),
                                  default_args=dict(dataset=concat))
    stream = iter(sampler)
    drawn = [next(stream) for _ in range(4 * 200)]
    probs = SegmentationSet(sources).probabilities
    expected = np.random.default_rng([3, 0]).choice(16, size=4, p=probs)
    assert drawn[:4] == expected.tolist()  # step 0's batch, as the transformers backend draws it
    assert 0.19 < np.mean(np.array(drawn) >= 8) < 0.31  # the second source's share


@needs_mmseg
def test_trains_resumes_exactly_saves_and_loads(voc, tmp_path):
    sources = [DataSource(str(voc), "train"), DataSource(str(voc), "train", ignore_labels=(2,))]
    cfg = mm_cfg(steps=4, checkpoint_every=2, log_every=2, color_aug="all")
    logs = []
    full, summary = train(sources, CLASSES, cfg, tmp_path / "full", on_log=logs.append, progress=False)
    assert summary["backend"] == "mmseg" and summary["resumed_from"] == 0
    assert [m["step"] for m in logs] == [2, 4] and all(np.isfinite(m["loss"]) for m in logs)
    assert set(logs[0]) >= {"loss", "loss_cross_entropy", "loss_mask", "loss_dice", "lr", "seconds"}

    def crash(m):
        if m["step"] == 2:  # right after the step-2 checkpoint... and before the step-4 one
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(sources, CLASSES, cfg, tmp_path / "resumed", on_log=crash, progress=False)
    resumed, summary = train(sources, CLASSES, cfg, tmp_path / "resumed", progress=False)
    assert summary["resumed_from"] == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must equal the uninterrupted one"
    assert (tmp_path / "full/log.csv").read_text() == (tmp_path / "resumed/log.csv").read_text()
    _, other = train(sources, CLASSES, replace(cfg, lr=5e-4), tmp_path / "resumed", progress=False)
    assert other["resumed_from"] == 0  # another config never resumes this state

    images = [np.full((32, 32, 3), 110, np.uint8), np.full((24, 40, 3), 110, np.uint8)]
    preds = full.predict(images)
    assert [p.shape for p in preds] == [(32, 32), (24, 40)] and all(p.max() <= len(CLASSES) for p in preds)
    full.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model/segmenter.json").read_text())["backend"] == "mmseg"
    loaded = load_segmenter(tmp_path / "model")  # mmseg's init_model on config.py + model.pth
    assert type(loaded).__name__ == "MMSegSegmenter" and loaded.labels == ("background", *CLASSES)
    assert all((p == q).all() for p, q in zip(preds, loaded.predict(images)))
    full.save_pretrained(tmp_path / "again")  # the saved model is byte for byte the same (DVC outs)
    for name in ("model.pth", "config.py", "segmenter.json"):
        assert (tmp_path / "model" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@needs_mmseg
@pytest.mark.slow
def test_train_segmenter_and_eval_zs3_stages_with_the_mmseg_backend(project):
    """`train_segmenter.segmenter.backend: mmseg` through the stages: C and real_all train with mmseg,
    eval_zs3 scores them beside a transformers-trained one."""
    from groundiff.stages import eval_zs3, train_segmenter

    from test_zs3 import tiny_project

    params = tiny_project(project)
    train_segmenter.main(["A"])  # transformers
    params["train_segmenter"]["segmenter"].update(backend="mmseg", d_model=32)
    params["eval_zs3"].update(variants=["A", "C", "real_all"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("C", "real_all"):
        train_segmenter.main([name])
        assert json.loads((project / "models/segmenter" / name / "segmenter.json").read_text())["backend"] == "mmseg"
        assert (project / "metrics/train_segmenter" / f"{name}_loss.csv").read_text().startswith("step,loss")
        assert not (project / "models/segmenter_state" / name).exists()
    eval_zs3.main()
    results = json.loads((project / "metrics/zs3.json").read_text())
    assert sorted(results) == ["A", "C", "real_all"]
    assert all(0 <= r["hiou"] <= 100 for r in results.values() if r["hiou"] is not None)


def test_missing_mmseg_says_how_to_install(monkeypatch):
    """Without mmseg (or with mmcv-lite) the backend names the install script. Runs with or without it."""
    from groundiff.segmenter import mmseg_backend

    real_import = builtins.__import__

    def no_mmseg(name, *args, **kwargs):
        if name == "mmseg" or name.startswith("mmseg.") or name.startswith("mmcv.ops"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mmseg)
    with pytest.raises(ImportError, match=r"bash scripts/install_mmseg.sh"):
        mmseg_backend.require_mmseg()

