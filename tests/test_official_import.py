"""`groundiff import-official`: a synthetic checkpoint in the released format (the documented keys and
shapes, random values) converted, checked and loaded; and the errors a wrong file gives."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from groundiff import cli
from groundiff.method.grounding import GroundingModule
from groundiff.method.grounding.model import PowerIterationConv2d
from groundiff.method.grounding.official import (MIX_CONVS, check_official, from_official, import_official,
                                                 official_config, official_shapes, official_sigma, one_to_one_keys,
                                                 to_official)


def synthetic_official(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as the released grounding_module.pth, random values of plausible ranges."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes().items():
        value = torch.randn(shape, generator=g)
        if "stored_var" in key:
            value = value.abs() + 0.5  # variances are positive
        elif key.endswith("sv0"):
            value = value.abs() + 1.0
        elif key.endswith(".weight") and len(shape) > 1:
            value = value / shape[1] ** 0.5  # keep activations of order 1
        state[key] = value
    return state


class RunsCodeWhenUnpickled:
    """A pickle that would create a file if it were ever unpickled without weights_only."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return synthetic_official()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state) -> pathlib.Path:
    path = tmp_path_factory.mktemp("official") / "grounding_module.pth"
    torch.save(state, path)  # what the released train.py does: torch.save(seg_module.state_dict(), path)
    return path


def test_the_documented_layout_is_this_module_under_the_mapping():
    shapes = official_shapes()
    assert len(shapes) == 90
    for kind in ("biggan", "torch"):
        ours = GroundingModule(official_config(kind)).state_dict()
        for theirs, key in one_to_one_keys(kind).items():
            assert tuple(ours[key].shape) == shapes[theirs], (theirs, key)
    assert len(one_to_one_keys("biggan")) == 90 and len(one_to_one_keys("torch")) == 90 - 12  # u0, sv0: 6 convs


def test_import_writes_a_module_folder_that_loads_strictly(checkpoint, state, tmp_path):
    out = tmp_path / "models/grounding-official"
    summary = import_official(checkpoint, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "official_source.json"]
    assert summary["tensors"] == 90 and summary["parameters"] == 18_796_560 and summary["spectral_norm"] == "biggan"
    assert json.loads((out / "official_source.json").read_text())["sha256"] == summary["sha256"]
    module = GroundingModule.from_pretrained(out)  # strict load of every tensor
    assert module.config == official_config("biggan") and not module.training
    # every tensor that maps one to one comes back unchanged, through the file
    back = to_official(module)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    mix = module.mix_convs[0]
    assert torch.equal(mix.bn1.running_mean, state["mid_feature_mix_conv.stored_mean1"])
    assert torch.equal(mix.bn2.running_var, state["mid_feature_mix_conv.stored_var2"])


@pytest.mark.parametrize("kind", ["biggan", "torch"])
def test_eval_sigma_of_every_mix_conv_is_the_documented_formula(state, kind):
    """The eval-mode sigma: v = normalize(u0 W), u = normalize(v Wᵀ), sigma = v Wᵀ uᵀ (docs/official.md)."""
    module = from_official(state, kind)
    for i, name in enumerate(MIX_CONVS):
        for n in (1, 2):
            conv = getattr(module.mix_convs[i], f"conv{n}")
            w, u0 = state[f"{name}.conv{n}.weight"], state[f"{name}.conv{n}.u0"]
            sigma = official_sigma(w, u0)
            if kind == "biggan":
                assert isinstance(conv, PowerIterationConv2d)
                torch.testing.assert_close(conv.sigma().detach(), sigma, rtol=1e-5, atol=0)
                assert torch.equal(conv.u0, u0)  # eval mode: not updated
            else:  # torch's parametrization: the weight it convolves with is W / sigma
                with torch.no_grad():
                    torch.testing.assert_close(conv.weight, w / sigma, rtol=1e-5, atol=1e-7)
    if kind == "torch":  # the (u, v) pair is not a copy: u0, sv0 do not map one to one
        back = to_official(module)
        for key in (k for k in state if not k.endswith(("u0", "sv0"))):
            assert torch.equal(back[key], state[key]), key


def test_both_spectral_norm_choices_give_the_same_eval_logits(state):
    torch.manual_seed(0)
    cfg = official_config()
    features = [0.1 * torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(cfg.feature_channels, cfg.feature_strides)]
    classes = torch.randn(1, 2, 768)
    with torch.no_grad():
        biggan = from_official(state, "biggan")(features, classes)
        plain = from_official(state, "torch")(features, classes)
    assert biggan.shape == (1, 2, 512, 512)
    torch.testing.assert_close(plain, biggan, rtol=1e-4, atol=1e-4)


# --- errors ---------------------------------------------------------------------------------


def test_a_missing_key_is_named(state):
    broken = dict(state)
    del broken["to_q.weight"]
    with pytest.raises(ValueError, match=r"not the released SD v1 grounding module \(90 keys\): missing: to_q.weight"):
        check_official(broken)


def test_a_checkpoint_of_another_unet_names_the_shapes(state):
    other = dict(state)
    other["low_feature_conv.0.weight"] = torch.zeros(16, 7680, 1, 1)  # half SD v1's 8x8 channels
    other["module.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        check_official(other, "x.pth")
    message = str(err.value)
    assert "wrong shape: low_feature_conv.0.weight (16, 7680, 1, 1) (expected (16, 15360, 1, 1))" in message
    assert "unexpected: module.extra" in message and "another UNet" in message
    assert "\n" not in message


def test_a_file_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"to_q.weight": torch.zeros(1), "payload": RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match=r"evil.pth: not a tensor-only checkpoint: torch.load\(weights_only=True\) "
                                         "refused it"):
        import_official(path, tmp_path / "out")
    assert not marker.exists()  # the pickled call never ran
    assert not (tmp_path / "out").exists()  # nothing written


def test_wrappers_non_tensors_and_missing_files_are_clear(tmp_path, state):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state}, wrapped)
    with pytest.raises(ValueError, match=r"a wrapper around state dicts \(keys \['state_dict'\]\).*ckpt\['state_dict'\]"):
        import_official(wrapped, tmp_path / "out")
    listed = tmp_path / "listed.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        import_official(listed, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nothing.pth: no such checkpoint"):
        import_official(tmp_path / "nothing.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_imports_and_refuses_to_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "gm"
    cli.main(["import-official", str(checkpoint), "--out", str(out), "--spectral-norm", "torch"])
    printed = capsys.readouterr().out
    assert "90 tensors, 18,796,560 parameters, torch spectral norm" in printed
    assert "eval_grounding.grounding_dir" in printed
    assert GroundingModule.from_pretrained(out).config.spectral_norm == "torch"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["import-official", str(checkpoint), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    cli.main(["import-official", str(checkpoint), "--out", str(out), "--force"])
    assert GroundingModule.from_pretrained(out).config.spectral_norm == "biggan"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        cli.main(["import-official", str(bad), "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert err.startswith("groundiff: error: ") and err.count("\n") == 1 and "bad.pth" in err
