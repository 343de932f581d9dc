"""The paper's Fig. 1 as a function: generate an image and ground the named classes in it.

One generation with feature capture at the capture step, then the grounding module turns the
captured features and each class's text embedding into a mask — for classes never seen in
grounding training too, since the class side is just the diffusion model's own text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.pipeline import SamplingConfig, generate
from groundiff.diffusion.text import class_embeddings
from groundiff.figures import overlay, upscale


@dataclass
class Grounded:
    image: np.ndarray  # (H, W, 3) uint8
    classes: list[str]
    probabilities: np.ndarray  # (K, H, W) float32 in [0, 1]
    masks: np.ndarray  # (K, H, W) bool


@torch.no_grad()
def generate_grounded(pipe, module, prompt: str, classes: list[str], seed: int, sampling: SamplingConfig,
                      capture_t: int = 1, template: str = "a photograph of a {}", threshold: float = 0.5) -> Grounded:
    """Generate `prompt` from `seed` and predict a mask for every class in `classes`."""
    if not classes:
        raise ValueError("name at least one class to ground, e.g. --classes star")
    call = capture_call_for(sampling.steps, capture_t)
    with FeatureCapture(pipe.unet, call) as cap:
        image = generate(pipe, [prompt], [seed], sampling, fp32_call=call)[0]
    features = [f.to(next(module.parameters()).device) for f in cap.result()]
    emb = class_embeddings(pipe, classes, template)[None].to(features[0].device)  # (1, K, D)
    logits = module(features, emb)[0].float()  # (K, S, S)
    if logits.shape[-1] != image.shape[0]:
        logits = torch.nn.functional.interpolate(logits[None], size=image.shape[:2], mode="bilinear",
                                                 align_corners=False)[0]
    probs = torch.sigmoid(logits).cpu().numpy()
    return Grounded(image=image, classes=list(classes), probabilities=probs, masks=probs > threshold)


def save_grounded(result: Grounded, out: Path, scale: int = 1) -> list[Path]:
    """Write image.png, mask_<class>.png (0/255) per class and overlay.png; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "image.png"]
    Image.fromarray(upscale(result.image, scale)).save(paths[0])
    for name, mask in zip(result.classes, result.masks):
        path = out / f"mask_{name.replace(' ', '_')}.png"
        Image.fromarray(upscale(mask.astype(np.uint8) * 255, scale)).save(path)
        paths.append(path)
    paths.append(out / "overlay.png")
    Image.fromarray(upscale(overlay(result.image, list(result.masks)), scale)).save(paths[-1])
    return paths
