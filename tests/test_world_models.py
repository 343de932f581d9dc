"""Tiny versions of the world-model trainings: they run, resume exactly, save and load back."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.worlds.oracle import TorchvisionOracle
from groundiff.worlds.fidelity import FidelityConfig, fidelity_metrics, fidelity_prompts, found
from groundiff.worlds.oracle import Detections
from groundiff.worlds.shapes import CLASSES
from groundiff.worlds.shapes_diffusion import (DiffusionConfig, RunOptions, cycles, first_cycle_config, loss_curve,
                                               min_snr_weights, seed_first_cycle, train_diffusion)
from groundiff.worlds.shapes_detector import DetectorConfig, evaluate_mask_ap, train_detector

TINY = DiffusionConfig(vae_steps=2, steps=4, batch_size=4, vae_batch_size=4, vae_channels=8,
                       block_out_channels=(8, 16, 16), attention_heads=2, text_width=16, warmup_steps=1)
OPTS = RunOptions(mixed_precision="no", checkpoint_every=2, log_every=1)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffusion")
    train_diffusion(TINY, OPTS, root / "pipe", root / "work")
    return root / "pipe"


def test_saved_pipeline_loads_and_generates_deterministically(tiny_pipeline):
    from diffusers import StableDiffusionPipeline

    assert isinstance(StableDiffusionPipeline.from_pretrained(tiny_pipeline), StableDiffusionPipeline)
    pipe = load_pipeline(tiny_pipeline)
    cfg = SamplingConfig(steps=3, guidance_scale=3.0, batch_size=2)
    prompts = ["a photograph of a star", "a photograph of a ring and a heart", "a photograph of a cross"]
    a = generate(pipe, prompts, [1, 2, 3], cfg)
    b = generate(pipe, prompts, [1, 2, 3], replace(cfg, batch_size=3))  # batch size must not matter
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)
    c = generate(pipe, prompts[:1], [4], cfg)
    assert not np.array_equal(a[0], c[0])
    assert pipe.tokenizer("a photograph of a hexagon").input_ids[5] == pipe.tokenizer.unk_token_id
    saved = json.loads((tiny_pipeline / "tokenizer/tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None, "the same whether or not training ran here"


def test_diffusion_training_resumes_exactly(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_step_3(metrics):
        if metrics["step"] == 3 and "unet_loss" in metrics:
            raise Stop

    with pytest.raises(Stop):
        train_diffusion(TINY, OPTS, tmp_path / "a", tmp_path / "work_a", on_log=stop_after_step_3)
    train_diffusion(TINY, OPTS, tmp_path / "a", tmp_path / "work_a")  # resumes from step 2
    train_diffusion(TINY, OPTS, tmp_path / "b", tmp_path / "work_b")  # uninterrupted
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a/unet/diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b/unet/diffusion_pytorch_model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
    rows = (tmp_path / "work_a/unet_cycle1_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"], "resumed log has no duplicates"


def test_rendering_in_worker_processes_does_not_change_the_result(tiny_pipeline, tmp_path):
    train_diffusion(TINY, replace(OPTS, data_workers=2), tmp_path / "pipe", tmp_path / "work")
    ahead, inline = _unet_weights(tmp_path / "pipe"), _unet_weights(tiny_pipeline)
    for key in inline:
        torch.testing.assert_close(ahead[key], inline[key], rtol=0, atol=0)


def _unet_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "unet/diffusion_pytorch_model.safetensors")


def test_second_cycle_continues_from_a_shipped_pipeline_exactly(tmp_path):
    """Seeding cycle 1 from a saved pipeline, then training cycle 2, equals training both from scratch."""
    both = replace(TINY, finetune_steps=3, finetune_lr=5e-4, finetune_snr_gamma=5.0, finetune_batch_size=6)
    train_diffusion(TINY, OPTS, tmp_path / "shipped", tmp_path / "work_shipped")
    seed_first_cycle(tmp_path / "shipped", both, tmp_path / "work_cont", [{"step": 4, "loss": 0.5}])
    train_diffusion(both, OPTS, tmp_path / "continued", tmp_path / "work_cont")
    train_diffusion(both, OPTS, tmp_path / "scratch", tmp_path / "work_scratch")
    cont, scratch, shipped = (_unet_weights(tmp_path / d) for d in ("continued", "scratch", "shipped"))
    for key in scratch:
        torch.testing.assert_close(cont[key], scratch[key], rtol=0, atol=1e-6)
    assert any(not torch.equal(scratch[k], shipped[k]) for k in scratch), "cycle 2 changed the weights"
    curve = loss_curve(both, tmp_path / "work_cont")
    assert [r["step"] for r in curve] == [4, 5, 6, 7]  # cycle 2 continues cycle 1's step axis

    # Changing only cycle 2 keeps cycle 1; changing cycle 1 starts over.
    longer = replace(both, finetune_steps=4)
    train_diffusion(longer, OPTS, tmp_path / "longer", tmp_path / "work_cont")
    assert [r["step"] for r in loss_curve(longer, tmp_path / "work_cont")] == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="architecture"):
        seed_first_cycle(tmp_path / "shipped", replace(both, block_out_channels=(8, 16, 32)), tmp_path / "w")


def test_second_cycle_batch_size_defaults_to_the_first_cycles(tmp_path):
    assert [c.batch_size for c in cycles(replace(TINY, finetune_steps=3))] == [4, 4]
    # ... and training uses it: 0 equals the first cycle's 4, while 6 draws other batches. One work
    # dir: changing only finetune_* keeps cycle 1, so it is trained once
    weights = {}
    for size in (0, 4, 6):
        train_diffusion(replace(TINY, finetune_steps=1, finetune_batch_size=size), OPTS, tmp_path / f"p{size}",
                        tmp_path / "work")
        weights[size] = _unet_weights(tmp_path / f"p{size}")
    assert all(torch.equal(weights[0][k], weights[4][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[6][k]) for k in weights[0])
    assert [c.batch_size for c in cycles(replace(TINY, finetune_steps=3, finetune_batch_size=6))] == [4, 6]
    assert "finetune_batch_size" not in first_cycle_config(replace(TINY, finetune_batch_size=6))
    with pytest.raises(ValueError, match="finetune_batch_size >= 0"):
        replace(TINY, finetune_batch_size=-1)


def test_min_snr_weights():
    alphas = torch.tensor([0.5, 0.9, 0.99])  # SNR 1, 9, 99
    torch.testing.assert_close(min_snr_weights(alphas, 5.0), torch.tensor([1.0, 5 / 9, 5 / 99]))
    torch.testing.assert_close(min_snr_weights(alphas, 0.0), torch.ones(3))


def test_detector_trains_saves_and_loads(project, tmp_path):
    from groundiff.stages import world_data

    world_data.main()
    data = project / "data/shapes/real"
    cfg = DetectorConfig(steps=2, batch_size=2, widths=(8, 16, 16), fpn_channels=16)
    oracle = train_detector(data, CLASSES, cfg, tmp_path / "work")
    oracle.save_pretrained(tmp_path / "det")
    loaded = TorchvisionOracle.from_pretrained(tmp_path / "det", score_threshold=0.0)
    oracle.score_threshold = 0.0
    images = [np.full((32, 32, 3), 90, np.uint8), np.zeros((32, 32, 3), np.uint8)]
    for a, b in zip(oracle.detect(images), loaded.detect(images)):
        assert a.classes == b.classes
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    metrics = evaluate_mask_ap(loaded, data, "val")
    assert 0.0 <= metrics["mask_ap50"] <= 1.0


def test_detector_training_resumes_exactly(project, tmp_path):
    """Mask R-CNN samples anchors and RoIs from torch's global generator: the checkpoint keeps its state."""
    from groundiff.stages import world_data

    class Stop(Exception):
        pass

    def stop_at_step_3(metrics):
        if metrics["step"] == 3:
            raise Stop

    world_data.main()
    data, cfg = project / "data/shapes/real", DetectorConfig(steps=4, batch_size=2, widths=(8, 16, 16), fpn_channels=16)
    run = dict(log_every=1, checkpoint_every=2)
    with pytest.raises(Stop):
        train_detector(data, CLASSES, cfg, tmp_path / "a", on_log=stop_at_step_3, **run)
    resumed = train_detector(data, CLASSES, cfg, tmp_path / "a", **run).model.state_dict()  # from step 2
    fresh = train_detector(data, CLASSES, cfg, tmp_path / "b", **run).model.state_dict()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)
    assert (tmp_path / "a/log.csv").read_text() == (tmp_path / "b/log.csv").read_text()


