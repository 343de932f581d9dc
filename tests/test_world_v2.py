"""World v2's text encoder: a mini-CLIP pretrained on rendered pairs, frozen while the UNet trains,
and a warm start of the UNet from an earlier pipeline. Tiny models; real training steps."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groundiff.worlds.shapes_diffusion import (DiffusionConfig, RunOptions, build_components, render_batch,
                                               train_diffusion)
from groundiff.worlds.shapes_text import caption_targets, clip_loss, content_mask, soft_infonce, token_similarity

TINY = DiffusionConfig(vae_steps=2, steps=4, batch_size=4, vae_batch_size=4, vae_channels=8,
                       block_out_channels=(8, 16, 16), attention_heads=2, text_width=16, warmup_steps=1)
V2 = replace(TINY, text_encoder="clip", clip_steps=6, clip_batch_size=8)
OPTS = RunOptions(mixed_precision="no", checkpoint_every=2, log_every=1)


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return load_file(folder / part / name)


def test_equal_captions_are_positives_of_each_other():
    targets = caption_targets(["a star", "a ring", "a star"])
    assert torch.equal(targets, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    good = torch.tensor([[9.0, 0, 9], [0, 9, 0], [9, 0, 9]])
    assert soft_infonce(good, targets) < soft_infonce(good.roll(1, dims=1), targets)


def test_token_similarity_scores_each_word_by_its_best_patch():
    tokens = torch.tensor([[[1.0, 0], [0, 1], [1, 0]]])  # 1 caption: word x, word y, special token
    mask = torch.tensor([[1.0, 1, 0]])
    patches = torch.tensor([[[1.0, 0], [0, 1]], [[1.0, 0], [1, 0]]])  # image 0 has x and y; image 1 only x
    sim = token_similarity(tokens, mask, patches)
    assert sim.shape == (1, 2)
    assert sim[0, 0] > sim[0, 1]  # y is only in image 0


def test_clip_phase_trains_resumes_exactly_and_freezes_the_text_encoder(tmp_path):
    class Stop(Exception):
        pass

    def stop(metrics):
        if "clip_loss" in metrics and metrics["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_diffusion(V2, OPTS, tmp_path / "a", tmp_path / "work_a", on_log=stop)
    train_diffusion(V2, OPTS, tmp_path / "a", tmp_path / "work_a")
    train_diffusion(V2, OPTS, tmp_path / "b", tmp_path / "work_b")
    for part in ("text_encoder", "unet"):
        wa, wb = _weights(tmp_path / "a", part), _weights(tmp_path / "b", part)
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
    # The shipped text encoder is the pretrained one: the UNet cycle did not move it.
    clip = load_file(tmp_path / "work_b/clip.safetensors")
    shipped = _weights(tmp_path / "b", "text_encoder")
    pretrained = {k[len("text."):]: v for k, v in clip.items() if k.startswith("text.")}
    assert set(shipped) <= set(pretrained)
    for key in shipped:
        torch.testing.assert_close(shipped[key], pretrained[key], rtol=0, atol=0)
    fresh = build_components(V2)["text_encoder"].state_dict()
    assert any(not torch.equal(fresh[k], shipped[k]) for k in shipped), "the mini-CLIP phase trained it"
    log = (tmp_path / "work_a/clip_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == [str(s) for s in range(1, 7)]


def test_clip_loss_falls_on_a_fixed_batch():
    comps = build_components(V2)
    from groundiff.worlds.shapes_text import PatchImageEncoder, TextHeads

    torch.manual_seed(0)
    image, heads, text = PatchImageEncoder(16), TextHeads(16), comps["text_encoder"]
    images, captions = render_batch(replace(V2, uncond_prob=0.0), 0, 16, stream=4)
    params = [p for m in (image, heads, text) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    first = None
    for _ in range(60):
        loss, row = clip_loss(text, heads, image, comps["tokenizer"], images, captions, token_weight=1.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert {"global_loss", "token_loss", "retrieval_acc"} <= set(row)
    ids = comps["tokenizer"](["a star"], return_tensors="pt").input_ids
    assert content_mask(ids, comps["tokenizer"]).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_warm_start_keeps_the_unet_but_its_text_pathway(tmp_path):
    train_diffusion(TINY, OPTS, tmp_path / "v1", tmp_path / "work_v1")
    warm = replace(V2, init_pipeline=str(tmp_path / "v1"), steps=1)
    from groundiff.worlds.shapes_diffusion import warm_start

    comps = build_components(warm)
    warm_start(comps, warm)
    v1 = _weights(tmp_path / "v1", "unet")
    now = comps["unet"].state_dict()
    changed = {k for k in v1 if not torch.equal(v1[k], now[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k or ".attn2.to_out.0.weight" in k
                           for k in changed)
    assert all(not now[k].any() for k in now if k.endswith("attn2.to_out.0.weight"))
    vae = _weights(tmp_path / "v1", "vae")
    assert all(torch.equal(vae[k], comps["vae"].state_dict()[k]) for k in vae)
    # A whole warm-started run: no VAE phase, the pipeline saved.
    metrics = train_diffusion(warm, OPTS, tmp_path / "v2", tmp_path / "work_v2")
    assert metrics["vae_steps"] == 0 and not (tmp_path / "work_v2/vae.safetensors").exists()
    assert (tmp_path / "v2/model_index.json").exists()


def test_ema_snapshot_of_an_unfinished_cycle_is_what_its_checkpoint_holds(tmp_path):
    """save_ema_snapshot (timeboxed_second_cycle.py --v2's checks midway) copies the newest cycle's EMA
    UNet with its step on the shared axis; read_ema_snapshot reads a snapshot or a cycle's state alike."""
    from groundiff.core.training import state_path
    from groundiff.worlds.shapes_diffusion import newest_checkpoint, read_ema_snapshot, save_ema_snapshot

    cfg, work = replace(TINY, finetune_steps=4), tmp_path / "work"
    with pytest.raises(FileNotFoundError, match="no UNet cycle has a checkpoint"):
        newest_checkpoint(cfg, work)

    class Stop(Exception):
        pass

    def snapshot_then_stop(m):
        if "unet_loss" in m and m["step"] == cfg.steps + 2:  # cycle 2's first checkpoint
            save_ema_snapshot(cfg, work, tmp_path / "snap.safetensors")
            raise Stop

    with pytest.raises(Stop):
        train_diffusion(cfg, OPTS, tmp_path / "out", work, on_log=snapshot_then_stop)
    cycle, state = newest_checkpoint(cfg, work)
    assert cycle.name == "cycle2" and state == state_path(work, "unet_cycle2_")
    step, weights = read_ema_snapshot(cfg, tmp_path / "snap.safetensors")
    assert step == 6 and read_ema_snapshot(cfg, state)[0] == 6
    same = read_ema_snapshot(cfg, state)[1]
    assert weights.keys() == same.keys() == build_components(cfg)["unet"].state_dict().keys()
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    train_diffusion(cfg, OPTS, tmp_path / "out", work)  # resumes and finishes: the EMA moved on
    final = _weights(tmp_path / "out", "unet")
    assert any(not torch.equal(final[k], weights[k]) for k in final)
    with pytest.raises(ValueError, match="neither an EMA snapshot"):
        read_ema_snapshot(cfg, work / "unet_cycle2.safetensors")


def test_second_cycle_can_keep_the_cross_attention_as_the_first_left_it(tmp_path):
    """finetune_freeze_cross_attention: cycle 2 trains every UNet layer but the cross-attention
    (attn2), whose weights stay exactly cycle 1's; without it, they train too."""
    from safetensors.torch import load_file as load

    frozen = replace(TINY, finetune_steps=2, finetune_freeze_cross_attention=True)
    train_diffusion(frozen, OPTS, tmp_path / "frozen", tmp_path / "work")
    cycle1 = {k[len("unet."):]: v for k, v in load(tmp_path / "work/unet_cycle1.safetensors").items()
              if k.startswith("unet.")}
    unet = _weights(tmp_path / "frozen", "unet")
    cross = [k for k in unet if ".attn2." in k]
    assert cross and all(torch.equal(unet[k], cycle1[k]) for k in cross)
    assert any(not torch.equal(unet[k], cycle1[k]) for k in unet if ".attn2." not in k)
    train_diffusion(replace(frozen, finetune_freeze_cross_attention=False), OPTS, tmp_path / "all", tmp_path / "work")
    unet = _weights(tmp_path / "all", "unet")  # the same work dir: cycle 2 was redone, cycle 1 reused
    assert any(not torch.equal(unet[k], cycle1[k]) for k in cross)


def test_bad_text_encoder_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="text_encoder must be joint"):
        replace(TINY, text_encoder="t5")
    with pytest.raises(ValueError, match="contrastive batch"):
        replace(V2, clip_batch_size=1)
    with pytest.raises(ValueError, match="init_pipeline"):
        replace(TINY, init_pipeline="worlds/shapes/diffusion")
    with pytest.raises(FileNotFoundError, match="no loadable vae"):
        train_diffusion(replace(V2, init_pipeline=str(tmp_path / "nowhere")), OPTS, tmp_path / "o", tmp_path / "w")


