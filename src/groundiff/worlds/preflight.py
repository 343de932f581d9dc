"""Preflight for the paper's worlds: are the checkpoints and datasets there, before hours of work?

Stable Diffusion, the COCO Mask R-CNN and PASCAL VOC / COCO cannot be fetched at run time on
every machine, so before any long stage starts `check_paper_world` lists everything missing, each
with how to provide it, and `require_paper_world` raises one error carrying the whole list.
`describe_sources` / `shapes_sources` say what a world's models and data are (sources.json).
"""

from __future__ import annotations

from pathlib import Path

from groundiff.core.io import file_digest
from groundiff.core.paths import looks_like_hub_id, world_detector, world_diffusion
from groundiff.core.schema import OracleParams, PaperWorldParams


class WorldSetupError(FileNotFoundError):
    """Something a paper world needs is missing; the message lists all of it."""


#: What a Stable Diffusion v1.x folder saved with `save_pretrained` holds (and this project loads).
PIPELINE_PARTS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "tokenizer", "scheduler/scheduler_config.json")


def missing_pipeline_parts(folder: Path) -> list[str]:
    """The PIPELINE_PARTS absent from a local pipeline folder (an interrupted download, say)."""
    return [part for part in PIPELINE_PARTS if not (folder / part).exists()]


def _check_diffusion(source: str) -> list[str]:
    path = Path(source)
    if path.exists():
        if not (path / "model_index.json").is_file():
            return [f"diffusion: {path} is not a diffusers pipeline folder (no model_index.json). "
                    "Point `diffusion` at a folder saved with `save_pretrained`, or at a hub id."]
        missing = missing_pipeline_parts(path)
        if missing:
            return [f"diffusion: {path} lacks {', '.join(missing)}; a Stable Diffusion v1.x folder saved with "
                    "save_pretrained has them all (an interrupted copy or download?)"]
        return []
    if not looks_like_hub_id(source):
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


def _check_sbd(world: str, root: str) -> list[str]:
    if not root:
        return []
    if world != "voc":
        return [f"sbd_root: SBD augments PASCAL VOC only; leave {world}.sbd_root empty"]
    base = Path(root)
    missing = [p for p in ("cls", "train.txt", "val.txt") if not (base / p).exists()]
    if missing:
        return [f"sbd_root: {base} lacks {', '.join(missing)}. Download SBD (benchmark.tgz) and point sbd_root "
                "at its benchmark_RELEASE/dataset folder, or leave it empty to train on VOC's 1464 images."]
    return []


def check_paper_world(world: str, params: PaperWorldParams) -> list[str]:
    """Everything missing for `world` ('voc' or 'coco'), one line each with the fix; [] when ready."""
    if world not in ("voc", "coco"):
        raise ValueError(f"{world!r} is not a paper world (voc, coco)")
    return (_check_diffusion(params.diffusion) + _check_oracle(params.oracle)
            + _check_data(world, params.data_root) + _check_sbd(world, params.sbd_root))


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def diffusion_folder(source: str) -> Path:
    """The local folder holding the pipeline: the path itself, or the hub id's cached snapshot."""
    if not looks_like_hub_id(source):
        return Path(source)
    from huggingface_hub import try_to_load_from_cache

    return Path(try_to_load_from_cache(source, "model_index.json")).parent


def describe_diffusion(source: str) -> dict:
    """The pipeline's folder (hub snapshot) and its files: configs by content, weights (GBs) by
    size; a swapped checkpoint changes at least one of them."""
    folder = diffusion_folder(source)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"source": source,
            "snapshot": folder.name if looks_like_hub_id(source) else None,
            "files": {p.relative_to(folder).as_posix(): _sha256(p)[:16] if p.suffix in (".json", ".txt")
                      else p.stat().st_size for p in files}}


def describe_oracle(oracle: OracleParams) -> dict:
    """The oracle's backend and checkpoint, with the checkpoint file's sha256."""
    record = {"backend": oracle.backend, "arch": oracle.arch, "weights": oracle.weights,
              "config": oracle.config or None, "min_size": oracle.min_size}
    if oracle.weights != "torchvision":
        record["sha256"] = _sha256(Path(oracle.weights))
    return record


def describe_sources(world: str, params: PaperWorldParams) -> dict:
    """What a paper world's models and data are, precisely enough that a change shows up in DVC.
    Call after `require_paper_world`."""
    return {"world": world, "diffusion": describe_diffusion(params.diffusion), "oracle": describe_oracle(params.oracle),
            "data": {"data_root": params.data_root, "sbd_root": params.sbd_root or None,
                     "max_train": params.max_train, "max_val": params.max_val}}


def shapes_sources() -> dict:
    """The shapes world's record: its models are made by the world_* stages (or shipped in git),
    its data rendered by world_data; nothing to fetch."""
    return {"world": "shapes", "diffusion": {"trained_by": "world_diffusion", "folder": str(world_diffusion("shapes"))},
            "oracle": {"trained_by": "world_detector", "folder": str(world_detector("shapes"))},
            "data": {"rendered_by": "world_data"}}


def require_paper_world(world: str, params: PaperWorldParams) -> None:
    problems = check_paper_world(world, params)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise WorldSetupError(
            f"the {world} world is not ready ({len(problems)} problem(s)); nothing was run:\n{lines}\n"
            f"Fix these in params.yaml ({world}: ...) or on disk, or switch back with world.name: shapes."
        )
