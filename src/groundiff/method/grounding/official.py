"""The authors' released grounding module (`grounding_module.pth`) as a `GroundingModule` folder.

    summary = import_official("grounding_module.pth", "models/grounding-official")  # spectral_norm="biggan"
    module = GroundingModule.from_pretrained("models/grounding-official")

The released `train.py` saves `seg_module.state_dict()`: a flat dict of 90 float32 tensors, for
Stable Diffusion v1 (UNet widths 320/640/1280/1280, CLIP width 768). It is read with
`torch.load(weights_only=True)`, which rebuilds tensors and plain containers only and refuses
anything else (no pickled code runs). Every key and shape is checked against the released
module's layout (`official_shapes`, the table in docs/official.md) before anything is written:
one error lists what is missing, unexpected or of the wrong shape.

The mapping (official key -> this module's):

    {low,mid,high,highest}_feature_conv.0.weight          -> bucket_convs.{0..3}.weight
    {mid,high,highest}_feature_mix_conv.conv{n}.weight/bias -> mix_convs.{0..2}.conv{n}.(...)
        .u0, .sv0                                          -> the spectral norm's state (below)
        .stored_mean{n}, .stored_var{n}                    -> mix_convs.{i}.bn{n}.running_mean/var
    transfromer_decoder.layers.{l}.self_attn.*             -> layers.{l}.self_attn.*   (sic: "transfromer")
        .multihead_attn.*                                  -> layers.{l}.cross_attn.*
        .linear{1,2}.*, .norm{1,2,3}.*                     -> layers.{l}.(same)
    mlp.layers.{0,1,2}.*, to_k.weight, to_q.weight         -> (same)

Spectral norm. With `spectral_norm="biggan"` (the default) the module runs the released code's
power iteration (`PowerIterationConv2d`) and `u0`, `sv0` are copied as they are: eval mode and
train mode then behave exactly as the released module does. With "torch", the convs use torch's
parametrization, which keeps a (u, v) pair and does no iteration in eval mode; they are set to
v = normalize(Wᵀ u0), u = normalize(W v), so that torch's eval sigma u·(W v) equals the released
code's eval sigma v Wᵀ uᵀ computed from `u0` (`official_sigma`). BatchNorm's
`num_batches_tracked`, which the released module does not keep, starts at 0 (with momentum 0.1 it
is never used).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from groundiff.core.io import atomic_dir
from groundiff.method.grounding.model import SPECTRAL_NORMS, GroundingConfig, GroundingModule

#: The UNet the released module was trained for (SD v1.x) and its text encoder's width.
SD_V1_UNET = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "sample_size": 64}
SD_V1_TEXT_DIM = 768
SD_V1_IMAGE_SIZE = 512
#: The released module's names for the visual encoder's parts, lowest resolution first.
BUCKET_CONVS = ("low_feature_conv", "mid_feature_conv", "high_feature_conv", "highest_feature_conv")
MIX_CONVS = ("mid_feature_mix_conv", "high_feature_mix_conv", "highest_feature_mix_conv")
DECODER = "transfromer_decoder.layers"  # sic
#: The released code's spectral-norm epsilon (BigGAN's).
SN_EPS = 1e-4
#: Source stamp written beside the converted module.
SOURCE_NAME = "official_source.json"


def official_config(spectral_norm: str = "biggan") -> GroundingConfig:
    """The released module's architecture as a GroundingConfig (SD v1, the paper's widths)."""
    return GroundingConfig.from_unet_config(SD_V1_UNET, text_dim=SD_V1_TEXT_DIM, image_size=SD_V1_IMAGE_SIZE,
                                            spectral_norm=spectral_norm, decoder_init="cloned",
                                            shortcut_after_relu=True, standardize_text=False)


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the released state dict and its shape (docs/official.md's table): 90 entries."""
    shapes: dict[str, tuple[int, ...]] = {
        "low_feature_conv.0.weight": (16, 15360, 1, 1),
        "mid_feature_conv.0.weight": (32, 14080, 1, 1),
        "high_feature_conv.0.weight": (64, 8320, 1, 1),
        "highest_feature_conv.0.weight": (128, 5120, 1, 1),
    }
    for name, c in zip(MIX_CONVS, (48, 112, 240)):
        for n in (1, 2):
            shapes |= {f"{name}.conv{n}.weight": (c, c, 3, 3), f"{name}.conv{n}.bias": (c,),
                       f"{name}.conv{n}.u0": (1, c), f"{name}.conv{n}.sv0": (1,),
                       f"{name}.stored_mean{n}": (c,), f"{name}.stored_var{n}": (c,)}
    for layer in range(3):
        p = f"{DECODER}.{layer}"
        for attn in ("self_attn", "multihead_attn"):
            shapes |= {f"{p}.{attn}.in_proj_weight": (1536, 512), f"{p}.{attn}.out_proj.weight": (512, 512)}
        shapes |= {f"{p}.linear1.weight": (2048, 512), f"{p}.linear1.bias": (2048,),
                   f"{p}.linear2.weight": (512, 2048), f"{p}.linear2.bias": (512,)}
        for n in (1, 2, 3):
            shapes |= {f"{p}.norm{n}.weight": (512,), f"{p}.norm{n}.bias": (512,)}
    shapes |= {"mlp.layers.0.weight": (512, 512), "mlp.layers.0.bias": (512,),
               "mlp.layers.1.weight": (512, 512), "mlp.layers.1.bias": (512,),
               "mlp.layers.2.weight": (240, 512), "mlp.layers.2.bias": (240,),
               "to_k.weight": (512, 3840), "to_q.weight": (512, 768)}
    return shapes


