"""The paper worlds' preflight: everything missing is listed at once, with how to provide it."""

import json

import pytest

from groundiff.worlds.preflight import PIPELINE_PARTS, OracleParams, PaperWorldParams, WorldSetupError, check_paper_world, require_paper_world


def _voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    return root


def test_nothing_there_lists_every_problem_with_its_fix(tmp_path):
    params = PaperWorldParams(diffusion=str(tmp_path / "no_sd"), oracle=OracleParams(weights=str(tmp_path / "x.pth")),
                              data_root=str(tmp_path / "nothing"))
    problems = check_paper_world("voc", params)
    assert len(problems) == 3
    with pytest.raises(WorldSetupError) as err:
        require_paper_world("voc", params)
    message = str(err.value)
    assert "(3 problem(s)); nothing was run" in message
    assert "neither a local folder nor a hub id" in message  # a missing path is no hub id either
    assert "x.pth not found" in message and "lacks JPEGImages" in message and "VOC 2012" in message


def test_a_complete_local_setup_passes(tmp_path):
    sd = tmp_path / "sd"
    for part in PIPELINE_PARTS:
        (sd / part).parent.mkdir(parents=True, exist_ok=True)
        (sd / part).mkdir() if "." not in part else (sd / part).write_text("{}")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    weights = tmp_path / "coco.pth"
    weights.write_bytes(b"weights")
    params = PaperWorldParams(diffusion=str(sd), oracle=OracleParams(weights=str(weights)), data_root=str(_voc_root(tmp_path)))
    assert check_paper_world("voc", params) == []
    require_paper_world("voc", params)
    (sd / "unet/config.json").unlink()  # an interrupted copy: named before any stage loads it
    assert check_paper_world("voc", params) == [
        f"diffusion: {sd} lacks unet/config.json; a Stable Diffusion v1.x folder saved with save_pretrained has "
        "them all (an interrupted copy or download?)"]


def test_hub_id_not_cached_and_coco_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    problems = check_paper_world("coco", PaperWorldParams(data_root=str(tmp_path)))
    text = "\n".join(problems)
    assert "huggingface-cli download runwayml/stable-diffusion-v1-5" in text
    assert "torchvision's COCO weights are not in" in text
    assert "instances_train2017.json" in text


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="torchvision, mmdet or detectron2"):
        OracleParams(backend="yolo")


def test_world_setup_stage(project):
    from conftest import tiny_params, write_params
    from groundiff.stages import world_setup

    world_setup.main()
    summary = json.loads((project / "metrics/world_setup.json").read_text())
    assert summary["unseen"] == ["ring", "heart", "arrow"] and len(summary["seen"]) == 7
    params = tiny_params()
    params["world"]["name"] = "voc"
    params["voc"] = {"diffusion": str(project / "sd"), "data_root": str(project / "VOC2012")}
    write_params(project, params)
    with pytest.raises(WorldSetupError, match="the voc world is not ready"):
        world_setup.main()
    assert json.loads((project / "metrics/world_setup.json").read_text()) == summary  # untouched
