"""The voc and coco worlds through every stage, on CPU, with nothing downloaded.

Stable Diffusion is a tiny randomly initialised SD-architecture pipeline whose tokenizer knows the
world's class names; the oracle is torchvision's COCO Mask R-CNN architecture without weights,
saved as a local checkpoint; PASCAL VOC / COCO are fixture datasets written in their real on-disk
formats (JPEGImages + palette PNGs + ImageSets lists; instances_*.json with polygons, RLE and
crowd regions). Switching worlds goes through `groundiff world <name>`, as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from groundiff.cli import main as cli_main
from groundiff.worlds.paper_data import build_coco, build_voc
from groundiff.data.voc import IGNORE, load_label_png, read_split, save_label_png
from groundiff.stages import (eval_grounding, eval_zs3, prompts, pseudo_label, report, synth_dataset, synthesize,
                              train_grounding, train_segmenter, world_binding, world_data, world_detector,
                              world_diffusion, world_fidelity, world_setup)
from groundiff.core.params import Params
from groundiff.worlds.active import World
from groundiff.worlds.paper import COCO_CLASSES, VOC_CLASSES
from groundiff.worlds.preflight import WorldSetupError
from groundiff.app.presets import apply_preset

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(48, 64), (64, 40), (56, 56), (40, 72)]  # real photos differ in size


def _scene(rng: np.random.Generator, size: tuple[int, int], n_classes: int) -> tuple[np.ndarray, list[tuple]]:
    """A photo-like image with 1-2 rectangles; returns the image and (label, y0, y1, x0, x1) boxes."""
    h, w = size
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + int(rng.integers(8, h // 2)), x0 + int(rng.integers(8, w // 2))
        label = int(rng.integers(1, n_classes + 1))
        image[y0:y1, x0:x1] = rng.integers(100, 255, 3, dtype=np.uint8)
        boxes.append((label, y0, y1, x0, x1))
    return image, boxes


def write_voc_fixture(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> Path:
    """VOCdevkit/VOC2012 as downloaded: JPEGs, palette label PNGs with 255 borders, split lists."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": []}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        image_id = f"2007_{i:06d}"
        image, boxes = _scene(rng, SIZES[i % len(SIZES)], len(VOC_CLASSES))
        label = np.zeros(image.shape[:2], np.uint8)
        for cls, y0, y1, x0, x1 in boxes:
            label[y0:y1, x0:x1] = IGNORE  # VOC's 255 object borders
            label[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = cls
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        save_label_png(voc / "SegmentationClass" / f"{image_id}.png", label)
        ids[split].append(image_id)
    for split, names in ids.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return voc


def write_coco_fixture(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> Path:
    """COCO 2017 as downloaded: train2017/ val2017/ JPEGs and instances_*.json (polygons, RLE, crowd)."""
    from pycocotools import mask as mask_utils

    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    rng = np.random.default_rng(seed)
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    meta = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # COCO's 91-slot id order
    cat_ids = {name: i for i, name in enumerate(meta) if name not in ("__background__", "N/A")}
    categories = [{"id": i, "name": n, "supercategory": "thing"} for n, i in cat_ids.items()]
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1000)):
        (coco / f"{split}2017").mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n):
            image_id = offset + i + 1
            h, w = SIZES[i % len(SIZES)]
            image, boxes = _scene(rng, (h, w), len(COCO_CLASSES))
            name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(coco / f"{split}2017" / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            for k, (cls, y0, y1, x0, x1) in enumerate(boxes):
                ann = {"id": len(anns) + 1 + offset, "image_id": image_id, "category_id": cat_ids[COCO_CLASSES[cls - 1]],
                       "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0}
                if k == 0:  # polygon
                    ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                else:  # crowd region as compressed RLE
                    mask = np.zeros((h, w), np.uint8, order="F")
                    mask[y0:y1, x0:x1] = 1
                    rle = mask_utils.encode(mask)
                    ann.update(iscrowd=1, segmentation={"size": [h, w], "counts": rle["counts"].decode()})
                anns.append(ann)
        (coco / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return coco


#: The only classes the test oracle detects: in split 1 of both worlds, person is seen and train unseen.
ORACLE_CLASSES = ("person", "train")


def write_coco_oracle(path: Path) -> Path:
    """torchvision's COCO Mask R-CNN architecture, random weights, as a local checkpoint file.

    Random, except that its box predictor finds only ORACLE_CLASSES, each as one whole-image box:
    fully random weights put 100 detections (the cap) on every image, each ~1 GFLOP and ~2 MB in
    the mask head, and the coco world's world_fidelity detects 82 images at once (22 GB, minutes).
    Like a trained detector, this one reports a few instances per image, with image-dependent scores.
    """
    import torch
    from safetensors.torch import save_file
    from torchvision.models import detection
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    torch.manual_seed(0)
    model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        others = torch.ones(len(categories), dtype=torch.bool)
        others[[0, *(categories.index(name) for name in ORACLE_CLASSES)]] = False
        predictor.cls_score.bias[others] = -1e4  # softmax score exactly 0: never above any threshold
        # proposals = the anchors, and every class box grown to the clip (x62.5 a side): after clipping,
        # each is the whole image, so per-class NMS keeps one box per class and image
        model.rpn.head.bbox_pred.weight.zero_()
        model.rpn.head.bbox_pred.bias.zero_()
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, 100.0, 100.0]).repeat(len(categories)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


TINY = {
    "world.device": "cpu",
    "prompts.n": 6,
    "synthesize.sampling.steps": 2, "synthesize.sampling.batch_size": 3, "synthesize.shard_size": 4,
    "pseudo_label.score_threshold": 0.0, "pseudo_label.batch_size": 4,
    "train_grounding.steps": 2, "train_grounding.batch_size": 2, "train_grounding.strategy": "normal",
    "train_grounding.d_model": 32, "train_grounding.n_heads": 2, "train_grounding.ffn_dim": 32,
    "train_grounding.n_layers": 1, "train_grounding.checkpoint_every": 1, "train_grounding.log_every": 1,
    "eval_grounding.per_category": 1, "eval_grounding.examples_per_category": 1,
    "eval_grounding.sampling.steps": 2, "eval_grounding.sampling.batch_size": 3,
    "eval_grounding.oracle_score_threshold": 0.0,
    "world_fidelity.prompts.one_per_class": 1, "world_fidelity.prompts.two_object": 2,
    "world_fidelity.sampling.steps": 2, "world_fidelity.sampling.batch_size": 8,
    "world_binding.per_class": 1, "world_binding.sampling.steps": 2, "world_binding.sampling.batch_size": 8,
    "world_binding.oracle_score_threshold": 0.0,
    "synth_dataset.n_one": 2, "synth_dataset.n_two": 2, "synth_dataset.n_complicated": 1,
    "synth_dataset.sampling.steps": 2, "synth_dataset.sampling.batch_size": 3, "synth_dataset.shard_size": 4,
    "train_segmenter.segmenter.backbone": "", "train_segmenter.segmenter.backbone_widths": [8, 16],
    "train_segmenter.segmenter.backbone_depths": [1, 1], "train_segmenter.segmenter.stem_width": 8,
    "train_segmenter.segmenter.fpn_size": 32, "train_segmenter.segmenter.d_model": 16,
    "train_segmenter.segmenter.num_queries": 6, "train_segmenter.segmenter.decoder_layers": 1,
    "train_segmenter.segmenter.decoder_heads": 2, "train_segmenter.segmenter.decoder_ffn": 32,
    "train_segmenter.segmenter.input_size": 32, "train_segmenter.segmenter.steps": 2,
    "train_segmenter.segmenter.batch_size": 2, "train_segmenter.segmenter.warmup_steps": 1,
    "train_segmenter.segmenter.checkpoint_every": 1, "train_segmenter.segmenter.log_every": 1,
    "eval_zs3.batch_size": 4, "eval_zs3.figure_images": 2,
}


def setup_world(project: Path, world: str) -> None:
    """What a user does: download models and data into the project, `groundiff world <name>`, edit paths."""
    from groundiff.testing import tiny_sd_pipeline

    classes = VOC_CLASSES if world == "voc" else COCO_CLASSES
    words = sorted({w for c in classes for w in c.split()} - {"pottedplant", "tvmonitor"})
    split_words = ["pottedplant", "tvmonitor"] if world == "voc" else []  # two sub-word tokens each
    tiny_sd_pipeline(project / "models" / "tiny-sd", words, split_words)
    oracle = write_coco_oracle(project / "models" / "coco_maskrcnn.safetensors")
    data_root = write_voc_fixture(project / "data") if world == "voc" else write_coco_fixture(project / "data")
    cli_main(["world", world, "--device", "cpu"])
    params = yaml.safe_load(Path("params.yaml").read_text())
    assert params["world"]["name"] == world and params["synthesize"]["sampling"]["steps"] == 50  # the paper's
    # Shrink to test size and point the world at the downloads, through the same dotted-key editor.
    # The oracle sees the 128 px images at 32 px: ~30 proposals per image through its box head (64 px: ~230).
    apply_preset(Path("params.yaml"), world, {
        **TINY, f"{world}.diffusion": "models/tiny-sd", f"{world}.data_root": str(data_root.relative_to(project)),
        f"{world}.oracle.weights": "models/coco_maskrcnn.safetensors",
        f"{world}.oracle.arch": "maskrcnn_resnet50_fpn", f"{world}.oracle.min_size": 32})
    assert oracle.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("world", ["voc", "coco"])
def test_every_stage_runs_on_the_paper_world(project, world):
    # Before anything is in place, world_setup fails fast with everything missing in one message.
    cli_main(["world", world, "--device", "cpu"])
    with pytest.raises(WorldSetupError) as err:
        world_setup.main()
    assert "diffusion" in str(err.value) and "data_root" in str(err.value)

    setup_world(project, world)
    split = World(Params()).split
    assert split.world == world and len(split.seen) == (15 if world == "voc" else 65)

    world_setup.main()
    sources = json.loads(Path(f"worlds/{world}/sources.json").read_text())
    assert sources["oracle"]["sha256"] and "unet/config.json" in sources["diffusion"]["files"]
    world_data.main()
    real = Path(f"data/{world}/real")
    assert [i for i, _, _ in read_split(real, "val")]
    train = (real / "ImageSets/Segmentation/train.txt").read_text().split()
    dev = [i for i, _, _ in read_split(Path(f"data/{world}/dev"), "dev")]  # 4 of the 6 held out (tiny n_dev)
    assert len(train) == 2 and len(dev) == 4 and not set(train) & set(dev)
    assert json.loads(Path("metrics/world_data.json").read_text())["dev"] == {"images": 4}
    world_diffusion.main()
    assert json.loads(Path(f"worlds/{world}/diffusion/source.json").read_text())["unet"]["cross_attention_dim"] == 16
    world_detector.main()
    detector = json.loads(Path(f"worlds/{world}/detector/source.json").read_text())
    assert set(detector["classes"]) == set(split.classes)
    world_fidelity.main()
    assert json.loads(Path("metrics/world_fidelity.json").read_text())["images"] == len(split.classes) + 2
    world_binding.main()  # SD's multi-token class words ("potted plant") and every cross-attention layer
    binding = json.loads(Path("metrics/world_binding.json").read_text())
    assert binding["images"] == len(split.classes) and binding["n_layers"] > 0
    assert -1 <= binding["class_word_cosine_mean"] <= 1

    prompts.main()
    synthesize.main()
    pseudo_label.main()
    train_grounding.main()
    eval_grounding.main()
    p1 = json.loads(Path("metrics/protocol1.json").read_text())
    assert set(p1) == {"ours", "daam"} and "one_unseen" in p1["ours"]

    synth_dataset.main()
    variants = list(yaml.safe_load(Path("params.yaml").read_text())["train_segmenter"]["variants"])
    for variant in variants:
        train_segmenter.main([variant])
    eval_zs3.main()
    zs3 = json.loads(Path("metrics/zs3.json").read_text())
    assert set(zs3) == set(variants)
    assert set(zs3["real_all"]["per_class"]) == set(split.classes)
    report.main()
    assert world in Path("reports/report.md").read_text().lower()


def test_voc_view_links_images_and_adds_sbd(tmp_path):
    from scipy.io import savemat

    voc = write_voc_fixture(tmp_path, n_train=3, n_val=2)
    sbd = tmp_path / "sbd"
    (sbd / "cls").mkdir(parents=True)
    val_ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    # SBD lists one new image, one VOC train image and one VOC val image (which must not leak in).
    new = "2008_000001"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(voc / "JPEGImages" / f"{new}.jpg")
    seg = np.zeros((20, 30), np.uint8)
    seg[5:10, 5:10] = 7
    savemat(sbd / "cls" / f"{new}.mat", {"GTcls": {"Segmentation": seg, "CategoriesPresent": np.array([7])}})
    (sbd / "train.txt").write_text(f"{new}\n2007_000000\n")
    (sbd / "val.txt").write_text(f"{val_ids[0]}\n")

    stats = build_voc(voc, tmp_path / "out", sbd)
    train = (tmp_path / "out/ImageSets/Segmentation/train.txt").read_text().split()
    assert stats == {"train": {"images": 4, "from_sbd": 1}, "val": {"images": 2}}
    assert new in train and val_ids[0] not in train
    assert np.array_equal(load_label_png(tmp_path / "out/SegmentationClass" / f"{new}.png"), seg)
    assert load_label_png(tmp_path / "out/SegmentationClass/2007_000000.png").max() == IGNORE  # borders kept
    limited = build_voc(voc, tmp_path / "out2", None, max_train=2, max_val=1)
    assert limited["train"]["images"] == 2 and limited["val"]["images"] == 1


def test_coco_instances_become_semantic_labels(tmp_path):
    coco = write_coco_fixture(tmp_path, n_train=2, n_val=2)
    stats = build_coco(coco, tmp_path / "out")
    assert stats == {"train": {"images": 2}, "val": {"images": 2}}
    anns = json.loads((coco / "annotations/instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in anns["categories"]}
    first = anns["images"][0]
    label = load_label_png(tmp_path / "out/SegmentationClass" / f"{Path(first['file_name']).stem}.png")
    assert label.shape == (first["height"], first["width"])
    for ann in anns["annotations"]:
        if ann["image_id"] != first["id"]:
            continue
        x, y, w, h = (int(v) for v in ann["bbox"])
        inside = label[y + 1:y + h - 1, x + 1:x + w - 1]
        # crowd regions are ignored; a polygon's inside carries its class (unless a smaller one lies on top)
        expected = IGNORE if ann["iscrowd"] else COCO_CLASSES.index(names[ann["category_id"]]) + 1
        assert (inside == expected).mean() > 0.3


def test_shapes_preset_is_what_params_yaml_holds(tmp_path):
    """`groundiff world shapes` on the shipped params.yaml changes nothing: the two never drift apart."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert apply_preset(tmp_path / "params.yaml", "shapes") == []


def test_world_command_round_trips_params(project):
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")  # the real file, comments and all
    cli_main(["world", "shapes"])
    before = Path("params.yaml").read_text()
    with pytest.raises(SystemExit):  # an invalid result leaves params.yaml as it was
        cli_main(["world", "voc", "--split", "9"])
    assert Path("params.yaml").read_text() == before
    cli_main(["world", "coco"])
    text = Path("params.yaml").read_text()
    assert "name: coco" in text and "device: cuda" in text
    cli_main(["world", "shapes"])
    after = Path("params.yaml").read_text()
    assert yaml.safe_load(after) == yaml.safe_load(before)

    def comments(text: str) -> list[str]:  # every comment survives (its column may shift)
        return [line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line]

    assert comments(after) == comments(before) and len(comments(before)) > 50


def test_incomplete_pipeline_and_oracle_weights_are_named(project):
    cli_main(["world", "voc", "--device", "cpu"])
    voc = write_voc_fixture(project / "data", n_train=2, n_val=1)
    (project / "models" / "sd").mkdir(parents=True)
    (project / "models" / "sd" / "model_index.json").write_text("{}")  # a download that stopped early
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["voc"].update(diffusion="models/sd", data_root=str(voc.relative_to(project)))
    params["voc"]["oracle"]["weights"] = "models/x.pth"
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(WorldSetupError, match=r"oracle.weights: .*x.pth not found") as err:
        world_setup.main()
    assert "models/sd lacks unet/config.json, vae/config.json" in str(err.value)  # both listed
    (project / "models" / "x.pth").write_bytes(b"\0")  # present (preflight checks presence, not content)
    with pytest.raises(WorldSetupError) as err:
        world_setup.main()
    assert "oracle" not in str(err.value)  # only what is missing is listed
    with pytest.raises(WorldSetupError, match="lacks unet/config.json, vae/config.json"):
        world_diffusion.main()  # checked again there, and nothing is written
    assert not Path("worlds/voc/diffusion").exists()
