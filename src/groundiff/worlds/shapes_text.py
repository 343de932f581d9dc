"""The shapes world's frozen text encoder (world v2): a mini-CLIP pretrained on the renderer's pairs.

Stable Diffusion's text encoder is CLIP's, trained contrastively against images and then *frozen*
while the UNet learns to read it; its token states stay distinct word by word, so the UNet's
cross-attention can bind each word to its object (which is why DAAM works there). World v1 trained
its text encoder jointly with the UNet, which learned to ignore the class word's position (pairwise
cosine 0.997 between classes) and carry the class on `<eos>`/`<pad>`. Here, as in SD:

- the text encoder (`CLIPTextModel`, the world's config) is pretrained against a small image encoder
  on rendered (image, caption) pairs, then frozen;
- the loss is CLIP's symmetric InfoNCE on the pooled `<eos>` state (Radford et al. 2021) plus
  FILIP's token-wise term (Yao et al., ICLR 2022): each caption token is scored by its best-matching
  image patch, so the class and colour words' *own* states must name what is in the image, not only
  `<eos>`'s. Captions that are equal in a batch count as positives of each other's images.

    encoder_metrics = train_text_encoder(text_encoder, tokenizer, cfg, opts, work_dir)

It is one resumable phase of `shapes_diffusion.train_diffusion` (`text_encoder: clip`), finished as
`clip.safetensors` with the text encoder's and the image encoder's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from groundiff.core.checkpoint import fingerprint
from groundiff.core.schema import DiffusionConfig, RunOptions
from groundiff.core.training import TrainingLoop, load_finished


#: The DiffusionConfig fields that decide the pretrained text encoder.
CLIP_FIELDS = ("seed", "image_size", "max_objects", "colour_prob", "background_prob", "text_width", "text_layers",
               "text_heads", "max_length", "clip_steps", "clip_batch_size", "clip_lr", "clip_token_weight")


class PatchImageEncoder(nn.Module):
    """Rendered scene (B, 3, S, S) in [-1, 1] -> patch features (B, (S/4)^2, width), L2-normalised
    after a linear projection, and a pooled, normalised global embedding (B, width)."""

    def __init__(self, width: int, channels: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())

        self.body = nn.Sequential(block(3, channels // 2, 2), block(channels // 2, channels, 1),
                                  block(channels, channels, 2), block(channels, channels, 1))
        self.patch_proj = nn.Linear(channels, width)
        self.global_proj = nn.Linear(channels, width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(images).flatten(2).transpose(1, 2)  # (B, P, C)
        patches = F.normalize(self.patch_proj(x), dim=-1)
        pooled = F.normalize(self.global_proj(x.mean(1)), dim=-1)
        return patches, pooled


class TextHeads(nn.Module):
    """Projections of the text encoder's states into the shared space (token-wise and pooled)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.token_proj = nn.Linear(width, width)
        self.pooled_proj = nn.Linear(width, width)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's initial temperature


def caption_targets(captions: list[str]) -> torch.Tensor:
    """(B, B) row-normalised targets: an image's positives are every caption equal to its own."""
    keys = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([keys[c] for c in captions])
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def soft_infonce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of (B, B) image-text logits against symmetric soft targets."""
    return 0.5 * (torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-targets * F.log_softmax(logits.t(), 1), 1).mean())


def token_similarity(tokens: torch.Tensor, token_mask: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """FILIP's text-to-image similarity (B_text, B_image): per token, the best patch's cosine,
    averaged over the caption's content tokens (`token_mask`), and the image-to-text one averaged
    over patches; the two are averaged."""
    sim = torch.einsum("tkd,ipd->tikp", tokens, patches)  # (Bt, Bi, K, P)
    t2i = (sim.max(3).values * token_mask[:, None, :]).sum(2) / token_mask.sum(1, keepdim=True).clamp(min=1)
    i2t_tok = sim.max(2).values.mean(2)  # per patch, the best content-or-not token; mean over patches
    return 0.5 * (t2i + i2t_tok)


def content_mask(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """1 for word tokens, 0 for <bos>, <eos> and <pad>."""
    special = torch.tensor([tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id])
    return (~torch.isin(ids, special)).float()


def eos_states(hidden: torch.Tensor, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The hidden state at each row's first <eos> (B, width)."""
    pos = (ids == eos_id).int().argmax(1)
    return hidden[torch.arange(hidden.shape[0]), pos]


