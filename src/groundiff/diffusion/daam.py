"""DAAM, the training-free baseline: word heat maps from the UNet's cross-attention.

As PAPER.md describes it (Tang et al., "What the DAAM"): sum the softmax cross-attention maps of a
word's tokens over all denoising steps, for every cross-attention layer in the down and up blocks
(the lowest resolution — 8x8 in SD — and the mid block skipped); upsample each layer's map
bicubically to the latent size, clamp at 0, average over layers and heads (and over the word's
sub-tokens); upsample to the image, min-max normalise and threshold (0.4).

    with DAAMTrace(pipe) as trace:
        pipe(prompts, ...)
    maps = trace.heat_maps(prompts, [["star"], ["star", "ring"]], image_size=512)

The trace wraps the attention processors through diffusers' `set_attn_processor` (restored on
exit) and leaves every layer's output untouched, so images are identical with or without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from groundiff.diffusion.text import token_positions


class _CrossAttentionRecorder:
    """Wraps a processor: records the cond half's head-summed attention probabilities."""

    def __init__(self, inner, name: str, store: dict[str, torch.Tensor]) -> None:
        self.inner, self.name, self.store = inner, name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            x = hidden_states
            if x.ndim == 4:
                x = x.flatten(2).transpose(1, 2)
            query = attn.head_to_batch_dim(attn.to_q(x))  # (2B*heads, hw, d)
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            key = attn.head_to_batch_dim(attn.to_k(context))  # (2B*heads, T, d)
            probs = attn.get_attention_scores(query, key, None)  # (2B*heads, hw, T)
            probs = probs.view(-1, attn.heads, *probs.shape[1:])  # (2B, heads, hw, T)
            cond = probs[probs.shape[0] // 2:].sum(1).float()  # (B, hw, T): summed over heads
            if self.name in self.store:
                self.store[self.name] += cond
            else:
                self.store[self.name] = cond
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, temb=temb, **kwargs)


def _layer_stride(name: str, levels: int) -> int:
    if name.startswith("down_blocks."):
        return 2 ** int(name.split(".")[1])
    if name.startswith("up_blocks."):
        return 2 ** (levels - 1 - int(name.split(".")[1]))
    return 2 ** (levels - 1)  # mid_block


class DAAMTrace:
    """Context manager tracing cross-attention over a whole generation (all steps)."""

    def __init__(self, pipe, all_layers: bool = False) -> None:
        """all_layers: also record the cross-attention layers DAAM skips (the lowest resolution and
        the mid block), for `layer_maps`; DAAM's own maps (`token_maps`, `heat_maps`) never use them."""
        self.pipe = pipe
        self.unet = pipe.unet
        self.store: dict[str, torch.Tensor] = {}
        self._original: dict | None = None
        levels = len(self.unet.config.block_out_channels)
        self.lowest = 2 ** (levels - 1)
        cross = [name for name in self.unet.attn_processors if name.endswith("attn2.processor")]
        self.layers = [name for name in cross if _layer_stride(name, levels) < self.lowest]  # DAAM's
        self.recorded = cross if all_layers else list(self.layers)
        self.heads = {name: self.unet.get_submodule(name.rsplit(".", 1)[0]).heads for name in self.recorded}

    def __enter__(self) -> "DAAMTrace":
        self.store.clear()
        self._original = dict(self.unet.attn_processors)
        wrapped = {
            name: _CrossAttentionRecorder(proc, name, self.store) if name in self.recorded else proc
            for name, proc in self._original.items()
        }
        self.unet.set_attn_processor(wrapped)
        return self

    def __exit__(self, *exc) -> None:
        if self._original is not None:
            self.unet.set_attn_processor(self._original)
            self._original = None

    @torch.no_grad()
    def token_maps(self) -> torch.Tensor:
        """(B, T, L, L): per-token maps at latent size L, averaged over layers and heads."""
        if not self.store:
            raise RuntimeError(
                "No heat maps found. Did you forget to run generation inside `with DAAMTrace(pipe):`?"
            )
        total = None
        for name in self.layers:
            maps = self._layer_token_maps(name)
            total = maps if total is None else total + maps
        return total / len(self.layers)

    def _layer_token_maps(self, name: str) -> torch.Tensor:
        """(B, T, L, L): one layer's per-token maps, upsampled bicubically to the latent size L,
        clamped at 0, averaged over heads (still summed over steps)."""
        size = self.unet.config.sample_size
        maps = self.store[name]  # (B, hw, T), summed over steps and heads
        side = int(round(maps.shape[1] ** 0.5))
        maps = maps.transpose(1, 2).reshape(maps.shape[0], maps.shape[2], side, side)
        maps = F.interpolate(maps, size=(size, size), mode="bicubic", align_corners=False).clamp_min(0)
        return maps / self.heads[name]

    @torch.no_grad()
    def layer_maps(self, prompts: Sequence[str], words: Sequence[Sequence[str]],
                   image_size: int) -> list[dict[str, torch.Tensor]]:
        """For sample i, {layer: (len(words[i]), image_size, image_size)}: every recorded layer's word
        maps on their own, upsampled as DAAM's average is (bicubic to the latent size, clamped at 0,
        mean over heads and sub-tokens, bicubic to the image), summed over steps, NOT normalised."""
        if not self.store:
            raise RuntimeError(
                "No heat maps found. Did you forget to run generation inside `with DAAMTrace(pipe):`?"
            )
        out: list[dict[str, torch.Tensor]] = [{} for _ in prompts]
        positions = [[token_positions(self.pipe.tokenizer, prompt, name) for name in names]
                     for prompt, names in zip(prompts, words)]
        for layer in self.recorded:
            tokens = self._layer_token_maps(layer)  # (B, T, L, L)
            if tokens.shape[0] != len(prompts):
                raise ValueError(f"traced {tokens.shape[0]} images but got {len(prompts)} prompts")
            for i, pos in enumerate(positions):
                maps = torch.stack([tokens[i, p].mean(0) for p in pos])[:, None]  # (K, 1, L, L)
                out[i][layer] = F.interpolate(maps, size=(image_size, image_size), mode="bicubic",
                                              align_corners=False)[:, 0]
        return out

    @torch.no_grad()
    def heat_maps(self, prompts: Sequence[str], words: Sequence[Sequence[str]], image_size: int) -> list[torch.Tensor]:
        """For sample i, (len(words[i]), image_size, image_size) maps min-max normalised to [0, 1]."""
        tokens = self.token_maps()  # (B, T, L, L)
        if tokens.shape[0] != len(prompts):
            raise ValueError(f"traced {tokens.shape[0]} images but got {len(prompts)} prompts")
        out = []
        for i, (prompt, names) in enumerate(zip(prompts, words)):
            maps = []
            for name in names:
                pos = token_positions(self.pipe.tokenizer, prompt, name)
                maps.append(tokens[i, pos].mean(0))  # mean over sub-tokens (and repeats)
            maps = torch.stack(maps)[:, None]  # (K, 1, L, L)
            maps = F.interpolate(maps, size=(image_size, image_size), mode="bicubic", align_corners=False)[:, 0]
            lo = maps.flatten(1).min(1).values[:, None, None]
            hi = maps.flatten(1).max(1).values[:, None, None]
            out.append((maps - lo) / (hi - lo).clamp_min(1e-8))
        return out
