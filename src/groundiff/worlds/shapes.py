"""The shapes world's renderer: named shapes in named colours, with exact per-instance masks.

Every scene is a pure function of its seed (numpy PCG64), so a dataset is reproducible from
`(seed, index)` alone. Shapes are rasterised by sampling each pixel centre (no anti-aliasing):
a pixel belongs to an object exactly when the object's colour was written there, so masks are
exact, disjoint, and respect occlusion (later objects are drawn on top).

Design choices, made with the world's diffusion model in mind (a small UNet learns to draw these
on a CPU; see ../../../shared/docs/MEASUREMENTS.md):
- 32x32 images by default: cheap to model, yet objects are large (diameter ~40-70% of the
  image), because ~9 px wide objects at 32x32 proved too small to learn.
- silhouettes chosen to stay distinct at that size (no hexagon, which blurs into a circle).
- rotations are small (|angle| <= 20 deg) so a square never becomes a diamond.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from groundiff.core.schema import SHAPE_CLASSES

# --- vocabulary -------------------------------------------------------------------------------

#: The shape classes, in label order (label = index + 1; 0 is background): the params schema's
#: vocabulary of the shapes world, which this renderer draws.
CLASSES: tuple[str, ...] = SHAPE_CLASSES

#: Object colours: saturated, far from each other and from every background colour.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (150, 50, 200),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
}

#: Background colours: dark or muted, so every object stands out on every background.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (110, 110, 110),
    "navy": (20, 30, 80),
    "brown": (90, 55, 30),
    "teal": (20, 90, 90),
}

# --- geometry ---------------------------------------------------------------------------------
# Each shape is an "inside" test on points (u, v) in the object's own frame: the object is
# centred at 0 and fits the unit disk; v points down (image convention).


def _star_polygon(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]]),
    "triangle": np.array([[0.0, -1.0], [0.95, 0.75], [-0.95, 0.75]]),
    "star": _star_polygon(),
    "cross": np.array([
        [-0.3, -1.0], [0.3, -1.0], [0.3, -0.3], [1.0, -0.3], [1.0, 0.3], [0.3, 0.3],
        [0.3, 1.0], [-0.3, 1.0], [-0.3, 0.3], [-1.0, 0.3], [-1.0, -0.3], [-0.3, -0.3],
    ]),
    "arrow": np.array([
        [-1.0, -0.28], [0.1, -0.28], [0.1, -0.8], [1.0, 0.0],
        [0.1, 0.8], [0.1, 0.28], [-1.0, 0.28],
    ]),
    "diamond": np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]]),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.85**2
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 >= 0.75**2)
    if shape == "heart":
        # The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, with y up, fitted to the disk.
        x, y = u * 1.25, -v * 1.25 + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if shape in _POLYGONS:
        return _inside_polygon(u, v, _POLYGONS[shape])
    raise KeyError(f"unknown shape {shape!r}; the shapes world knows {', '.join(CLASSES)}")


# --- scenes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene, in pixel units."""

    shape: str
    colour: str
    cx: float  # centre x (pixels)
    cy: float  # centre y (pixels)
    radius: float  # radius of the object's bounding disk (pixels)
    angle: float  # rotation (degrees)
    rgb: tuple[int, int, int] = (0, 0, 0)  # the exact fill colour drawn (named colour + jitter)


@dataclass
class Scene:
    """A rendered scene: the image, exact instance masks (in drawing order) and its caption."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool, visible pixels of each object, pairwise disjoint
    objects: list[ShapeObject]
    background: tuple[str, ...]  # one colour name, or two for a two-tone background
    seed: int
    classes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.classes = [o.shape for o in self.objects]

    def caption(self, template: str = "a photograph of a {}", colours: bool = True) -> str:
        """A caption naming every object, e.g. "a photograph of a red star and a blue ring"."""
        names = [f"{o.colour} {o.shape}" if colours else o.shape for o in self.objects]
        return template.format(" and a ".join(names))

    def label_map(self, class_to_label: dict[str, int]) -> np.ndarray:
        """(H, W) uint8 semantic label map; 0 is background."""
        out = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for obj, mask in zip(self.objects, self.masks):
            out[mask] = class_to_label[obj.shape]
        return out


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are sampled. Sizes are in pixels of the (square) image."""

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 2
    min_radius_frac: float = 0.22  # object radius as a fraction of the image size
    max_radius_frac: float = 0.34
    max_angle: float = 20.0
    max_overlap: float = 0.25  # at most this fraction of an earlier object may be hidden
    two_tone_prob: float = 0.5
    colour_jitter: int = 12  # +/- per channel, so colour names are categories, not exact values

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_radius_frac <= self.max_radius_frac <= 0.5:
            raise ValueError("need 0 < min_radius_frac <= max_radius_frac <= 0.5")


