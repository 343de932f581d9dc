"""Preflight for the paper's worlds: are the checkpoints and datasets there, before hours of work?

Stable Diffusion, the COCO Mask R-CNN and PASCAL VOC / COCO cannot be fetched at run time on
every machine, so before any long stage starts `check_paper_world` lists everything missing, each
with how to provide it, and `require_paper_world` raises one error carrying the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OracleParams:
    backend: str = "torchvision"  # torchvision | mmdet | detectron2
    weights: str = "torchvision"  # local checkpoint file, or "torchvision" for torchvision's COCO weights
    arch: str = "maskrcnn_resnet50_fpn_v2"  # torchvision builder name
    config: str = ""  # mmdet / detectron2 config file

    def __post_init__(self) -> None:
        if self.backend not in ("torchvision", "mmdet", "detectron2"):
            raise ValueError(f"oracle.backend must be torchvision, mmdet or detectron2, got {self.backend!r}")


@dataclass(frozen=True)
class PaperWorldParams:
    """params.yaml `voc:` / `coco:`: where the paper world's models and data come from."""

    diffusion: str = "runwayml/stable-diffusion-v1-5"  # hub id (in the local HF cache) or a local folder
    oracle: OracleParams = field(default_factory=OracleParams)
    data_root: str = ""  # VOC: .../VOCdevkit/VOC2012; COCO: the folder with annotations/ and train2017/


class WorldSetupError(FileNotFoundError):
    """Something a paper world needs is missing; the message lists all of it."""


def _check_diffusion(source: str) -> list[str]:
    path = Path(source)
    if path.exists():
        if not (path / "model_index.json").is_file():
            return [f"diffusion: {path} is not a diffusers pipeline folder (no model_index.json). "
                    "Point `diffusion` at a folder saved with `save_pretrained`, or at a hub id."]
        return []
    if source.count("/") != 1:
        return [f"diffusion: {source!r} is neither a local folder nor a hub id like runwayml/stable-diffusion-v1-5."]
    from huggingface_hub import try_to_load_from_cache

    if try_to_load_from_cache(source, "model_index.json") is None:
        return [f"diffusion: {source} is not in the local Hugging Face cache. On a machine with internet run "
                f"`huggingface-cli download {source}` (or `StableDiffusionPipeline.from_pretrained('{source}')` once), "
                "or set `diffusion` to a local pipeline folder."]
    return []


def _check_oracle(oracle: OracleParams) -> list[str]:
    problems = []
    if oracle.backend == "torchvision" and oracle.weights == "torchvision":
        from torch.hub import get_dir
        from torchvision.models import detection

        enum = {"maskrcnn_resnet50_fpn": detection.MaskRCNN_ResNet50_FPN_Weights,
                "maskrcnn_resnet50_fpn_v2": detection.MaskRCNN_ResNet50_FPN_V2_Weights}.get(oracle.arch)
        if enum is None:
            return [f"oracle.arch: unknown {oracle.arch!r}; use maskrcnn_resnet50_fpn or maskrcnn_resnet50_fpn_v2"]
        cached = Path(get_dir()) / "checkpoints" / enum.COCO_V1.url.rsplit("/", 1)[-1]
        if not cached.is_file():
            problems.append(f"oracle: torchvision's COCO weights are not in {cached.parent}. Download "
                            f"{enum.COCO_V1.url} there on a machine with internet, or set oracle.weights to a local file.")
    elif not Path(oracle.weights).is_file():
        problems.append(f"oracle.weights: {oracle.weights} not found. Give a COCO-trained Mask R-CNN checkpoint "
                        f"for the {oracle.backend} backend.")
    if oracle.backend in ("mmdet", "detectron2") and not Path(oracle.config).is_file():
        problems.append(f"oracle.config: {oracle.config or '(empty)'} not found; the {oracle.backend} backend needs its config file.")
    return problems


def _check_data(world: str, root: str) -> list[str]:
    if not root:
        return [f"data_root: empty. Set {world}.data_root to the "
                + ("VOCdevkit/VOC2012 folder." if world == "voc" else "COCO 2017 folder (annotations/, train2017/, val2017/).")]
    base = Path(root)
    if world == "voc":
        need = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"]
        how = "Download PASCAL VOC 2012 (VOCtrainval_11-May-2012.tar) and extract it"
    else:
        need = ["annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"]
        how = "Download COCO 2017 train/val images and annotations and extract them"
    missing = [p for p in need if not (base / p).exists()]
    if missing:
        return [f"data_root: {base} lacks {', '.join(missing)}. {how} so that {base} holds them."]
    return []


def check_paper_world(world: str, params: PaperWorldParams) -> list[str]:
    """Everything missing for `world` ('voc' or 'coco'), one line each with the fix; [] when ready."""
    if world not in ("voc", "coco"):
        raise ValueError(f"{world!r} is not a paper world (voc, coco)")
    return _check_diffusion(params.diffusion) + _check_oracle(params.oracle) + _check_data(world, params.data_root)


def require_paper_world(world: str, params: PaperWorldParams) -> None:
    problems = check_paper_world(world, params)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise WorldSetupError(
            f"the {world} world is not ready ({len(problems)} problem(s)); nothing was run:\n{lines}\n"
            f"Fix these in params.yaml ({world}: ...) or on disk, or switch back with world.name: shapes."
        )