def test_progress_table_lists_v1_and_each_probe_with_what_was_measured(tmp_path):
    """scripts/world_v2_progress.py: the renderer's row when it was measured, v1's row from metrics/,
    one row per probe step in step order (a tagged run's after the main one's), '–' where a probe has no
    fidelity measurement yet."""
    import json
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "reports/world_v2/step1000_binding.json", tmp_path / "step1000_binding.json")
    shutil.copy(root / "reports/world_v2/step1000_fidelity.json", tmp_path / "step1000_fidelity.json")
    binding = json.loads((tmp_path / "step1000_binding.json").read_text())
    binding["attention"]["daam_miou"] = 55.55
    (tmp_path / "step200_binding.json").write_text(json.dumps(binding))
    binding["attention"]["daam_miou"] = 44.44  # a run beside the main one, tagged
    (tmp_path / "step1000-frozen_binding.json").write_text(json.dumps(binding))
    subprocess.run([sys.executable, "scripts/world_v2_progress.py", "--dir", str(tmp_path)], cwd=root,
                   check=True, capture_output=True)
    rows = [line for line in (tmp_path / "progress.md").read_text().splitlines() if line.startswith("| v")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| v1 (shipped)", "| v2, UNet step 200", "| v2, UNet step 1000",
        "| v2, UNet step 1000 (cycle 2 with the cross-attention frozen)"]
    assert "44.4" in rows[3] and rows[3].endswith("| – | – |")
    # the paired DAAM column scores every probe on the images found in all of them (here: the same)
    found = [r["iou"] for r in binding["attention"]["per_image"] if r["found"]]
    paired = f"| {100 * sum(found) / len(found):.1f} |"
    assert all(paired in r for r in rows[1:]) and "| – |" in rows[0]
    assert "| renderer" not in (tmp_path / "progress.md").read_text()  # not measured in this folder
    assert "55.5" in rows[1] and rows[1].endswith("| – | – |")
    fidelity = json.loads((tmp_path / "step1000_fidelity.json").read_text())["metrics"]
    assert rows[2].endswith(f"| {100 * fidelity['one_object_recall']:.1f}% | "
                            f"{100 * fidelity['two_object_both_recall']:.1f}% |")