def _conv_weight_key(i: int, n: int, spectral_norm: str) -> str:
    """This module's key of mix conv i's conv n raw weight."""
    base = f"mix_convs.{i}.conv{n}"
    return f"{base}.weight" if spectral_norm == "biggan" else f"{base}.parametrizations.weight.original"


def one_to_one_keys(spectral_norm: str = "biggan") -> dict[str, str]:
    """Official key -> this module's key, for the tensors copied as they are.

    Under "torch" the spectral norm's `u0`, `sv0` have no counterpart one to one (they become
    torch's (u, v), see the module doc); under "biggan" they are copied too.
    """
    keys = {f"{name}.0.weight": f"bucket_convs.{i}.weight" for i, name in enumerate(BUCKET_CONVS)}
    for i, name in enumerate(MIX_CONVS):
        for n in (1, 2):
            keys[f"{name}.conv{n}.weight"] = _conv_weight_key(i, n, spectral_norm)
            keys[f"{name}.conv{n}.bias"] = f"mix_convs.{i}.conv{n}.bias"
            keys[f"{name}.stored_mean{n}"] = f"mix_convs.{i}.bn{n}.running_mean"
            keys[f"{name}.stored_var{n}"] = f"mix_convs.{i}.bn{n}.running_var"
            if spectral_norm == "biggan":
                keys[f"{name}.conv{n}.u0"] = f"mix_convs.{i}.conv{n}.u0"
                keys[f"{name}.conv{n}.sv0"] = f"mix_convs.{i}.conv{n}.sv0"
    for layer in range(3):
        src, dst = f"{DECODER}.{layer}", f"layers.{layer}"
        for theirs, ours in (("self_attn", "self_attn"), ("multihead_attn", "cross_attn")):
            keys[f"{src}.{theirs}.in_proj_weight"] = f"{dst}.{ours}.in_proj_weight"
            keys[f"{src}.{theirs}.out_proj.weight"] = f"{dst}.{ours}.out_proj.weight"
        for part in ("linear1", "linear2", "norm1", "norm2", "norm3"):
            for kind in ("weight", "bias"):
                keys[f"{src}.{part}.{kind}"] = f"{dst}.{part}.{kind}"
    for name in ("mlp.layers.0.weight", "mlp.layers.0.bias", "mlp.layers.1.weight", "mlp.layers.1.bias",
                 "mlp.layers.2.weight", "mlp.layers.2.bias", "to_k.weight", "to_q.weight"):
        keys[name] = name
    return keys


# --- reading and checking -----------------------------------------------------------------


def load_official(path: str | Path) -> dict[str, Tensor]:
    """The released checkpoint's tensors, read without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (the released grounding_module.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # refused objects, truncated or foreign files: several error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: not a tensor-only checkpoint: torch.load(weights_only=True) refused it ({first}). The "
            "released train.py saves seg_module.state_dict(), a flat dict of tensors; a file that holds "
            "other objects (code) is not loaded"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict (a flat dict of tensors)")
    wrappers = sorted(k for k, v in state.items() if isinstance(v, dict))
    if wrappers:
        raise ValueError(
            f"{path}: a wrapper around state dicts (keys {wrappers}), not the module's flat state dict; "
            f"save the inner one (e.g. torch.save(ckpt[{wrappers[0]!r}], 'grounding_module.pth'))"
        )
    other = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if other:
        raise ValueError(f"{path}: entries {other[:5]} are not tensors; a state dict holds tensors only")
    return state


def check_official(state: dict[str, Tensor], where: str = "the checkpoint") -> None:
    """One ValueError listing every missing, unexpected and wrongly shaped key (and non-float tensors)."""
    want = official_shapes()
    missing = [k for k in want if k not in state]
    unexpected = sorted(k for k in state if k not in want)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want
             if k in state and tuple(state[k].shape) != want[k]]
    not_float = [f"{k} ({state[k].dtype})" for k in want if k in state and not state[k].is_floating_point()]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                         ("not floating point", not_float)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        hint = (" The shapes are those of another UNet or text encoder than SD v1's: the released module is "
                "for SD v1.x (UNet widths 320/640/1280/1280, CLIP width 768)." if wrong else "")
        raise ValueError(f"{where} is not the released SD v1 grounding module ({len(want)} keys): "
                         + "; ".join(problems) + "." + hint)


def official_sigma(weight: Tensor, u0: Tensor, eps: float = SN_EPS) -> Tensor:
    """The released code's eval-mode sigma from its stored `u0` (1, out) and weight (out, in, k, k)."""
    w = weight.reshape(weight.shape[0], -1).double()
    v = F.normalize(u0.double() @ w, dim=1, eps=eps)  # (1, in*k*k)
    u = F.normalize(v @ w.t(), dim=1, eps=eps)  # (1, out)
    return (v @ w.t() @ u.t()).squeeze().to(weight.dtype)