def test_missing_detector_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no detector here.*made by its world_detector stage"):
        TorchvisionOracle.from_pretrained(tmp_path)


def test_damaged_or_mismatched_detector_is_one_error_naming_the_folder(tmp_path):
    """Issue 27: the shipped detector's files, truncated or with a config that disagrees with them."""
    import json
    import shutil

    from groundiff.core.checkpoint import ModelFileError

    shipped = Path(__file__).resolve().parents[1] / "worlds/shapes/detector"
    for damage in ("truncated", "widened"):
        folder = tmp_path / damage
        shutil.copytree(shipped, folder)
        if damage == "truncated":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        else:
            config = json.loads((folder / "config.json").read_text())
            config["fpn_channels"] *= 2
            (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelFileError, match=rf"{damage}: the detector saved there cannot be loaded"):
            TorchvisionOracle.from_pretrained(folder)


def test_fidelity_counts_instances_with_multiplicity():
    det = Detections(classes=["star", "ring", "star"], scores=np.array([0.9, 0.8, 0.3], np.float32),
                     masks=np.zeros((3, 4, 4), bool))
    assert found(det, ["star", "ring"], 0.5) == [True, True]
    assert found(det, ["star", "star"], 0.5) == [True, False]  # the second star is not confident
    table = fidelity_prompts(("star", "ring", "heart"), FidelityConfig(one_per_class=2, two_object=4))
    assert len(table) == 10 and (table["n_objects"] == 2).sum() == 4
    empty = Detections([], np.zeros(0, np.float32), np.zeros((0, 4, 4), bool))
    metrics = fidelity_metrics(table, [det] * 10, ("star", "ring", "heart"), 0.5)
    assert metrics["per_class"]["star"]["one_object_recall"] == 1.0
    assert metrics["per_class"]["heart"]["one_object_recall"] == 0.0
    assert fidelity_metrics(table, [empty] * 10, ("star", "ring", "heart"), 0.5)["one_object_recall"] == 0.0


