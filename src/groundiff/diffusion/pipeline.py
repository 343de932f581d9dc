"""Loading a world's diffusers pipeline and generating seeded images in batches.

The same code serves the shapes world's folder and Stable Diffusion v1.x (hub id or local path):
both are `StableDiffusionPipeline`s. Each row carries its own seed, so an image depends only on
(prompt, seed, settings), never on its batch neighbours or batch size.

Precision. `SamplingConfig.precision: bf16` runs the UNet's denoising calls under bf16 autocast
(1.7x faster on this project's AVX512-BF16 CPU, at the same fidelity: README), with its output cast back to
fp32 so that guidance and the scheduler step stay in fp32; the text encoder and VAE run in fp32.
The call whose features the grounding module reads (`fp32_call`) runs in fp32, so features
captured during generation equal those `capture.replay_features` recomputes from the stored latent.
"""

from __future__ import annotations

from groundiff.core.checkpoint import loading_model
from groundiff.core.schema import SamplingConfig
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: SamplingConfig.precision -> autocast dtype (None: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_pipeline(source: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline with DDIM sampling from a folder or hub id, progress bar off."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from groundiff.core.paths import looks_like_hub_id

    path = Path(source)
    if not path.exists() and not looks_like_hub_id(str(source)):
        raise FileNotFoundError(
            f"{source}: no diffusers pipeline folder here (the shapes world's is made by its world_diffusion "
            "stage); for Stable Diffusion give a hub id (e.g. runwayml/stable-diffusion-v1-5) or a local folder"
        )
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    # A hub id that is not downloaded is the preflight's to explain; a local folder that fails is damaged.
    with loading_model(source, "diffusers pipeline") if path.exists() else nullcontext():
        pipe = StableDiffusionPipeline.from_pretrained(
            str(source), dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def image_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@contextmanager
def unet_precision(unet: torch.nn.Module, precision: str, fp32_call: int | None = None) -> Iterator[None]:
    """Run the UNet's calls in this block under `precision` autocast, output cast to fp32.

    fp32_call: the 0-based index of a call (a denoising step) to run in fp32 instead. Hooks,
    removed on exit; a no-op for fp32.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    device_type = next(unet.parameters()).device.type
    calls, active = [0], []

    def pre(module, args, kwargs):
        ctx = torch.autocast(device_type, dtype=dtype, enabled=calls[0] != fp32_call)
        ctx.__enter__()
        active.append(ctx)

    def post(module, args, output):
        active.pop().__exit__(None, None, None)
        calls[0] += 1
        if output is None:  # the call raised (always_call): let its error through
            return None
        if isinstance(output, tuple):
            return (output[0].float(), *output[1:])
        output.sample = output.sample.float()
        return output

    handles = [unet.register_forward_pre_hook(pre, with_kwargs=True),
               unet.register_forward_hook(post, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def generate(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig, fp32_call: int | None = None,
             **call_kwargs) -> np.ndarray:
    """Generate one image per (prompt, seed): (N, H, W, 3) uint8.

    fp32_call: a denoising step (0-based UNet call) kept in fp32 under a reduced `cfg.precision`:
    the capture step, so that captured features match replayed ones.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    size = image_size(pipe)
    out = []
    for i in range(0, len(prompts), cfg.batch_size):
        batch_prompts = prompts[i:i + cfg.batch_size]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + cfg.batch_size]]
        latents = initial_latents(pipe, generators)
        with unet_precision(pipe.unet, cfg.precision, fp32_call):
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
