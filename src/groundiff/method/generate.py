"""The paper's Fig. 1 as a function: generate an image and ground the named classes in it.

One generation with feature capture at the capture step, then the grounding module turns the
captured features and each class's text embedding into a mask — for classes never seen in
grounding training too, since the class side is just the diffusion model's own text encoder.

`groundiff generate` and `groundiff demo` both call `generate_grounded` and write with
`save_grounded`, so the command and the app give the same files for the same request:

    check_request(pipe.tokenizer, prompt, classes)          # bad input: one ValueError line
    result = generate_grounded(pipe, module, prompt, classes, seed, sampling, daam_threshold=0.4)
    save_grounded(result, Path("out"), scale=8)             # image, masks, overlay (+ DAAM's)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from groundiff.diffusion.capture import FeatureCapture, capture_call_for
from groundiff.diffusion.daam import DAAMTrace
from groundiff.diffusion.pipeline import SamplingConfig, generate, image_size
from groundiff.diffusion.text import class_embeddings, token_positions, word_token_ids
from groundiff.figures import heat_colours, overlay, upscale


@dataclass
class Grounded:
    image: np.ndarray  # (H, W, 3) uint8
    classes: list[str]
    probabilities: np.ndarray  # (K, H, W) float32 in [0, 1]
    masks: np.ndarray  # (K, H, W) bool
    daam_heat: np.ndarray | None = None  # (K, H, W) float32 in [0, 1]: DAAM's min-max normalised heat maps
    daam_masks: np.ndarray | None = None  # (K, H, W) bool: heat > the DAAM threshold


def prompt_overflow(tokenizer, prompt: str) -> str:
    """The end of `prompt` that the text encoder never reads ('' when the prompt fits).

    The pipeline keeps the first `model_max_length` tokens (start and end tokens included) and
    drops the rest without a word; a user should be told which words did not count.
    """
    room = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded.input_ids) <= room:
        return ""
    return prompt[encoded.offset_mapping[room][0]:].strip()


def check_request(tokenizer, prompt: str, classes: Sequence[str]) -> None:
    """Refuse, with one line that says what to change, a request the method cannot answer.

    Each class must be named in the prompt, within the tokens the text encoder reads: the masks
    locate the objects the prompt asked for (and DAAM reads the class's own prompt tokens).
    """
    if not prompt.strip():
        raise ValueError("the prompt is empty; describe the image, e.g. 'a photograph of a star and a ring'")
    if not classes:
        raise ValueError("name at least one class to ground, one that the prompt names")
    dropped = prompt_overflow(tokenizer, prompt)
    for name in classes:
        word_token_ids(tokenizer, name)  # a name the tokenizer cannot spell is its own error
        try:
            token_positions(tokenizer, prompt, name)
        except ValueError:
            where = (f" within the first {tokenizer.model_max_length} tokens the text encoder reads"
                     if dropped else "")
            raise ValueError(f"class {name!r} is not named in the prompt{where}; put it in the prompt "
                             f"(e.g. 'a photograph of a {name}') or leave it out of the classes") from None


@torch.no_grad()
def generate_grounded(pipe, module, prompt: str, classes: list[str], seed: int, sampling: SamplingConfig,
                      capture_t: int = 1, template: str = "a photograph of a {}", threshold: float = 0.5,
                      daam_threshold: float | None = None,
                      on_step: Callable[[int, int], None] | None = None) -> Grounded:
    """Generate `prompt` from `seed` and predict a mask for every class in `classes`.

    daam_threshold: also trace DAAM's cross-attention heat maps over the same generation (the
    trace does not change the image) and threshold them; None: ours only.
    on_step(done, total): called after each denoising step (progress in the demo).
    """
    # 1. check inputs: before any denoising
    check_request(pipe.tokenizer, prompt, classes)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"mask threshold must be between 0 and 1 (a probability), got {threshold}")
    if sampling.guidance_scale <= 1.0:
        raise ValueError(f"guidance must be above 1, got {sampling.guidance_scale}: the grounding module "
                         "reads the UNet's features from the classifier-free-guidance batch")
    call = capture_call_for(sampling.steps, capture_t)
    extra = {}
    if on_step is not None:
        def step_end(_pipe, i, _t, tensors):
            on_step(i + 1, sampling.steps)
            return tensors  # unchanged: the callback only reports

        extra["callback_on_step_end"] = step_end
    # 2. generate once with the capture hooks (and DAAM's trace when asked); neither changes the image
    trace = DAAMTrace(pipe) if daam_threshold is not None else None
    with FeatureCapture(pipe.unet, call) as cap:
        if trace is None:
            image = generate(pipe, [prompt], [seed], sampling, fp32_call=call, **extra)[0]
        else:
            with trace:
                image = generate(pipe, [prompt], [seed], sampling, fp32_call=call, **extra)[0]
    # 3. ground every class: captured features + the class's text embedding -> logits
    features = [f.to(next(module.parameters()).device) for f in cap.result()]
    emb = class_embeddings(pipe, classes, template)[None].to(features[0].device)  # (1, K, D)
    logits = module(features, emb)[0].float()  # (K, S, S)
    if logits.shape[-1] != image.shape[0]:
        logits = torch.nn.functional.interpolate(logits[None], size=image.shape[:2], mode="bilinear",
                                                 align_corners=False)[0]
    probs = torch.sigmoid(logits).cpu().numpy()
    result = Grounded(image=image, classes=list(classes), probabilities=probs, masks=probs > threshold)
    # 4. DAAM's heat maps of the same classes in the same generation
    if trace is not None:
        heat = trace.heat_maps([prompt], [list(classes)], image_size(pipe))[0].cpu().numpy()  # (K, H, W)
        result.daam_heat, result.daam_masks = heat, heat > daam_threshold
    return result


def file_stem(name: str) -> str:
    """A class name as part of a file name ("potted plant" -> "potted_plant")."""
    return name.replace(" ", "_").replace("/", "_")


def save_grounded(result: Grounded, out: Path, scale: int = 1) -> list[Path]:
    """Write image.png, mask_<class>.png (0/255) per class and overlay.png; returns the paths.

    With DAAM traced, also daam_heat_<class>.png (a colour map) and daam_mask_<class>.png (0/255).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "image.png"]
    Image.fromarray(upscale(result.image, scale)).save(paths[0])
    for name, mask in zip(result.classes, result.masks):
        path = out / f"mask_{file_stem(name)}.png"
        Image.fromarray(upscale(mask.astype(np.uint8) * 255, scale)).save(path)
        paths.append(path)
    paths.append(out / "overlay.png")
    Image.fromarray(upscale(overlay(result.image, list(result.masks)), scale)).save(paths[-1])
    if result.daam_heat is not None and result.daam_masks is not None:
        for name, heat, mask in zip(result.classes, result.daam_heat, result.daam_masks):
            paths.append(out / f"daam_heat_{file_stem(name)}.png")
            Image.fromarray(upscale(heat_colours(heat), scale)).save(paths[-1])
            paths.append(out / f"daam_mask_{file_stem(name)}.png")
            Image.fromarray(upscale(mask.astype(np.uint8) * 255, scale)).save(paths[-1])
    return paths