# --- conversion -----------------------------------------------------------------------------


def from_official(state: dict[str, Tensor], spectral_norm: str = "biggan") -> GroundingModule:
    """A GroundingModule (eval mode) holding the released state dict's values; `state` is checked first."""
    if spectral_norm not in SPECTRAL_NORMS:
        raise ValueError(f"spectral_norm {spectral_norm!r} is not one of {', '.join(SPECTRAL_NORMS)}")
    check_official(state)
    module = GroundingModule(official_config(spectral_norm))
    ours = module.state_dict()
    new = {ours_key: state[theirs].to(torch.float32) for theirs, ours_key in one_to_one_keys(spectral_norm).items()}
    for i, name in enumerate(MIX_CONVS):
        for n in (1, 2):
            new[f"mix_convs.{i}.bn{n}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
            if spectral_norm == "torch":  # (u, v) that give the released code's eval sigma
                w = state[f"{name}.conv{n}.weight"].float()
                mat = w.reshape(w.shape[0], -1)
                v = F.normalize(state[f"{name}.conv{n}.u0"].float() @ mat, dim=1, eps=SN_EPS)[0]  # (in*k*k,)
                u = F.normalize(mat @ v, dim=0, eps=SN_EPS)  # (out,)
                base = f"mix_convs.{i}.conv{n}.parametrizations.weight.0"
                new[f"{base}._u"], new[f"{base}._v"] = u, v
    left = sorted(set(ours) - set(new))
    if left:  # the mapping must cover the module: a coding error, not a user's
        raise RuntimeError(f"official mapping leaves {left} unset")
    module.load_state_dict(new, strict=True)
    return module.eval()


def to_official(module: GroundingModule) -> dict[str, Tensor]:
    """The released code's state dict for a module of the released architecture (the inverse mapping).

    Under "torch" spectral norm, `u0` is torch's u and `sv0` its eval sigma: the released code's
    eval sigma from that `u0` then differs from torch's by one power iteration's refinement.
    """
    c = module.config
    expected = official_config(c.spectral_norm)
    if (c.feature_channels, c.feature_strides, c.text_dim, c.bucket_widths, c.d_model, c.n_layers) != (
            expected.feature_channels, expected.feature_strides, expected.text_dim, expected.bucket_widths,
            expected.d_model, expected.n_layers) or c.standardize_text:
        raise ValueError("only a module of the released architecture (SD v1, the paper's widths, raw text "
                         "embeddings) has an official state dict")
    ours = module.state_dict()
    state = {theirs: ours[k].detach().clone() for theirs, k in one_to_one_keys(c.spectral_norm).items()}
    if c.spectral_norm == "torch":
        for i, name in enumerate(MIX_CONVS):
            for n in (1, 2):
                base = f"mix_convs.{i}.conv{n}.parametrizations.weight"
                u, v = ours[f"{base}.0._u"], ours[f"{base}.0._v"]
                w = ours[f"{base}.original"]
                state[f"{name}.conv{n}.u0"] = u[None].clone()
                state[f"{name}.conv{n}.sv0"] = torch.dot(u, w.reshape(w.shape[0], -1) @ v).reshape(1)
    return state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_official(path: str | Path, out: str | Path, spectral_norm: str = "biggan",
                    overwrite: bool = False) -> dict:
    """Convert the released checkpoint at `path` into a module folder `out` (config.json, model.safetensors).

    Everything is checked before `out` is touched; the folder appears whole or not at all. Returns
    what `out/official_source.json` records (the file's sha256, the spectral-norm choice).
    """
    path, out = Path(path), Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: is a file; --out names the module folder to write")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out (or pass --force to replace it)")
    state = load_official(path)
    check_official(state, str(path))
    module = from_official(state, spectral_norm)
    summary = {"source": path.name, "sha256": _sha256(path), "tensors": len(state), "spectral_norm": spectral_norm,
               "parameters": sum(p.numel() for p in module.parameters())}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as partial:
        module.save_pretrained(partial)
        (partial / SOURCE_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