def _rasterise(obj: ShapeObject, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    dx, dy = (xs - obj.cx) / obj.radius, (ys - obj.cy) / obj.radius
    a = math.radians(obj.angle)
    u = math.cos(a) * dx + math.sin(a) * dy  # rotate points by -angle = rotate shape by +angle
    v = -math.sin(a) * dx + math.cos(a) * dy
    return _inside(obj.shape, u, v)


def _background(rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, tuple[str, ...]]:
    size = spec.image_size
    names = list(BACKGROUND_COLOURS)
    first = names[rng.integers(len(names))]
    img = np.empty((size, size, 3), dtype=np.int16)
    img[:] = BACKGROUND_COLOURS[first]
    if rng.random() >= spec.two_tone_prob:
        return img, (first,)
    second = [n for n in names if n != first][rng.integers(len(names) - 1)]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    direction = rng.integers(3)  # horizontal, vertical or diagonal split
    offset = rng.uniform(0.3, 0.7) * size
    split = {0: ys > offset, 1: xs > offset, 2: (xs + ys) > 2 * offset}[int(direction)]
    img[split] = BACKGROUND_COLOURS[second]
    return img, (first, second)


def render_scene(
    seed: int,
    spec: SceneSpec = SceneSpec(),
    classes: list[str] | None = None,
    vocabulary: tuple[str, ...] = CLASSES,
) -> Scene:
    """Render the scene determined by `seed`.

    classes: the shapes to draw, in order (a shape may repeat); if None, 1..max_objects shapes
    are drawn uniformly from `vocabulary`.
    """
    rng = np.random.default_rng(seed)
    for name in classes or ():
        if name not in CLASSES:
            raise KeyError(f"unknown shape {name!r}; the shapes world knows {', '.join(CLASSES)}")
    if classes is None:
        n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
        classes = [vocabulary[i] for i in rng.integers(len(vocabulary), size=n)]
    size = spec.image_size
    image, background = _background(rng, spec)
    # Objects of one scene get distinct colours, so touching objects never merge into one blob.
    colour_order = [list(OBJECT_COLOURS)[i] for i in rng.permutation(len(OBJECT_COLOURS))]

    objects: list[ShapeObject] = []
    masks: list[np.ndarray] = []
    for shape in classes:
        # Rejection-sample a placement that hides at most `max_overlap` of any earlier object;
        # after 50 tries shrink the object, and finally accept (tiny images, many objects).
        for attempt in range(100):
            scale = 1.0 if attempt < 50 else 0.75
            radius = rng.uniform(spec.min_radius_frac, spec.max_radius_frac) * size * scale
            margin = radius * 0.9
            obj = ShapeObject(
                shape=shape,
                colour=colour_order[len(objects)],
                cx=float(rng.uniform(margin, size - margin)),
                cy=float(rng.uniform(margin, size - margin)),
                radius=float(radius),
                angle=float(rng.uniform(-spec.max_angle, spec.max_angle)),
            )
            mask = _rasterise(obj, size)
            if not mask.any():
                continue
            hidden_ok = all(
                (m & mask).sum() <= spec.max_overlap * max(m.sum(), 1) for m in masks
            )
            if hidden_ok:
                break
        for m in masks:  # occlusion: the new object hides what was drawn before
            m &= ~mask
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, size=3)
        rgb = np.clip(np.asarray(OBJECT_COLOURS[obj.colour]) + jitter, 0, 255)
        image[mask] = rgb
        masks.append(mask)
        objects.append(dataclasses.replace(obj, rgb=tuple(int(c) for c in rgb)))

    return Scene(
        image=np.clip(image, 0, 255).astype(np.uint8),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool),
        objects=objects,
        background=background,
        seed=seed,
    )
