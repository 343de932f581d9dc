"""The oracle: an off-the-shelf, closed-vocabulary instance segmenter that labels generated images.

The paper uses an mmdetection Mask R-CNN trained on COCO-80; every backend here answers the same
small question — for each image, which instances (class name, score, mask) are there — so the
stages that consume it (pseudo_label, world_fidelity, eval_grounding) never know which one runs.

- `TorchvisionOracle` (default): a torchvision Mask R-CNN, loaded from a folder holding
  `config.json` + `model.safetensors`. The shapes world's detector is a small one of these.
- detectron2 / mmdetection adapters plug in behind `Oracle` when those packages are installed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from groundiff.core.checkpoint import loading_model


@dataclass
class Detections:
    """Instances found in one image, sorted by descending score."""

    classes: list[str]
    scores: np.ndarray  # (N,) float32
    masks: np.ndarray  # (N, H, W) bool, thresholded at the oracle's mask threshold

    def best_mask(self, name: str) -> tuple[np.ndarray | None, float]:
        """The top-scoring instance of class `name` (the paper's target, not the union)."""
        for cls, score, mask in zip(self.classes, self.scores, self.masks):
            if cls == name:
                return mask, float(score)
        return None, 0.0


class Oracle(Protocol):
    classes: tuple[str, ...]

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """images: (H, W, 3) uint8 RGB arrays."""
        ...


# --- a small torchvision Mask R-CNN -----------------------------------------------------------


@dataclass(frozen=True)
class DetectorArch:
    """Architecture of the shapes world's Mask R-CNN (small; no pretrained weights anywhere)."""

    classes: tuple[str, ...] = ()
    widths: tuple[int, ...] = (32, 64, 128)  # backbone stages at strides 4, 8, 16
    fpn_channels: int = 64
    box_head_dim: int = 256
    input_size: int = 64  # images are resized to this square size inside the model
    anchor_sizes: tuple[int, ...] = (16, 32, 48, 64)  # per FPN level (incl. the pooled one)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyFPNBackbone(nn.Module):
    """A plain conv backbone (stride 4/8/16 stages) with an FPN, in torchvision's backbone shape."""

    def __init__(self, widths: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.stem = nn.Sequential(_conv_bn(3, widths[0], 2), _conv_bn(widths[0], widths[0], 1))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(_conv_bn(cin, w, 2), _conv_bn(w, w, 1), _conv_bn(w, w, 1)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)  # (B, w0, H/2, W/2)
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)  # stride 4, 8, 16
            feats[str(i)] = x
        return self.fpn(feats)


def build_maskrcnn(arch: DetectorArch) -> nn.Module:
    """A torchvision MaskRCNN sized for the shapes world (~1-2M parameters)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if not arch.classes:
        raise ValueError("a detector needs at least one class")
    backbone = TinyFPNBackbone(arch.widths, arch.fpn_channels)
    levels = [str(i) for i in range(len(arch.widths))]
    n_maps = len(levels) + 1  # + the max-pooled level
    if len(arch.anchor_sizes) != n_maps:
        raise ValueError(f"anchor_sizes needs {n_maps} entries (one per FPN level), got {arch.anchor_sizes}")
    c = arch.fpn_channels
    num_classes = len(arch.classes) + 1  # + background
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=arch.input_size,
        max_size=arch.input_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=AnchorGenerator(
            sizes=tuple((s,) for s in arch.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * n_maps
        ),
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 7 * 7, arch.box_head_dim),
        box_predictor=FastRCNNPredictor(arch.box_head_dim, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, (c, c, c, c), 1),
        mask_predictor=MaskRCNNPredictor(c, c, num_classes),
        # Scenes hold 1-3 objects: torchvision's COCO-sized sampling (2000 proposals, 512 RoIs
        # per image) would spend nearly all the compute on background.
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        box_detections_per_img=20,
    )


@dataclass
class TorchvisionOracle:
    """A torchvision Mask R-CNN as an oracle. Thresholds as in the paper: score 0.05, mask 0.5."""

    model: nn.Module
    classes: tuple[str, ...]
    score_threshold: float = 0.05
    mask_threshold: float = 0.5
    device: str = "cpu"
    arch: DetectorArch | None = field(default=None, repr=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", **thresholds) -> "TorchvisionOracle":
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights.is_file():
            raise FileNotFoundError(
                f"{folder}: no detector here (need config.json and model.safetensors; the shapes world's is "
                "made by its world_detector stage); elsewhere set the oracle path in params.yaml"
            )
        with loading_model(folder, "detector"):
            raw = json.loads(config_path.read_text())
            arch = DetectorArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
            model = build_maskrcnn(arch)
            model.load_state_dict(load_file(str(weights)))
        return cls(model.to(device).eval(), arch.classes, device=device, arch=arch, **thresholds)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        if self.arch is None:
            raise ValueError("save_pretrained needs the DetectorArch the model was built from")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.arch), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @torch.no_grad()
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        self.model.eval()
        tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(self.device) for im in images]
        outputs = self.model(tensors)
        results = []
        for out in outputs:
            keep = out["scores"] >= self.score_threshold
            masks = (out["masks"][keep, 0] >= self.mask_threshold).cpu().numpy()
            results.append(Detections(
                classes=[self.classes[int(i) - 1] for i in out["labels"][keep]],
                scores=out["scores"][keep].cpu().numpy().astype(np.float32),
                masks=masks,
            ))
        return results


# --- the paper's oracles: COCO-trained detectors, names mapped to the world's -------------------


def _map_detections(names: list[str], scores: np.ndarray, masks: np.ndarray, world: str) -> Detections:
    """Keep detections of classes the world knows, renamed to its spelling (COCO -> VOC)."""
    from groundiff.worlds.paper import coco_name_in

    keep, out_names = [], []
    for i, name in enumerate(names):
        mapped = coco_name_in(world, name)
        if mapped is not None:
            keep.append(i)
            out_names.append(mapped)
    order = np.argsort(-scores[keep], kind="stable") if keep else np.zeros(0, int)
    keep = np.asarray(keep, int)[order]
    return Detections([out_names[i] for i in order], scores[keep].astype(np.float32), masks[keep])


class _COCODetector:
    """What every COCO-trained oracle shares: its categories, seen through the world's names."""

    world: str
    categories: list[str]

    @property
    def classes(self) -> tuple[str, ...]:
        """The world's classes this detector can find (VOC: all 20 of its 80 COCO classes)."""
        from groundiff.worlds.paper import coco_name_in

        names = (coco_name_in(self.world, c) for c in self.categories if c not in ("__background__", "N/A"))
        return tuple(n for n in names if n is not None)


@dataclass
class TorchvisionCOCOOracle(_COCODetector):
    """torchvision's COCO Mask R-CNN (ResNet-50 FPN, v1 or v2) as the oracle of the voc/coco worlds.

    weights: a local state-dict file (.pth via `torch.load(weights_only=True)`, or .safetensors),
    or "torchvision" for torchvision's own COCO weights (downloaded once into the torch hub cache).
    """

    model: nn.Module
    world: str
    categories: list[str]
    score_threshold: float = 0.05
    mask_threshold: float = 0.5
    device: str = "cpu"

    @classmethod
    def load(cls, world: str, weights: str, arch: str = "maskrcnn_resnet50_fpn_v2", device: str = "cpu",
             score_threshold: float = 0.05, mask_threshold: float = 0.5, min_size: int = 800) -> "TorchvisionCOCOOracle":
        from torchvision.models import detection

        builders = {
            "maskrcnn_resnet50_fpn": (detection.maskrcnn_resnet50_fpn, detection.MaskRCNN_ResNet50_FPN_Weights),
            "maskrcnn_resnet50_fpn_v2": (detection.maskrcnn_resnet50_fpn_v2, detection.MaskRCNN_ResNet50_FPN_V2_Weights),
        }
        if arch not in builders:
            raise ValueError(f"unknown oracle arch {arch!r}; choose one of {', '.join(builders)}")
        build, enum = builders[arch]
        categories = list(enum.COCO_V1.meta["categories"])
        if weights == "torchvision":
            try:
                model = build(weights=enum.COCO_V1, min_size=min_size)
            except Exception as err:  # offline: urllib / hub errors of several kinds
                raise FileNotFoundError(
                    f"could not fetch torchvision's COCO weights for {arch} ({err}). Download them on a "
                    "machine with internet and set the oracle's `weights` param to the .pth file"
                ) from err
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"oracle weights {path} not found. Give a local COCO Mask R-CNN state dict (.pth or "
                    f".safetensors) for {arch}, or weights: torchvision to download torchvision's"
                )
            model = build(weights=None, weights_backbone=None, num_classes=len(categories), min_size=min_size)
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        model.roi_heads.score_thresh = score_threshold  # torchvision's default (0.05) would hide lower ones
        return cls(model.to(device).eval(), world, categories, score_threshold, mask_threshold, device)

    @torch.no_grad()
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(self.device) for im in images]
        results = []
        for out in self.model(tensors):
            keep = out["scores"] >= self.score_threshold
            names = [self.categories[int(i)] for i in out["labels"][keep]]
            masks = (out["masks"][keep, 0] >= self.mask_threshold).cpu().numpy()
            results.append(_map_detections(names, out["scores"][keep].cpu().numpy(), masks, self.world))
        return results


