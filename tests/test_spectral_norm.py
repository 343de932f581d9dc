"""The released code's spectral norm (`PowerIterationConv2d`), checked against the math, and the
grounding module's run-time options: spectral_norm, decoder_init, and what they save."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from groundiff.core.params import ParamsError, from_params
from groundiff.core.schema import TrainConfig
from groundiff.method.grounding import GroundingConfig, GroundingModule
from groundiff.method.grounding.model import PowerIterationConv2d
from groundiff.method.grounding.official import official_sigma

TINY_UNET = {"block_out_channels": [32, 96, 128], "layers_per_block": 1, "sample_size": 32}


def tiny_cfg(**overrides) -> GroundingConfig:
    return GroundingConfig.from_unet_config(TINY_UNET, text_dim=64, image_size=32, d_model=64, ffn_dim=128,
                                            **overrides)


def conv(seed: int = 0, channels: int = 8) -> PowerIterationConv2d:
    torch.manual_seed(seed)
    return PowerIterationConv2d(channels, channels, 3, padding=1)


def top_singular_value(c: PowerIterationConv2d) -> float:
    w = c.weight.detach().reshape(c.weight.shape[0], -1).double()
    return float(torch.linalg.svd(w).S[0])


# --- the math -------------------------------------------------------------------------------


def test_sigma_converges_to_the_top_singular_value_in_training():
    c = conv().train()
    true = top_singular_value(c)
    first = float(c.sigma().detach())  # one iteration from a random u0: an underestimate
    for _ in range(300):  # one power iteration per call, u0 carried over
        sigma = float(c.sigma().detach())
    assert first < true
    assert sigma == pytest.approx(true, rel=1e-5)
    assert float(c.sv0) == pytest.approx(sigma, rel=1e-6)  # the last estimate is recorded


def test_one_training_forward_is_one_power_iteration_written_back_to_u0():
    c = conv().train()
    w = c.weight.detach().reshape(8, -1)
    u0 = c.u0.clone()
    x = torch.randn(2, 8, 5, 5)
    out = c(x)
    v = F.normalize(u0 @ w, dim=1, eps=1e-4)
    u = F.normalize(v @ w.t(), dim=1, eps=1e-4)
    torch.testing.assert_close(c.u0, u)
    sigma = (v @ w.t() @ u.t()).squeeze()
    torch.testing.assert_close(out, F.conv2d(x, c.weight / sigma, c.bias, padding=1))


def test_eval_mode_iterates_from_u0_without_updating_it():
    c = conv().train()
    for _ in range(3):
        c.sigma()  # a state that has not converged: eval's own iteration still matters
    c.eval()
    u0, sv0 = c.u0.clone(), c.sv0.clone()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        a, b = c(x), c(x)
    assert torch.equal(c.u0, u0) and torch.equal(c.sv0, sv0)  # nothing written in eval mode
    assert torch.equal(a, b)  # so every eval call gives the same output
    # the documented formula: one iteration from u0 (docs/official.md), not u0's stored sigma
    expected = F.conv2d(x, c.weight / official_sigma(c.weight, u0), c.bias, padding=1)
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(official_sigma(c.weight, u0), sv0)


def test_gradient_flows_through_the_weight_in_sigma_only():
    c = conv().train()
    x = torch.randn(2, 8, 5, 5)
    u0 = c.u0.clone()
    c(x).square().sum().backward()
    # the reference: u, v fixed (no gradient through the power iteration), W in sigma differentiable
    w = c.weight.detach().clone().requires_grad_(True)
    m = w.reshape(8, -1)
    v = F.normalize(u0 @ m.detach(), dim=1, eps=1e-4)
    u = F.normalize(v @ m.detach().t(), dim=1, eps=1e-4)
    sigma = (v @ m.t() @ u.t()).squeeze()
    F.conv2d(x, w / sigma, c.bias.detach(), padding=1).square().sum().backward()
    torch.testing.assert_close(c.weight.grad, w.grad)


# --- in the grounding module ----------------------------------------------------------------


def test_biggan_module_saves_u0_and_reloads_it(tmp_path):
    cfg = tiny_cfg(spectral_norm="biggan")
    torch.manual_seed(0)
    model = GroundingModule(cfg).train()
    assert all(isinstance(m, PowerIterationConv2d) for mix in model.mix_convs for m in (mix.conv1, mix.conv2))
    start = model.mix_convs[0].conv1.u0.clone()
    features = [torch.randn(1, ch, 32 // s, 32 // s) for ch, s in zip(cfg.feature_channels, cfg.feature_strides)]
    queries = torch.randn(1, 2, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(features, queries).square().mean().backward()
        opt.step()
    assert not torch.equal(model.mix_convs[0].conv1.u0, start)  # training moved it
    model.eval()
    model.save_pretrained(tmp_path / "gm")
    saved = json.loads((tmp_path / "gm/config.json").read_text())
    assert saved["spectral_norm"] == "biggan"

    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "gm/model.safetensors"))
    torch.testing.assert_close(tensors["mix_convs.0.conv1.u0"], model.mix_convs[0].conv1.u0, rtol=0, atol=0)
    loaded = GroundingModule.from_pretrained(tmp_path / "gm")
    assert loaded.config == cfg and isinstance(loaded.mix_convs[-1].conv2, PowerIterationConv2d)
    with torch.no_grad():
        assert torch.equal(loaded(features, queries), model(features, queries))


def test_default_options_keep_the_saved_config_as_before(tmp_path):
    """config.json carries the new fields only when set: a default module saves the same bytes as
    before the options existed, and such an older config.json loads with the defaults."""
    torch.manual_seed(0)
    GroundingModule(tiny_cfg()).save_pretrained(tmp_path / "plain")
    raw = json.loads((tmp_path / "plain/config.json").read_text())
    assert "spectral_norm" not in raw and "decoder_init" not in raw
    loaded = GroundingModule.from_pretrained(tmp_path / "plain")
    assert loaded.config.spectral_norm == "torch" and loaded.config.decoder_init == "independent"
    assert "mix_convs.0.conv1.parametrizations.weight.original" in loaded.state_dict()  # torch's, as before


def test_decoder_init_cloned_starts_with_equal_layers():
    torch.manual_seed(0)
    cloned = GroundingModule(tiny_cfg(decoder_init="cloned"))
    torch.manual_seed(0)
    independent = GroundingModule(tiny_cfg())
    first = cloned.layers[0].state_dict()
    for layer in cloned.layers[1:]:
        assert all(torch.equal(first[k], v) for k, v in layer.state_dict().items())
        assert layer.linear1.weight.data_ptr() != cloned.layers[0].linear1.weight.data_ptr()  # copies, not shared
    other = independent.layers[1].state_dict()
    assert not torch.equal(independent.layers[0].state_dict()["linear1.weight"], other["linear1.weight"])


def test_train_config_passes_the_options_and_params_validate_them():
    cfg = TrainConfig(spectral_norm="biggan", decoder_init="cloned")
    gcfg = tiny_cfg(**{k: v for k, v in cfg.model_overrides().items() if k in ("spectral_norm", "decoder_init")})
    assert (gcfg.spectral_norm, gcfg.decoder_init) == ("biggan", "cloned")
    assert TrainConfig().model_overrides()["spectral_norm"] == "torch"
    with pytest.raises(ParamsError, match=r"train_grounding: spectral_norm: 'power' is not one of torch, biggan"):
        from_params(TrainConfig, {"spectral_norm": "power"}, "train_grounding")
    with pytest.raises(ParamsError, match="decoder_init: 'shared' is not one of independent, cloned"):
        from_params(TrainConfig, {"decoder_init": "shared"}, "train_grounding")
    with pytest.raises(ValueError, match="spectral_norm 'x' is not one of"):
        tiny_cfg(spectral_norm="x")
