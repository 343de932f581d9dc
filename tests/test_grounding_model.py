"""The grounding module: the paper's shapes and size for SD v1, and behaviour on a tiny UNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groundiff.method.grounding import GroundingConfig, GroundingModule, MixConv

SD_UNET = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "sample_size": 64}
# the shapes world's UNet: 3 levels -> buckets at strides 4/2/1, latent 32
TINY_UNET = {"block_out_channels": [32, 96, 128], "layers_per_block": 1, "sample_size": 32}


def random_features(cfg: GroundingConfig, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, cfg.latent_size // s, cfg.latent_size // s, generator=g)
        for c, s in zip(cfg.feature_channels, cfg.feature_strides)
    ]


@pytest.fixture(scope="module")
def tiny_cfg() -> GroundingConfig:
    return GroundingConfig.from_unet_config(TINY_UNET, text_dim=64, image_size=32, d_model=64, ffn_dim=128)


def tiny_model(cfg: GroundingConfig, seed: int = 0) -> GroundingModule:
    torch.manual_seed(seed)
    return GroundingModule(cfg)


# --- Stable Diffusion v1: the paper's module ------------------------------------------------


def test_sd_v1_size_and_visual_feature_shape():
    cfg = GroundingConfig.from_unet_config(SD_UNET, text_dim=768, image_size=512)
    assert [sum(cfg.feature_channels[i] for i in b) for b in cfg.buckets] == [15360, 14080, 8320, 5120]
    assert cfg.bucket_widths == (16, 32, 64, 128) and cfg.bucket_sizes == [16, 32, 64, 64]
    model = GroundingModule(cfg).eval()

    n_params = sum(p.numel() for p in model.parameters())  # SN's u, v are buffers, not parameters
    assert n_params == 18_796_560  # PAPER.md: ~18.8M
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in
             ("bucket_convs", "mix_convs", "to_k", "to_q", "layers", "mlp")}
    assert parts == {"bucket_convs": 1_884_160, "mix_convs": 1_304_864, "to_k": 1_966_080,
                     "to_q": 393_216, "layers": 12_599_808, "mlp": 648_432}

    with torch.no_grad():
        feats = model.encode_visual(random_features(cfg, batch=1))
        assert feats.shape == (1, 240, 64, 64)
        emb = model.mask_embeddings(feats, torch.randn(1, 2, 768))
        assert emb.shape == (1, 2, 240)
        assert model.mask_logits(feats, emb).shape == (1, 2, 512, 512)


# --- tiny UNet: behaviour -------------------------------------------------------------------


def test_tiny_config_and_forward_shapes(tiny_cfg):
    assert tiny_cfg.n_buckets == 3 and tiny_cfg.bucket_widths == (32, 64, 128)
    assert tiny_cfg.bucket_sizes == [16, 32, 32] and tiny_cfg.feature_dim == 224
    model = tiny_model(tiny_cfg)
    features = random_features(tiny_cfg, batch=2)
    logits = model(features, torch.randn(2, 3, 64))
    assert logits.shape == (2, 3, 32, 32) and torch.isfinite(logits).all()
    assert model.encode_visual(features).shape == (2, 224, 32, 32)


def test_logits_equal_the_papers_upsample_then_dot(tiny_cfg):
    cfg = GroundingConfig(**{**tiny_cfg.__dict__, "image_size": 80})  # non-trivial upsampling
    model = tiny_model(cfg).eval()
    with torch.no_grad():
        feats = model.encode_visual(random_features(cfg, batch=2))
        emb = model.mask_embeddings(feats, torch.randn(2, 3, 64))
        ours = model.mask_logits(feats, emb)
        paper = torch.einsum("bchw,bkc->bkhw", F.interpolate(feats, size=80, mode="bilinear"), emb)
    torch.testing.assert_close(ours, paper, rtol=1e-4, atol=1e-4)


def test_samples_in_a_batch_never_mix(tiny_cfg):
    model = tiny_model(tiny_cfg).eval()  # eval: BN uses running statistics, not batch ones
    features = random_features(tiny_cfg, batch=2)
    queries = torch.randn(2, 2, 64)
    with torch.no_grad():
        before = model(features, queries)
        features2 = [f.clone() for f in features]
        for f in features2:
            f[1] = torch.randn_like(f[1]) * 3
        queries2 = queries.clone()
        queries2[1] = torch.randn(2, 64)
        after = model(features2, queries2, torch.tensor([[True, True], [True, False]]))
        alone = model([f[:1] for f in features], queries[:1])
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    assert not torch.allclose(after[1], before[1])
    torch.testing.assert_close(alone[0], before[0], rtol=1e-5, atol=1e-5)


def test_padded_queries_do_not_change_real_ones(tiny_cfg):
    model = tiny_model(tiny_cfg).eval()
    features = random_features(tiny_cfg, batch=2)
    queries = torch.randn(2, 3, 64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        a = model(features, queries, mask)
        other = queries.clone()
        other[0, 2] = torch.randn(64) * 5
        other[1, 1:] = torch.randn(2, 64) * 5
        b = model(features, other, mask)
        short = model(features, queries[:, :2], mask[:, :2])  # fewer padding slots
        none_real = model(features, queries, torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(b[0, :2], a[0, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[1, :1], a[1, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(short[0, :2], a[0, :2], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(none_real).all()  # a sample without real classes must not poison anything


def test_a_few_adam_steps_reduce_bce(tiny_cfg):
    model = tiny_model(tiny_cfg).train()
    features = random_features(tiny_cfg, batch=2)
    queries = torch.randn(2, 2, 64)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    target = torch.stack([
        torch.stack([(xx < 16), (yy - 16) ** 2 + (xx - 16) ** 2 < 64]),
        torch.stack([(yy < 10), (xx > 20)]),
    ]).float()  # (B, K, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = F.binary_cross_entropy_with_logits(model(features, queries), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_save_load_round_trip_is_exact(tiny_cfg, tmp_path):
    model = tiny_model(tiny_cfg).train()
    features = random_features(tiny_cfg, batch=2)
    queries = torch.randn(2, 2, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # moves weights, BN running statistics and spectral-norm u, v
        opt.zero_grad()
        model(features, queries).square().mean().backward()
        opt.step()
    model.eval()
    model.save_pretrained(tmp_path / "gm")
    assert sorted(p.name for p in (tmp_path / "gm").iterdir()) == ["config.json", "model.safetensors"]

    loaded = GroundingModule.from_pretrained(tmp_path / "gm")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(features, queries), model(features, queries))


def test_standardized_text_separates_nearly_parallel_class_embeddings(tiny_cfg, tmp_path):
    """Embeddings sharing >99% of their direction (the shapes text encoder's) become distinct queries."""
    g = torch.Generator().manual_seed(0)
    common = 5.0 * torch.randn(64, generator=g)
    seen = common + 0.03 * torch.randn(4, 64, generator=g)  # cosine > 0.99 to each other
    unseen = common + 0.03 * torch.randn(1, 64, generator=g)
    assert F.cosine_similarity(seen[0], seen[1], dim=0) > 0.99

    cfg = GroundingConfig(**{**tiny_cfg.__dict__, "standardize_text": True})
    model = tiny_model(cfg).eval()
    model.set_text_statistics(seen)
    torch.testing.assert_close(model.text_shift, seen.mean(0))
    standardized = (seen - model.text_shift) * model.text_scale
    torch.testing.assert_close(standardized.pow(2).mean(), torch.tensor(1.0))  # unit RMS per dimension
    torch.testing.assert_close(standardized.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    # an unseen class goes through the same fixed affine map: no statistics from it
    u = (unseen - model.text_shift) * model.text_scale
    assert 0.3 < u.pow(2).mean().sqrt() < 3.0

    # what the decoder sees: raw, the two classes' queries are nearly one vector; standardized, not
    raw = tiny_model(tiny_cfg).eval()
    with torch.no_grad():
        q_raw = raw.to_q(seen[:2])
        q_std = model.to_q(standardized[:2])
    assert F.cosine_similarity(q_raw[0], q_raw[1], dim=0) > 0.99
    assert F.cosine_similarity(q_std[0], q_std[1], dim=0) < 0.9

    # the statistics travel with the weights, and the forward uses them
    features = random_features(cfg, batch=1)
    model.save_pretrained(tmp_path / "gm")
    loaded = GroundingModule.from_pretrained(tmp_path / "gm")
    assert loaded.config.standardize_text
    torch.testing.assert_close(loaded.text_scale, model.text_scale)
    with torch.no_grad():
        assert torch.equal(loaded(features, seen[None, :2]), model(features, seen[None, :2]))
        plain = GroundingModule(cfg).eval()
        plain.load_state_dict({**model.state_dict(), "text_shift": torch.zeros(64), "text_scale": torch.ones(())})
        assert not torch.allclose(plain(features, seen[None, :2]), model(features, seen[None, :2]))


def test_text_statistics_errors(tiny_cfg):
    with pytest.raises(ValueError, match="standardize_text=False"):
        tiny_model(tiny_cfg).set_text_statistics(torch.randn(3, 64))
    model = tiny_model(GroundingConfig(**{**tiny_cfg.__dict__, "standardize_text": True}))
    with pytest.raises(ValueError, match=r"\(N >= 2, 64\)"):
        model.set_text_statistics(torch.randn(1, 64))
    with pytest.raises(ValueError, match="all identical"):
        model.set_text_statistics(torch.ones(3, 64))


def test_missing_checkpoint_says_which_stage_makes_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="the train_grounding stage trains one"):
        GroundingModule.from_pretrained(tmp_path / "nothing")


def test_wrong_inputs_give_clear_errors(tiny_cfg):
    model = tiny_model(tiny_cfg).eval()
    features = random_features(tiny_cfg, batch=1)
    queries = torch.randn(1, 1, 64)
    msg = "built for 13 UNet feature maps, got 12: was it trained for another UNet"
    with pytest.raises(ValueError, match=msg):
        model(features[:-1], queries)
    bad = list(features)
    bad[3] = bad[3][:, : bad[3].shape[1] // 2]  # features captured without the CFG doubling
    with pytest.raises(ValueError, match="UNet feature map 3 should be"):
        model(bad, queries)
    with pytest.raises(ValueError, match=r"class embeddings should be \(B, K, 64\)"):
        model(features, torch.randn(1, 1, 768))


def test_mix_conv_shortcut_quirk():
    torch.manual_seed(0)
    quirk = MixConv(8, shortcut_after_relu=True).eval()
    plain = MixConv(8, shortcut_after_relu=False).eval()
    plain.load_state_dict(quirk.state_dict())
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        diff = quirk(x) - plain(x)
    torch.testing.assert_close(diff, F.relu(quirk.bn1(x)) - x)  # released code adds ReLU(BN(x))