class MMDetOracle(_COCODetector):
    """The paper's exact oracle: an mmdetection Mask R-CNN (Swin-S, 3x), when mmdet is installed."""

    def __init__(self, world: str, config: str, checkpoint: str, device: str = "cpu",
                 score_threshold: float = 0.05, mask_threshold: float = 0.5) -> None:
        try:
            from mmdet.apis import init_detector
        except ImportError as err:
            raise ImportError(
                "the mmdet oracle backend needs mmdetection with the compiled mmcv: `bash scripts/install_mmseg.sh` "
                "installs mmdet 3.3.0 with it (building the mmcv 2.1.0 wheel once, about 23 min on 2 cores), "
                f"or use oracle.backend: torchvision ({type(err).__name__}: {err})"
            ) from err
        self.world, self.score_threshold, self.mask_threshold = world, score_threshold, mask_threshold
        self.model = init_detector(config, checkpoint, device=device)
        self.categories = list(self.model.dataset_meta["classes"])

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        from mmdet.apis import inference_detector

        results = []
        for image in images:
            inst = inference_detector(self.model, image[:, :, ::-1].copy()).pred_instances  # mmdet wants BGR
            scores = inst.scores.cpu().numpy()
            keep = scores >= self.score_threshold
            names = [self.categories[int(i)] for i in inst.labels.cpu().numpy()[keep]]
            masks = inst.masks.cpu().numpy()[keep].astype(bool)
            results.append(_map_detections(names, scores[keep], masks, self.world))
        return results


