"""The grounding module: UNet features + a class embedding -> that class's mask logits.

One file you can read in one sitting (PAPER.md, "Grounding module"):

1. Visual encoder. The captured UNet maps are grouped into resolution buckets (lowest first).
   Each bucket's maps are bilinearly resized to min(2 x native, latent size) and concatenated;
   a 1x1 conv (no bias) squeezes each bucket to a few channels. Walking from the lowest bucket
   up, the running map is upsampled to the next bucket's size, concatenated with it and mixed
   by a BigGAN-style residual block (`MixConv`). For SD v1: 16 ch @16 -> (16+32) @32 ->
   (48+64) @64 -> (112+128) @64, so F is 240 x 64 x 64. The mix convs' 3x3 convs are
   spectral-normalised, torch's way or the released code's (`spectral_norm`, see `PowerIterationConv2d`).
2. Fusion. F is cut into non-overlapping 4x4 patches (256 tokens of 240*16 = 3840 values),
   projected to d_model as keys/values; each class embedding is projected to d_model as a
   query; a 3-layer pre-norm transformer decoder (self-attention among the classes, then
   cross-attention to the patches, then an FFN) refines the queries, and an MLP turns each into
   a mask embedding with F's channel count.
3. Logits. The per-pixel dot product of F, bilinearly upsampled to the image size, with each
   class's mask embedding.

Unlike the released code, samples in a batch never mix: there the batch is flattened into one
query sequence and one patch sequence, so every class attends to every image of the batch.
Here attention runs per sample, and samples may carry different numbers of classes
(`class_mask`). In training mode BatchNorm still shares batch statistics, as in the paper.

The released code's run-time details that change numbers are options (docs/official.md):
`spectral_norm` ("torch": torch's parametrization; "biggan": one power
iteration per forward in train and eval mode, the vector kept as `u0`) and `decoder_init`
("independent" layers, or "cloned": three copies of one freshly built layer).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from groundiff.core.checkpoint import atomic_path, loading_model, write_text_atomic
from groundiff.core.schema import DECODER_INITS, SPECTRAL_NORMS
from groundiff.diffusion.features import FeatureSpec, buckets, feature_specs

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: The paper's 1x1-conv widths for its 4 buckets (low, mid, high, highest).
_PAPER_BUCKET_WIDTHS = (16, 32, 64, 128)
#: Config fields added after modules were shipped, with the value those modules had: config.json
#: carries them only when they differ, so a module trained with the defaults is saved byte for
#: byte as before, and an older config.json loads with these values.
_WRITTEN_WHEN_SET: dict[str, str] = {"spectral_norm": "torch", "decoder_init": "independent"}


@dataclass(frozen=True)
class GroundingConfig:
    """Everything that decides the module's architecture (saved as config.json)."""

    # channels of each captured UNet map, in capture order, *already doubled* (uncond || cond)
    feature_channels: tuple[int, ...]
    # latent size / map size of each captured map (1, 2, 4, 8 for SD v1)
    feature_strides: tuple[int, ...]
    # the UNet's sample_size: the latent's side (64 for SD v1 at 512 px)
    latent_size: int
    # side of the output mask logits (512 for SD v1: the generated image's size)
    image_size: int
    # width of a class embedding: the text encoder's hidden size (768 for CLIP ViT-L/14)
    text_dim: int
    # 1x1-conv output widths per bucket, lowest resolution first; () = the paper's
    # (16, 32, 64, 128), keeping its last n entries for a UNet with n buckets
    bucket_widths: tuple[int, ...] = ()
    # transformer decoder width (queries, keys, values)
    d_model: int = 512
    # attention heads in the decoder
    n_heads: int = 8
    # hidden width of the decoder's FFN
    ffn_dim: int = 2048
    # decoder layers
    n_layers: int = 3
    # side of the non-overlapping square patches of F that become the decoder's keys/values
    patch_size: int = 4
    # BatchNorm epsilon in the mix-convs (BigGAN's 1e-4)
    bn_eps: float = 1e-4
    # BatchNorm running-statistics momentum in the mix-convs
    bn_momentum: float = 0.1
    # spectral-norm power-iteration epsilon (BigGAN's 1e-4)
    sn_eps: float = 1e-4
    # released code's quirk: its in-place ReLU makes the mix-conv shortcut add ReLU(BN(x));
    # False adds x itself (the textbook BigGAN residual block)
    shortcut_after_relu: bool = True
    # standardise class embeddings before the query projection: subtract the training classes'
    # mean embedding and divide by their RMS deviation (buffers `text_shift`, `text_scale`, fixed
    # by `set_text_statistics`). Not in the paper; see `set_text_statistics` for why
    standardize_text: bool = False
    # the mix convs' spectral norm: "torch" (torch's parametrization: 15 power iterations at
    # construction, one per training forward, none in eval) or "biggan" (the released code: one
    # iteration per forward in train AND eval mode from the stored vector `u0`, which only
    # training updates)
    spectral_norm: str = "torch"
    # the decoder layers' initial weights: "independent" draws, or "cloned" (the released code
    # deep-copies one freshly built layer, so all layers start equal). Changes the start only
    decoder_init: str = "independent"

    def __post_init__(self) -> None:
        if self.spectral_norm not in SPECTRAL_NORMS:
            raise ValueError(f"spectral_norm {self.spectral_norm!r} is not one of {', '.join(SPECTRAL_NORMS)}")
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init {self.decoder_init!r} is not one of {', '.join(DECODER_INITS)}")
        # JSON gives lists; keep tuples so the config stays hashable and compares equal.
        for name in ("feature_channels", "feature_strides", "bucket_widths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.feature_channels) != len(self.feature_strides):
            raise ValueError(
                f"feature_channels has {len(self.feature_channels)} entries but feature_strides "
                f"has {len(self.feature_strides)}: both list the captured maps, one entry each"
            )
        for s in self.feature_strides:
            if s < 1 or self.latent_size % s:
                raise ValueError(f"feature stride {s} does not divide latent_size {self.latent_size}")
        n = self.n_buckets
        if n < 2:
            raise ValueError(f"the grounding module needs >= 2 resolution buckets, got {n}")
        if not self.bucket_widths:
            if n > len(_PAPER_BUCKET_WIDTHS):
                raise ValueError(f"{n} resolution buckets: pass bucket_widths (one per bucket)")
            object.__setattr__(self, "bucket_widths", _PAPER_BUCKET_WIDTHS[-n:])
        if len(self.bucket_widths) != n:
            raise ValueError(
                f"bucket_widths {self.bucket_widths} has {len(self.bucket_widths)} entries, "
                f"but the UNet's maps fall into {n} resolution buckets"
            )
        if self.feature_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide F's size {self.feature_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @classmethod
    def from_unet_config(
        cls, unet_config: Mapping[str, Any], text_dim: int, image_size: int, **overrides: Any
    ) -> GroundingConfig:
        """The config for a UNet2DConditionModel config (e.g. `pipe.unet.config`)."""
        specs = feature_specs(unet_config)
        sample_size = unet_config["sample_size"]
        if not isinstance(sample_size, int):  # diffusers also allows (H, W)
            h, w = sample_size
            if h != w:
                raise ValueError(f"the grounding module needs square latents, got sample_size {sample_size}")
            sample_size = h
        return cls(
            feature_channels=tuple(2 * s.channels for s in specs),  # uncond || cond
            feature_strides=tuple(s.stride for s in specs),
            latent_size=int(sample_size),
            image_size=image_size,
            text_dim=text_dim,
            **overrides,
        )

    # --- derived quantities (not saved) -------------------------------------------------

    @property
    def buckets(self) -> list[list[int]]:
        """Indices of the captured maps per resolution bucket, lowest resolution first."""
        pairs = zip(self.feature_channels, self.feature_strides)
        specs = [FeatureSpec(f"f{i}", c, s) for i, (c, s) in enumerate(pairs)]
        return buckets(specs)

    @property
    def n_buckets(self) -> int:
        return len(set(self.feature_strides))

    @property
    def bucket_sizes(self) -> list[int]:
        """Side each bucket is resized to: 2x its native size, at most the latent's."""
        strides = sorted(set(self.feature_strides), reverse=True)
        return [min(2 * (self.latent_size // s), self.latent_size) for s in strides]

    @property
    def feature_dim(self) -> int:
        """Channels of F (240 for SD v1)."""
        return sum(self.bucket_widths)

    @property
    def feature_size(self) -> int:
        """Side of F (64 for SD v1)."""
        return self.bucket_sizes[-1]


class PowerIterationConv2d(nn.Conv2d):
    """A conv whose weight is divided by a one-step power-iteration estimate of its top singular value.

    The released code's spectral norm (BigGAN's), written from its description. With W the weight
    as (out, in*k*k) and `u0` (1, out) the stored left-vector estimate, every forward, in train
    AND eval mode, runs one power iteration

        v = normalize(u0 W),   u = normalize(v Wᵀ),   sigma = v Wᵀ uᵀ

    and convolves with W / sigma (the gradient flows through W in sigma, not through u, v). Only
    in train mode is u written back to `u0` and sigma to `sv0` (the latter only for logging), so
    a module in eval mode gives the same output every call, and one in train mode refines its
    estimate a step per call. `u0` starts as a standard normal draw; both are buffers, saved with
    the weights. torch's `spectral_norm` parametrization instead runs 15 iterations at
    construction and none in eval mode: at initialisation this estimate is smaller (0.76-0.83 of
    the top singular value on the SD v1 module's mix convs, vs torch's 0.95-1.00; docs/official.md),
    so the released code's first steps use larger weights.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 eps: float = 1e-4) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, out_channels))  # (1, out) left singular vector estimate
        self.register_buffer("sv0", torch.ones(1))  # the last training sigma, never used

    def sigma(self) -> Tensor:
        """The estimate of W's top singular value (one power iteration; `u0` updated in train mode)."""
        w = self.weight.reshape(self.weight.shape[0], -1)  # (out, in*k*k)
        with torch.no_grad():
            v = F.normalize(self.u0 @ w, dim=1, eps=self.eps)  # (1, in*k*k)
            u = F.normalize(v @ w.t(), dim=1, eps=self.eps)  # (1, out)
        sigma = (v @ w.t() @ u.t()).squeeze()  # () differentiable in W
        if self.training:
            with torch.no_grad():
                self.u0.copy_(u)
                self.sv0.copy_(sigma.detach())
        return sigma

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight / self.sigma(), self.bias)


def sn_conv3x3(channels: int, kind: str, eps: float) -> nn.Module:
    """A spectral-normalised 3x3 conv (equal in/out channels), torch's or the released code's way."""
    if kind == "biggan":
        return PowerIterationConv2d(channels, channels, 3, padding=1, eps=eps)
    # One power iteration per training step, as in BigGAN. The parametrization keeps the raw
    # weight as `parametrizations.weight.original` (a parameter) and u, v as buffers.
    return torch_spectral_norm(nn.Conv2d(channels, channels, 3, padding=1), n_power_iterations=1, eps=eps)


class MixConv(nn.Module):
    """BigGAN-style residual block with equal in/out channels (hence no 1x1 shortcut conv).

    BN -> ReLU -> 3x3 SN-conv -> BN -> ReLU -> 3x3 SN-conv, plus a shortcut. BN has no affine
    parameters (batch statistics in training, running statistics in eval). The released code
    applies an in-place ReLU to the normalised input, so its shortcut carries ReLU(BN(x)), not x:
    `shortcut_after_relu=True` reproduces that, False gives the textbook block (x + F(x)).
    """

    def __init__(
        self,
        channels: int,
        shortcut_after_relu: bool = True,
        bn_eps: float = 1e-4,
        bn_momentum: float = 0.1,
        sn_eps: float = 1e-4,
        spectral_norm: str = "torch",
    ) -> None:
        super().__init__()
        self.shortcut_after_relu = shortcut_after_relu
        self.bn1 = nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum, affine=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum, affine=False)
        self.conv1 = sn_conv3x3(channels, spectral_norm, sn_eps)
        self.conv2 = sn_conv3x3(channels, spectral_norm, sn_eps)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (a if self.shortcut_after_relu else x)


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer over class queries; no positional encoding.

    LayerNorm is applied to the queries before each sub-layer; the patch tokens (memory) are
    not normalised. Attention projections have no bias (as in the released code).
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)

    def forward(self, q: Tensor, memory: Tensor, pad: Tensor | None) -> Tensor:
        # q: (B, K, D) class queries; memory: (B, N, D) patch tokens; pad: (B, K), True = padding
        h = self.norm1(q)
        # padded classes are hidden as keys, so real classes never see them
        q = q + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        h = self.norm2(q)
        q = q + self.cross_attn(h, memory, memory, need_weights=False)[0]  # each sample's own patches
        q = q + self.linear2(F.relu(self.linear1(self.norm3(q))))
        return q  # (B, K, D)


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size), as the released code does."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class GroundingModule(nn.Module):
    """Predicts per-class mask logits from one denoising step's UNet features (see module doc)."""

    def __init__(self, config: GroundingConfig) -> None:
        super().__init__()
        self.config = c = config
        bucket_channels = [sum(c.feature_channels[i] for i in idx) for idx in c.buckets]
        # 1. visual encoder: per-bucket 1x1 convs, then a mix-conv after each merge
        self.bucket_convs = nn.ModuleList(
            nn.Conv2d(cin, w, kernel_size=1, bias=False) for cin, w in zip(bucket_channels, c.bucket_widths)
        )
        cum = [sum(c.bucket_widths[: i + 1]) for i in range(1, c.n_buckets)]  # 48, 112, 240 for SD
        self.mix_convs = nn.ModuleList(
            MixConv(ch, c.shortcut_after_relu, c.bn_eps, c.bn_momentum, c.sn_eps, c.spectral_norm) for ch in cum
        )
        # 2. fusion: patch tokens as keys/values, class embeddings as queries (no bias, as released)
        self.to_k = nn.Linear(c.feature_dim * c.patch_size**2, c.d_model, bias=False)
        self.to_q = nn.Linear(c.text_dim, c.d_model, bias=False)
        if c.decoder_init == "cloned":  # the released code: one layer built, deep-copied n_layers times
            first = DecoderLayer(c.d_model, c.n_heads, c.ffn_dim)
            self.layers = nn.ModuleList(copy.deepcopy(first) for _ in range(c.n_layers))
        else:
            self.layers = nn.ModuleList(DecoderLayer(c.d_model, c.n_heads, c.ffn_dim) for _ in range(c.n_layers))
        self.mlp = MLP([c.d_model, c.d_model, c.d_model, c.feature_dim])
        if c.standardize_text:  # identity until set_text_statistics; saved with the weights
            self.register_buffer("text_shift", torch.zeros(c.text_dim))
            self.register_buffer("text_scale", torch.ones(()))

    def set_text_statistics(self, embeddings: Tensor) -> None:
        """Fix the class-embedding standardisation from the training classes' embeddings (N, text_dim).

        Why: a small text encoder's hidden states at different class names can share almost all of
        their direction. The shapes world's have pairwise cosines of 0.99-1.00: ~0.3 of a norm of
        ~5.6 is class-specific, so every query starts as nearly the same vector, and in a
        two-object image both prompted classes get nearly the same mask. Centring on the training
        classes' mean and dividing by one scalar, the RMS of their deviations over all dimensions,
        keeps only what tells classes apart. It is fixed from the *training* (seen) classes alone
        and applied unchanged to unseen ones.
        """
        if not self.config.standardize_text:
            raise ValueError("this module was built with standardize_text=False: it has no text statistics to set")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.text_dim or embeddings.shape[0] < 2:
            raise ValueError(f"text statistics need (N >= 2, {self.config.text_dim}) class embeddings, "
                             f"got {tuple(embeddings.shape)}")
        mean = embeddings.float().mean(0)
        rms = (embeddings.float() - mean).pow(2).mean().sqrt()
        if not rms > 0:
            raise ValueError("the training classes' embeddings are all identical: nothing tells them apart")
        self.text_shift.copy_(mean)
        self.text_scale.copy_(1.0 / rms)

    # --- 1. visual encoder ---------------------------------------------------------------

    def _check_features(self, features: Sequence[Tensor]) -> None:
        c = self.config
        if len(features) != len(c.feature_channels):
            raise ValueError(
                f"grounding module built for {len(c.feature_channels)} UNet feature maps, got "
                f"{len(features)}: was it trained for another UNet?"
            )
        batch = features[0].shape[0]
        for i, (f, ch, st) in enumerate(zip(features, c.feature_channels, c.feature_strides)):
            side = c.latent_size // st
            if f.dim() != 4 or tuple(f.shape[1:]) != (ch, side, side) or f.shape[0] != batch:
                raise ValueError(
                    f"UNet feature map {i} should be ({batch}, {ch}, {side}, {side}) (channels doubled "
                    f"for uncond || cond, stride {st} of latent {c.latent_size}), got {tuple(f.shape)}: "
                    "was the module built for another UNet, or the features captured without CFG?"
                )

    def encode_visual(self, features: Sequence[Tensor]) -> Tensor:
        """Captured UNet maps (capture order, each (B, C_i, H_i, W_i)) -> F (B, C, L, L)."""
        self._check_features(features)
        dtype = self.to_q.weight.dtype  # features may come in the UNet's fp16
        c = self.config
        x = None
        for k, (idx, size) in enumerate(zip(c.buckets, c.bucket_sizes)):
            # resize to 2x native (a no-op for the latent-sized bucket), concat in capture order
            maps = [_resize(features[i].to(dtype), size) for i in idx]
            b = self.bucket_convs[k](torch.cat(maps, dim=1))  # (B, width_k, size, size)
            if k == 0:  # lowest bucket: nothing to merge yet
                x = b
                continue
            x = _resize(x, size)  # bring the running map up to this bucket's size
            x = self.mix_convs[k - 1](torch.cat([x, b], dim=1))  # (B, widths so far, size, size)
        return x  # (B, C, L, L): 240 x 64 x 64 for SD v1

    # --- 2. fusion -----------------------------------------------------------------------

    def mask_embeddings(
        self, feats: Tensor, class_embeddings: Tensor, class_mask: Tensor | None = None
    ) -> Tensor:
        """F (B, C, L, L) and class embeddings (B, K, text_dim) -> mask embeddings (B, K, C).

        `class_mask` (B, K) bool, True = real class; padded classes get an embedding too, but
        it is meaningless and never influences the real ones.
        """
        c = self.config
        if class_embeddings.dim() != 3 or class_embeddings.shape[-1] != c.text_dim:
            raise ValueError(
                f"class embeddings should be (B, K, {c.text_dim}) (text encoder hidden size), "
                f"got {tuple(class_embeddings.shape)}"
            )
        B, K = class_embeddings.shape[:2]
        if feats.shape[0] != B:
            raise ValueError(f"features have batch {feats.shape[0]} but class embeddings have batch {B}")
        pad = None
        if class_mask is not None:
            if tuple(class_mask.shape) != (B, K):
                raise ValueError(f"class_mask should be ({B}, {K}), got {tuple(class_mask.shape)}")
            pad = ~class_mask.to(torch.bool)  # (B, K), True = padding (torch's convention)
            # a sample with no real class would have every key hidden (NaN softmax): unhide
            # them; its outputs are all padding anyway
            pad = pad & ~pad.all(dim=1, keepdim=True)
        p = c.patch_size
        # non-overlapping p x p patches, channel-major like the released code: (B, C*p*p, N)
        tokens = F.unfold(feats, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, C*p*p)
        memory = self.to_k(tokens)  # (B, N, D), keys and values; no positional encoding
        emb = class_embeddings.to(memory.dtype)
        if c.standardize_text:
            emb = (emb - self.text_shift.to(emb.dtype)) * self.text_scale.to(emb.dtype)
        q = self.to_q(emb)  # (B, K, D)
        for layer in self.layers:
            q = layer(q, memory, pad)
        return self.mlp(q)  # (B, K, C)

    # --- 3. logits -----------------------------------------------------------------------

    def mask_logits(self, feats: Tensor, embeddings: Tensor) -> Tensor:
        """F (B, C, L, L) . mask embeddings (B, K, C) -> logits (B, K, image_size, image_size).

        The paper upsamples F to the image size, then takes the dot product. Bilinear
        interpolation is linear and acts on each channel alike, so dotting first and
        upsampling the K logit maps is the same number (up to float rounding) at K/C of the
        memory: for SD, 2 maps instead of 240 channels at 512 x 512.
        """
        logits = torch.einsum("bchw,bkc->bkhw", feats, embeddings)  # (B, K, L, L)
        return _resize(logits, self.config.image_size)  # (B, K, image_size, image_size)

    def forward(
        self, features: Sequence[Tensor], class_embeddings: Tensor, class_mask: Tensor | None = None
    ) -> Tensor:
        """UNet maps + class embeddings (B, K, text_dim) -> logits (B, K, image_size, image_size)."""
        feats = self.encode_visual(features)  # (B, C, L, L)
        return self.mask_logits(feats, self.mask_embeddings(feats, class_embeddings, class_mask))

    # --- save / load ---------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (weights, BN statistics, SN vectors)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in asdict(self.config).items() if _WRITTEN_WHEN_SET.get(k, object()) != v}
        write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> GroundingModule:
        """Load a module saved by `save_pretrained`, in eval mode."""
        folder = Path(folder)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no trained grounding module in {folder} (missing {', '.join(missing)}): "
                "the train_grounding stage trains one"
            )
        with loading_model(folder, "grounding module"):
            raw = json.loads((folder / CONFIG_NAME).read_text())
            known = {f.name for f in fields(GroundingConfig)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ValueError(f"{CONFIG_NAME} has unknown fields {unknown}: written by another version?")
            model = cls(GroundingConfig(**raw))
            # strict: every weight, BN statistic and spectral-norm vector must be there
            model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        return model.to(device).eval()
