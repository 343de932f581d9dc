"""Real images made to look generated, one trait at a time (`eval_zs3.appearance`).

A variant trained on generated images only (A, B, C) has never seen a real image. Is it held back
by how real images *look*, or by the shapes it learned? Score it on real images altered toward the
generated ones, one trait at a time; if it scores much higher on the altered images, the colour gap
is what costs it; if not, its errors lie in the shapes it learned. The traits:

    real              the images as they are (the default: nothing changes)
    grey_background   background pixels (label 0) set to the generated images' median background
                      colour (`median_background` of the synthetic dataset's one- and two-object splits)
    blurred           a Gaussian blur (sigma BLUR_SIGMA px): generated shapes have soft edges
    pastel            object pixels mixed PASTEL_MIX toward white: plain prompts come out pale

The alterations read the image's ground-truth labels (which pixels are background, which objects):
this is a diagnosis of a trained model, never a way to score the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from groundiff.core.schema import APPEARANCES
from groundiff.data.voc import IGNORE, read_split

PASTEL_MIX = 0.4  # share of white mixed into object pixels
BLUR_SIGMA = 0.6  # pixels
GENERATED_SPLITS = ("one", "two")  # the synthetic splits whose background colour grey_background copies

#: (image (H, W, 3) uint8, its labels (H, W) uint8) -> the altered image (H, W, 3) uint8
Alteration = Callable[[np.ndarray, np.ndarray], np.ndarray]


def grey_background(image: np.ndarray, label: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Background pixels (label 0) painted `colour`; objects and ignored pixels untouched."""
    out = image.copy()
    out[label == 0] = colour
    return out


def blurred(image: np.ndarray, label: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The whole image blurred (Gaussian, `sigma` pixels); the labels are not read."""
    from PIL import Image, ImageFilter

    return np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def pastel(image: np.ndarray, label: np.ndarray, mix: float = PASTEL_MIX) -> np.ndarray:
    """Object pixels (labels 1..K, not 255) mixed `mix` of the way toward white."""
    out = image.astype(np.float32)
    objects = (label > 0) & (label != IGNORE)
    out[objects] = (1 - mix) * out[objects] + mix * 255.0
    return np.rint(out).astype(np.uint8)


def median_background(root: str | Path, splits: Sequence[str] = GENERATED_SPLITS) -> np.ndarray:
    """The median RGB (3,) uint8 of the background pixels (label 0) over a VOC-layout dataset's splits."""
    pixels = [image[label == 0] for split in splits for _, image, label in read_split(Path(root), split)]
    if not pixels or not sum(len(p) for p in pixels):
        raise ValueError(f"{root}: no background pixels in splits {', '.join(splits)} to take a colour from")
    return np.median(np.concatenate(pixels), axis=0).round().astype(np.uint8)


def alteration(appearance: str, generated_root: str | Path | None = None) -> Alteration | None:
    """The alteration `appearance` names (None for `real`: the images as they are).

    grey_background takes its colour from the generated dataset at `generated_root`.
    """
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance: {appearance!r} is not one of {', '.join(APPEARANCES)}")
    if appearance == "real":
        return None
    if appearance == "grey_background":
        if generated_root is None:
            raise ValueError("appearance: grey_background copies the generated images' background colour; "
                             "pass the synthetic dataset's folder")
        colour = median_background(generated_root)
        return lambda image, label: grey_background(image, label, colour)
    return {"blurred": blurred, "pastel": pastel}[appearance]


__all__ = ["APPEARANCES", "BLUR_SIGMA", "PASTEL_MIX", "Alteration", "alteration", "blurred", "grey_background",
           "median_background", "pastel"]