class Detectron2Oracle(_COCODetector):
    """A detectron2 COCO Mask R-CNN as the oracle, when detectron2 is installed."""

    def __init__(self, world: str, config: str, checkpoint: str, device: str = "cpu",
                 score_threshold: float = 0.05) -> None:
        try:
            from detectron2.config import get_cfg
            from detectron2.data import MetadataCatalog
            from detectron2.engine import DefaultPredictor
        except ImportError as err:
            raise ImportError(
                "the detectron2 oracle backend needs detectron2, which is on no package registry: build it from "
                "its source into .venv with `.venv/bin/python -m pip install --no-build-isolation "
                "'git+https://github.com/facebookresearch/detectron2.git'` (needs git, a C++ compiler and access "
                "to GitHub; docs/backends.md#detectron2), or use oracle.backend: torchvision "
                f"({type(err).__name__}: {err})"
            ) from err
        cfg = get_cfg()
        cfg.merge_from_file(config)
        cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = checkpoint, device
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
        self.world, self.predictor = world, DefaultPredictor(cfg)
        self.categories = list(MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes)

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        results = []
        for image in images:
            inst = self.predictor(image[:, :, ::-1])["instances"].to("cpu")  # detectron2 wants BGR
            names = [self.categories[int(i)] for i in inst.pred_classes.numpy()]
            results.append(_map_detections(names, inst.scores.numpy(), inst.pred_masks.numpy().astype(bool), self.world))
        return results
