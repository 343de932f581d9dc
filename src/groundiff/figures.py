"""Pictures people look at: image grids with captions, mask overlays. Pure numpy + PIL."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Distinct overlay colours for masks (RGB).
MASK_COLOURS = np.array([(255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 220, 120), (200, 80, 255)], np.uint8)


#: Largest tile side in pixels: real photos (VOC, 500x375; SD, 512x512) are shrunk to fit it.
MAX_TILE = 256


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling: tiny images stay crisp."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def _tiles(images: list[np.ndarray], scale: int) -> tuple[list[Image.Image], int, int]:
    """Images as equally sized tiles: tiny ones upscaled by `scale`; photos of any size letterboxed
    into MAX_TILE x MAX_TILE (nearest-neighbour, so label maps keep their colours)."""
    h, w = images[0].shape[:2]
    if all(im.shape[:2] == (h, w) for im in images) and max(h, w) * scale <= MAX_TILE:
        return [Image.fromarray(upscale(im, scale)) for im in images], w * scale, h * scale
    tiles = []
    for im in images:
        tile = Image.new("RGB", (MAX_TILE, MAX_TILE), "white")
        thumb = Image.fromarray(im).convert("RGB")
        ratio = MAX_TILE / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * ratio)), max(1, round(thumb.height * ratio))), Image.NEAREST)
        tile.paste(thumb, ((MAX_TILE - thumb.width) // 2, (MAX_TILE - thumb.height) // 2))
        tiles.append(tile)
    return tiles, MAX_TILE, MAX_TILE


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
    tiles, tile_w, tile_h = _tiles(images, scale)
    text_h = 12 * caption_lines + 4
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile_w, rows * (tile_h + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (i % columns) * tile_w, (i // columns) * (tile_h + text_h)
        canvas.paste(tile, (x, y))
        lines = textwrap.wrap(caption, chars_per_line)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + tile_h + 2 + 12 * j), line, fill="black", font=font)
    return canvas


def image_rows(rows: list[list[np.ndarray]], scale: int = 4, gap: int = 2) -> Image.Image:
    """A table of equally sized images (e.g. image | oracle | ours | DAAM per row)."""
    tiles, tile_w, tile_h = _tiles([image for row in rows for image in row], scale)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tile_w + gap), len(rows) * (tile_h + gap)), "white")
    k = 0
    for r, row in enumerate(rows):
        for c in range(len(row)):
            canvas.paste(tiles[k], (c * (tile_w + gap), r * (tile_h + gap)))
            k += 1
    return canvas


#: Anchors of the heat-map colour scale (black -> purple -> orange -> light yellow, like "inferno").
HEAT_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 on a dark-to-bright scale (hot = bright)."""
    x = np.clip(heat, 0.0, 1.0) * (len(HEAT_ANCHORS) - 1)
    low = np.minimum(x.astype(np.int64), len(HEAT_ANCHORS) - 2)
    frac = (x - low)[..., None]
    return ((1 - frac) * HEAT_ANCHORS[low] + frac * HEAT_ANCHORS[low + 1]).round().astype(np.uint8)