def clip_loss(text_encoder, heads: TextHeads, image_encoder: PatchImageEncoder, tokenizer,
              images: torch.Tensor, captions: list[str], token_weight: float) -> tuple[torch.Tensor, dict]:
    """The mini-CLIP loss of one batch, and its parts."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(images.device)
    hidden = text_encoder(ids).last_hidden_state
    patches, pooled_img = image_encoder(images)
    pooled_txt = F.normalize(heads.pooled_proj(eos_states(hidden, ids, tokenizer.eos_token_id)), dim=-1)
    scale = heads.log_scale.clamp(max=float(np.log(100))).exp()
    targets = caption_targets(captions).to(images.device)
    global_loss = soft_infonce(scale * pooled_img @ pooled_txt.t(), targets)
    row = {"global_loss": global_loss.item()}
    loss = global_loss
    if token_weight:
        tokens = F.normalize(heads.token_proj(hidden), dim=-1)
        sim = token_similarity(tokens, content_mask(ids, tokenizer), patches)  # (text, image)
        token_loss = soft_infonce(scale * sim.t(), targets)
        loss = loss + token_weight * token_loss
        row["token_loss"] = token_loss.item()
    with torch.no_grad():  # share of images whose best caption (pooled) is one of their own
        best = (pooled_img @ pooled_txt.t()).argmax(1)
        row["retrieval_acc"] = float(targets[torch.arange(len(captions)), best].gt(0).float().mean())
    return loss, row


def clip_lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of `steps`, then cosine decay to 0."""
    warmup = max(steps // 20, 1)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(steps - warmup, 1)))


def train_text_encoder(text_encoder, tokenizer, cfg: DiffusionConfig, opts: RunOptions, work_dir: Path,
                       render: Callable[[int, int], tuple[torch.Tensor, list[str]]],
                       on_log: Callable[[dict], None] | None = None) -> dict:
    """Phase 0 of world v2: pretrain `text_encoder` as a mini-CLIP (resumable in `work_dir`), leave it
    frozen (eval, no grad). `render(step, batch_size)` gives batch `step`'s images and captions."""
    fp = fingerprint({"phase": "clip", **{k: getattr(cfg, k) for k in CLIP_FIELDS}})
    done = work_dir / "clip.safetensors"
    torch.manual_seed(cfg.seed + 17)  # the image encoder and heads: their own seeded draw
    image_encoder, heads = PatchImageEncoder(cfg.text_width), TextHeads(cfg.text_width)
    modules = {"text": text_encoder, "image": image_encoder, "heads": heads}
    dev = opts.device
    if not load_finished(done, fp, modules):
        params = [p for m in modules.values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.clip_lr, weight_decay=0.1)
        for m in modules.values():
            m.to(dev).train()
        report = on_log and (lambda m: on_log({"clip_loss": m["loss"], "clip_retrieval_acc": m["retrieval_acc"],
                                               "step": m["step"]}))
        loop = TrainingLoop(work_dir, fp, cfg.clip_steps, modules, {"clip": opt}, log_every=opts.log_every,
                            checkpoint_every=opts.checkpoint_every, desc="text encoder (mini-CLIP)",
                            on_log=report, prefix="clip_")
        loop.resume()

        def step(s: int) -> dict:
            for group in opt.param_groups:
                group["lr"] = cfg.clip_lr * clip_lr_factor(s, cfg.clip_steps)
            images, captions = render(s, cfg.clip_batch_size)
            loss, row = clip_loss(text_encoder, heads, image_encoder, tokenizer, images.to(dev), captions,
                                  cfg.clip_token_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return {"loss": loss.item(), **row}

        loop.run(step)
        loop.finish(done, modules)
    text_encoder.to(dev).eval().requires_grad_(False)
    return {"clip_steps": cfg.clip_steps}
