"""Tiny, randomly initialised models with the paper's architectures, for tests without downloads.

`tiny_sd_pipeline` writes a Stable-Diffusion-architecture pipeline (4-level UNet with
cross-attention at the first three levels and 2 layers per block -> the same 25 feature maps as
SD v1, a factor-8 VAE, a CLIP text encoder with a real byte-level BPE CLIP tokenizer) to a folder
that `StableDiffusionPipeline.from_pretrained` loads — the paper's code path, shrunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path, words: Iterable[str], split_words: Iterable[str] = (),
                         model_max_length: int = 16) -> None:
    """A real CLIP BPE tokenizer whose merges spell `words` as single tokens.

    `split_words` get merges only up to their first half, so they encode as two sub-word tokens
    (like CLIP's "potted" + "plant"), to exercise averaging over sub-tokens.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []

    def add_merges(word: str) -> list[str]:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merges.append((current, piece))
            current = current + piece
            if current not in vocab:
                vocab.append(current)
        return [current]

    for word in words:
        if len(word) > 1:
            add_merges(word)
    for word in split_words:
        half = len(word) // 2
        head, tail = word[:half], word[half:]
        # head as a word-internal piece (no </w>), tail as a word end
        current = head[0]
        for ch in head[1:]:
            merges.append((current, ch))
            current += ch
            if current not in vocab:
                vocab.append(current)
        if len(tail) > 1:
            add_merges(tail)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": model_max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))


def tiny_sd_pipeline(folder: Path, words: Iterable[str], split_words: Iterable[str] = (), seed: int = 0) -> Path:
    """Save a tiny random SD-architecture StableDiffusionPipeline to `folder`; returns it."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    words = list(words)
    template_words = ["a", "photograph", "of", "and"]
    write_clip_tokenizer(folder / "_tok", [*template_words, *words], split_words)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tok")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=128,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_shapes_pipeline(folder: Path | None = None, seed: int = 0):
    """A tiny random shapes-world StableDiffusionPipeline (the world's real architecture, shrunk).

    Saved to `folder` when given; returns the pipeline either way.
    """
    from groundiff.worlds.shapes_diffusion import DiffusionConfig, assemble_pipeline, build_components

    cfg = DiffusionConfig(seed=seed, vae_channels=8, block_out_channels=(8, 16, 16), attention_heads=2, text_width=16)
    pipe = assemble_pipeline(build_components(cfg), 1.0)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe
