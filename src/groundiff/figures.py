"""Pictures people look at: image grids with captions, mask overlays. Pure numpy + PIL."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Distinct overlay colours for masks (RGB).
MASK_COLOURS = np.array([(255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 220, 120), (200, 80, 255)], np.uint8)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling: tiny images stay crisp."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def overlay(image: np.ndarray, masks: list[np.ndarray | None], alpha: float = 0.55) -> np.ndarray:
    """Tint each mask's pixels with its colour over the image."""
    out = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        colour = MASK_COLOURS[i % len(MASK_COLOURS)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().astype(np.uint8)


def captioned_grid(images: list[np.ndarray], captions: list[str], columns: int = 8, scale: int = 4,
                   caption_lines: int = 3, chars_per_line: int = 18) -> Image.Image:
    """Images in a grid, each with its (wrapped) caption underneath."""
    if not images:
        raise ValueError("captioned_grid needs at least one image")
    font = ImageFont.load_default()
    h, w = images[0].shape[:2]
    tile_w, text_h = w * scale, 12 * caption_lines + 4
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile_w, rows * (h * scale + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * tile_w, (i // columns) * (h * scale + text_h)
        canvas.paste(Image.fromarray(upscale(image, scale)), (x, y))
        lines = textwrap.wrap(caption, chars_per_line)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + h * scale + 2 + 12 * j), line, fill="black", font=font)
    return canvas


def image_rows(rows: list[list[np.ndarray]], scale: int = 4, gap: int = 2) -> Image.Image:
    """A table of equally sized images (e.g. image | oracle | ours | DAAM per row)."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w * scale + gap), len(rows) * (h * scale + gap)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas.paste(Image.fromarray(upscale(image, scale)), (c * (w * scale + gap), r * (h * scale + gap)))
    return canvas