def test_renderer_fidelity_scores_the_renderers_own_scenes_for_the_stages_prompts(tmp_path):
    """scripts/measure_fidelity.py --renderer: the oracle on the scenes the renderer draws for
    world_fidelity's prompts (the ceiling for a model); the progress table shows it as its own row."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "renderer_fidelity.json"
    subprocess.run([sys.executable, "scripts/measure_fidelity.py", "--renderer", "--out", str(out)], cwd=root,
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["pipeline"] == "renderer" and result["metrics"]["images"] == 400
    # the oracle finds what the renderer draws: a model's fidelity is bounded by this, not by the bars
    assert result["metrics"]["one_object_recall"] >= 0.95 and result["metrics"]["two_object_both_recall"] >= 0.85
    assert result["metrics"] == json.loads((root / "reports/world_v2/renderer_fidelity.json").read_text())["metrics"]
    subprocess.run([sys.executable, "scripts/world_v2_progress.py", "--dir", str(tmp_path)], cwd=root,
                   check=True, capture_output=True)
    rows = [line for line in (tmp_path / "progress.md").read_text().splitlines() if line.startswith("| renderer")]
    assert len(rows) == 1 and rows[0].endswith(f"| {100 * result['metrics']['one_object_recall']:.1f}% | "
                                               f"{100 * result['metrics']['two_object_both_recall']:.1f}% |")


def test_token_attention_splits_each_layers_object_attention_between_class_eos_and_pad(tmp_path):
    """scripts/token_attention.py on the shipped world (1 image per class): every traced layer has the
    three token groups, their shares of the attention inside the object sum to 1, and AUROCs are in [0, 1]."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "tokens.json"
    subprocess.run([sys.executable, "scripts/token_attention.py", "--per-class", "1", "--batch-size", "10",
                    "--out", str(out)], cwd=root, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["images"] == 10 and 0 < report["scored"] <= 10
    assert len(report["layers"]) == 7  # the shapes UNet's cross-attention layers
    for groups in report["layers"].values():
        assert set(groups) == {"class", "<eos>", "<pad>"}
        assert sum(g["share_inside"] for g in groups.values()) == pytest.approx(1.0, abs=1e-3)
        assert all(0.0 <= g["auroc"] <= 1.0 and g["inside"] > 0 for g in groups.values())
