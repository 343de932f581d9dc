"""The paper's worlds: vocabularies, splits, and COCO detectors speaking the world's class names."""

import numpy as np
import pytest
import torch

from groundiff.worlds.oracle import Detectron2Oracle, MMDetOracle, TorchvisionCOCOOracle, _map_detections
from groundiff.worlds.base import make_split
from groundiff.worlds.paper import COCO_CLASSES, COCO_UNSEEN, VOC_CLASSES, ZS3_VOC_UNSEEN, coco_name_in, vocabulary


def test_vocabularies_and_splits_match_the_paper():
    classes, splits = vocabulary("voc")
    assert len(classes) == 20 and classes[-1] == "tvmonitor" and classes.index("person") == 14  # VOC label 15
    for k in (0, 1, 2, 3):
        split = make_split("voc", classes, splits[k])
        assert len(split.seen) == 15 and len(split.unseen) == 5
    assert set(splits[0]) == set(ZS3_VOC_UNSEEN)
    coco = make_split("coco", COCO_CLASSES, COCO_UNSEEN)
    assert (len(coco.seen), len(coco.unseen)) == (65, 15)


def test_every_voc_class_has_a_coco_detector_class():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights

    categories = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
    mapped = {coco_name_in("voc", c) for c in categories} - {None}
    assert mapped == set(VOC_CLASSES)
    assert {coco_name_in("coco", c) for c in categories if c not in ("__background__", "N/A")} == set(COCO_CLASSES)


def test_detections_are_renamed_filtered_and_sorted():
    masks = np.zeros((3, 4, 4), bool)
    det = _map_detections(["couch", "giraffe", "tv"], np.array([0.3, 0.9, 0.6], np.float32), masks, "voc")
    assert det.classes == ["tvmonitor", "sofa"] and det.scores.tolist() == pytest.approx([0.6, 0.3])


@pytest.mark.slow
def test_torchvision_coco_oracle_loads_a_local_state_dict(tmp_path):
    from torchvision.models import detection

    torch.manual_seed(0)
    model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(model.state_dict(), tmp_path / "coco.pth")
    oracle = TorchvisionCOCOOracle.load("voc", str(tmp_path / "coco.pth"), arch="maskrcnn_resnet50_fpn",
                                        score_threshold=0.0, min_size=64)
    assert len(oracle.classes) == 20
    (det,) = oracle.detect([np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)])
    assert set(det.classes) <= set(VOC_CLASSES) and det.masks.shape[1:] == (64, 64)
    assert list(det.scores) == sorted(det.scores, reverse=True)


def test_missing_oracle_weights_and_backends_teach(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights: torchvision"):
        TorchvisionCOCOOracle.load("voc", str(tmp_path / "missing.pth"))
    # detectron2 is on no registry (it is never installed here): its error says how to build it
    with pytest.raises(ImportError, match=r"pip install --no-build-isolation 'git\+https://github.com/facebookresearch/detectron2.git'"):
        Detectron2Oracle("voc", "cfg.yaml", "ckpt.pkl")


def test_missing_mmdet_names_the_install_script(monkeypatch):
    """Where mmdet is absent (it comes with `bash scripts/install_mmseg.sh`), the mmdet oracle says so."""
    import builtins

    real_import = builtins.__import__

    def no_mmdet(name, *args, **kwargs):
        if name == "mmdet" or name.startswith("mmdet."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mmdet)
    with pytest.raises(ImportError, match=r"bash scripts/install_mmseg.sh"):
        MMDetOracle("voc", "cfg.py", "ckpt.pth")
