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
                f"{folder}: no detector here (need config.json and model.safetensors). In the shapes "
                "world run `dvc repro world_detector`; elsewhere set the oracle path in params.yaml"
            )
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
