"""Loading a world's diffusers pipeline and generating seeded images in batches.

The same code serves the shapes world's folder and Stable Diffusion v1.x (hub id or local path):
both are `StableDiffusionPipeline`s. Each row carries its own seed, so an image depends only on
(prompt, seed, settings), never on its batch neighbours or batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 25  # DDIM steps (the paper: 50)
    guidance_scale: float = 4.0  # classifier-free guidance (the paper: 5.0 train, 7.5 test)
    eta: float = 0.0  # DDIM eta (the paper: 0, deterministic)
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {self.guidance_scale}")


def load_pipeline(source: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline with DDIM sampling from a folder or hub id, progress bar off."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from groundiff.worlds.preflight import looks_like_hub_id

    path = Path(source)
    if not path.exists() and not looks_like_hub_id(str(source)):
        raise FileNotFoundError(
            f"{source}: no diffusers pipeline folder here. In the shapes world run "
            "`dvc repro world_diffusion`; for Stable Diffusion give a hub id (e.g. "
            "runwayml/stable-diffusion-v1-5) or a local folder"
        )
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(source), dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def image_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def generate(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig, **call_kwargs) -> np.ndarray:
    """Generate one image per (prompt, seed): (N, H, W, 3) uint8."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    size = image_size(pipe)
    out = []
    for i in range(0, len(prompts), cfg.batch_size):
        batch_prompts = prompts[i:i + cfg.batch_size]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + cfg.batch_size]]
        latents = initial_latents(pipe, generators)
        images = pipe(
            batch_prompts,
            height=size,
            width=size,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            latents=latents,
            output_type="np",
            **call_kwargs,
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


def initial_latents(pipe, generators: list[torch.Generator]) -> torch.Tensor:
    """Per-sample starting noise, drawn on the CPU so results match across devices and batch sizes."""
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    noise = torch.stack([torch.randn((c, s, s), generator=g) for g in generators])
    return (noise * pipe.scheduler.init_noise_sigma).to(pipe.device, pipe.unet.dtype)