def test_stage_continue_seeds_the_state_only_when_the_first_cycle_params_match(project):
    """`python -m groundiff.stages.world_diffusion --continue`: dvc.lock's params must equal cycle 1's."""
    import yaml

    from conftest import write_params
    from groundiff.core.params import to_dict
    from groundiff.stages import world_diffusion

    train_diffusion(TINY, OPTS, project / "worlds/shapes/diffusion", project / "work")
    tiny = {k: v for k, v in to_dict(TINY).items() if not k.startswith("finetune_")}
    lock = {"stages": {"world_diffusion": {"params": {"params.yaml": {"world_diffusion.model": tiny}}}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    params = yaml.safe_load((project / "params.yaml").read_text())

    params["world_diffusion"]["model"] = dict(tiny)  # no second cycle yet
    write_params(project, params)
    with pytest.raises(ValueError, match="finetune_steps is 0"):
        world_diffusion.main(["--continue"])
    params["world_diffusion"]["model"] = {**tiny, "lr": 0.01, "finetune_steps": 3}  # cycle 1 changed too
    write_params(project, params)
    with pytest.raises(ValueError, match=r"world_diffusion.model.lr differ"):
        world_diffusion.main(["--continue"])
    params["world_diffusion"]["model"] = {**tiny, "finetune_steps": 3}
    write_params(project, params)
    world_diffusion.main(["--continue"])
    state = project / "worlds/shapes/state/diffusion"
    assert {p.name for p in state.glob("*.safetensors")} == {"vae.safetensors", "unet_cycle1.safetensors"}
    with pytest.raises(ValueError, match="unknown arguments"):
        world_diffusion.main(["--bogus"])


def test_stage_continue_finds_the_first_cycle_in_git_history(project):
    """Once the shipped pipeline holds a second cycle, `--continue` seeds from the last first-cycle commit."""
    import subprocess

    import yaml

    from conftest import write_params
    from groundiff.core.checkpoint import load_training_state
    from groundiff.core.params import to_dict
    from groundiff.stages import world_diffusion

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)

    def ship(cfg, message):
        train_diffusion(cfg, OPTS, project / "worlds/shapes/diffusion", project / "work" / message)
        locked = {"stages": {"world_diffusion": {"params": {"params.yaml": {"world_diffusion.model": to_dict(cfg)}}}}}
        (project / "dvc.lock").write_text(yaml.safe_dump(locked))
        git("add", "dvc.lock", "worlds")
        git("commit", "-m", message)

    git("init", "-q")
    ship(TINY, "cycle1")
    cycle1 = _unet_weights(project / "worlds/shapes/diffusion")
    ship(replace(TINY, finetune_steps=2), "cycle2")
    assert any(not torch.equal(cycle1[k], v) for k, v in _unet_weights(project / "worlds/shapes/diffusion").items())

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["world_diffusion"]["model"] = to_dict(replace(TINY, finetune_steps=5))  # a longer second cycle
    write_params(project, params)
    world_diffusion.main(["--continue"])
    from safetensors.torch import load_file

    state = load_file(project / "worlds/shapes/state/diffusion/unet_cycle1.safetensors")
    for key, value in cycle1.items():
        value_seeded = state[f"unet.{key}"]
        assert torch.equal(value_seeded, value), "cycle 1 must come from the first-cycle commit, not the shipped cycle 2"

    params["world_diffusion"]["model"] = to_dict(replace(TINY, finetune_steps=5, lr=0.01))
    write_params(project, params)
    with pytest.raises(ValueError, match=r"world_diffusion.model.lr differ"):
        world_diffusion.main(["--continue"])


def test_loss_plot_averages_fixed_step_windows(project):
    """Cycle 1 seeded from a shipped curve (one row per 20 steps) and cycle 2 (one per step) plot alike."""
    from groundiff.worlds.shapes_diffusion import write_loss_plot

    rows = [{"step": 20, "loss": 1.0}, {"step": 40, "loss": 0.5}] + [{"step": 40 + i, "loss": i} for i in range(1, 41)]
    write_loss_plot(rows, project / "metrics/world_diffusion_loss.csv")
    lines = (project / "metrics/world_diffusion_loss.csv").read_text().split()
    assert lines == ["step,loss", "20,1.0", "40,0.5", "60,10.5", "80,30.5"]
