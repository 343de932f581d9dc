"""Which UNet features the grounding module reads, in the paper's (LDM) block numbering.

The paper takes the output of *every* UNet block at one denoising step: 12 input blocks, the
middle block and 12 output blocks for Stable Diffusion v1 (25 maps). LDM numbers them as:
- input blocks: conv_in, then per level its (resnet[+attention]) units and, except at the last
  level, the downsampler;
- middle block;
- output blocks: per level its (resnet[+attention]) units, the level's upsampler folded into its
  last unit (so that unit already has the next level's resolution).

In diffusers terms the same 25 points are: conv_in; each down block's (resnet, attention) pairs
and downsampler; the mid block; each up block's (resnet, attention) pairs, the upsampler after
the last pair. `feature_specs` lists them for any UNet2DConditionModel config, so the grounding
module's channel counts are derived, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class FeatureSpec:
    """One captured map: its LDM name, channels (per CFG half) and spatial downsampling."""

    name: str  # "in0".."in11", "mid", "out0".."out11" (LDM numbering)
    channels: int  # channels of one half; captured maps have 2x (uncond || cond)
    stride: int  # latent size / map size (1, 2, 4, 8 for SD)


def feature_specs(unet_config: Mapping[str, Any]) -> list[FeatureSpec]:
    """The captured maps of a UNet2DConditionModel, in capture order (inputs, mid, outputs)."""
    boc = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(boc) if isinstance(layers, int) else list(layers)
    levels = len(boc)
    specs: list[FeatureSpec] = [FeatureSpec("in0", boc[0], 1)]
    stride = 1
    for level in range(levels):
        for _ in range(layers[level]):
            specs.append(FeatureSpec(f"in{len(specs)}", boc[level], stride))
        if level < levels - 1:  # downsampler
            stride *= 2
            specs.append(FeatureSpec(f"in{len(specs)}", boc[level], stride))
    n_in = len(specs)
    specs.append(FeatureSpec("mid", boc[-1], stride))
    rev = boc[::-1]
    rev_layers = layers[::-1]
    k = 0
    for level in range(levels):
        for j in range(rev_layers[level] + 1):  # up blocks have one more unit than down blocks
            last = j == rev_layers[level]
            if last and level < levels - 1:
                stride //= 2  # the upsampler is folded into the level's last unit
            specs.append(FeatureSpec(f"out{k}", rev[level], stride))
            k += 1
    assert len(specs) == n_in + 1 + k
    return specs


def buckets(specs: list[FeatureSpec]) -> list[list[int]]:
    """Indices of the specs grouped by resolution, lowest resolution (largest stride) first."""
    strides = sorted({s.stride for s in specs}, reverse=True)
    return [[i for i, s in enumerate(specs) if s.stride == st] for st in strides]
