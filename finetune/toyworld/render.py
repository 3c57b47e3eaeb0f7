"""Scenes of the toy world and their renderer.

A `Scene` names one value of every attribute plus a `seed`; the seed fixes the small
random variation of the drawing (position jitter, scale jitter, rotation), so
`render(scene)` is a pure function of the scene.

Rendering is antialiased: the shape's coverage and its pattern are rasterized at
`SUPERSAMPLE` times the output size and box-averaged down. Each output pixel is then
exactly `(1 - a) * background + m * color`, where `a` is the shape's coverage of the
pixel and `m` its coverage weighted by the pattern's brightness (1 for the shape's
color, `SHADE` for the pattern's darker shade). The checker relies on that linear model,
which a Gaussian blur or a resize keeps.

Geometry, in pixels of a 64x64 image (other sizes scale everything):
  * a shape's "radius" is 10 px (small) or 15.5 px (large), times a scale jitter in
    [0.93, 1.07]; outlines are defined in units of that radius (`outline`),
  * its centroid sits at x = 32 + offset (left/right: -/+14 px small, -/+9 px large) plus
    +-1.5 px jitter, y = 32 +- 2 px,
  * rotation is uniform in [-15, 15] degrees; patterns turn with the shape,
  * patterns live in the shape's frame, anchored at its centroid: 45-degree stripes
    with a 10 px period (half dark), dots of radius 2.6 px on a 10 px square lattice
    (~21% dark), 6 px checks (half dark).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from finetune.toyworld.attributes import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    PATTERNS,
    POSITIONS,
    SHADE,
    SHAPES,
    SIZES,
)

BASE_SIZE = 64  # the geometry constants below are in pixels of a BASE_SIZE image
SUPERSAMPLE = 4
RADIUS = {"small": 10.0, "large": 15.5}
SCALE_JITTER = 0.07
X_OFFSET = {"small": 14.0, "large": 9.0}  # |x offset| of the left/right positions
POSITION_SIGN = {"left": -1.0, "center": 0.0, "right": 1.0}
XY_JITTER = (1.5, 2.0)
MAX_ROTATION = 15.0  # degrees
PATTERN_PERIOD = 10.0
DOT_RADIUS = 2.6
CHECK_SIZE = 6.0
_CIRCLE_POINTS = 64


@dataclass(frozen=True)
class Variation:
    """The small random changes of one rendering: pixel offsets, scale factor, degrees."""

    dx: float
    dy: float
    scale: float
    rotation: float


@dataclass(frozen=True)
class Scene:
    """One toy-world image: a value of every attribute and the seed of its jitter."""

    shape: str
    color: str
    size: str
    position: str
    background: str
    pattern: str
    seed: int = 0

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {values}")
        if self.color == self.background:
            raise ValueError(f"the shape color may not equal the background color ({self.color!r})")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")

    @property
    def attributes(self) -> dict[str, str]:
        """The attribute values (without the seed), keyed like ATTRIBUTES."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "Scene":
        return cls(**{k: values[k] for k in (*ATTRIBUTES, "seed") if k in values})

    @property
    def variation(self) -> Variation:
        """The jitter drawn from `seed` (the same on every call and platform)."""
        return _variation(int(self.seed))


@functools.lru_cache(maxsize=65536)
def _variation(seed: int) -> Variation:
    u = np.random.default_rng(seed).random(4)
    return Variation(
        dx=float((2 * u[0] - 1) * XY_JITTER[0]),
        dy=float((2 * u[1] - 1) * XY_JITTER[1]),
        scale=float(1 + (2 * u[2] - 1) * SCALE_JITTER),
        rotation=float((2 * u[3] - 1) * MAX_ROTATION),
    )


def sample_scene(rng: np.random.Generator) -> Scene:
    """A scene with every attribute uniform over its values (the color uniform over
    the colors that differ from the background) and a fresh jitter seed."""
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colors = [c for c in COLORS if c != background]
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=colors[rng.integers(len(colors))],
        size=SIZES[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
        background=background,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------- geometry


def _circle(n: int, radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, start: float = 0.0,
            stop: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    t = -math.pi / 2 + np.arange(2 * points) * math.pi / points  # first tip points up
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart(n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # lobes up
    return np.stack([x, y], axis=1) * (1.12 / 16)


def _cross(half_length: float = 1.05, half_width: float = 0.38) -> np.ndarray:
    a, b = half_length, half_width
    return np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                     (-a, b), (-a, -b), (-b, -b)], dtype=np.float64)


def _crescent(outer: float = 1.05, inner: float = 0.9, offset: float = 0.55, n: int = 48) -> np.ndarray:
    """A disc with an offset disc cut out: horns open to the right."""
    x = (outer**2 - inner**2 + offset**2) / (2 * offset)
    y = math.sqrt(outer**2 - x**2)
    theta = math.atan2(y, x)
    phi = math.atan2(y, x - offset)
    outer_arc = _circle(n, outer, start=theta, stop=2 * math.pi - theta)
    inner_arc = _circle(n, inner, offset, 0.0, start=2 * math.pi - phi, stop=phi)
    return np.concatenate([outer_arc, [(x, -y)], inner_arc, [(x, y)]])


def _polygon_area_centroid(p: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    return abs(float(area)), centroid


@functools.lru_cache(maxsize=None)
def outline(shape: str) -> np.ndarray:
    """The shape's outline polygon [N, 2] in radius units, y down, centroid at the origin."""
    makers = {
        "circle": lambda: _circle(_CIRCLE_POINTS),
        "square": lambda: np.array([(-0.88, -0.88), (0.88, -0.88), (0.88, 0.88), (-0.88, 0.88)]),
        "triangle": lambda: _circle(3, 1.3, start=-math.pi / 2, stop=1.5 * math.pi),
        "star": lambda: _star(5, 1.25, 0.55),
        "heart": _heart,
        "cross": _cross,
        "crescent": _crescent,
    }
    if shape not in makers:
        raise ValueError(f"unknown shape {shape!r}")
    points = np.asarray(makers[shape](), dtype=np.float64)
    _, centroid = _polygon_area_centroid(points)
    points = points - centroid
    points.setflags(write=False)
    return points


@functools.lru_cache(maxsize=None)
def unit_area(shape: str) -> float:
    """Area of the shape's outline in radius units (pixels^2 = unit_area * radius^2)."""
    return _polygon_area_centroid(outline(shape))[0]


@dataclass(frozen=True)
class Placement:
    """Where a scene's shape lands in a BASE_SIZE image: centroid, radius, rotation."""

    cx: float
    cy: float
    radius: float
    rotation: float


def placement(scene: Scene) -> Placement:
    v = scene.variation
    return Placement(
        cx=BASE_SIZE / 2 + POSITION_SIGN[scene.position] * X_OFFSET[scene.size] + v.dx,
        cy=BASE_SIZE / 2 + v.dy,
        radius=RADIUS[scene.size] * v.scale,
        rotation=v.rotation,
    )


def _rotation_matrix(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def shape_points(shape: str, cx: float, cy: float, radius: float, rotation: float) -> np.ndarray:
    """The outline placed in image coordinates [N, 2] (x right, y down, pixels)."""
    return outline(shape) @ _rotation_matrix(rotation).T * radius + np.array([cx, cy])


def pattern_darkness(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean map: where `pattern` uses its dark shade, at shape-frame coordinates (u, v)
    in pixels of a BASE_SIZE image (origin at the centroid, axes turned with the shape)."""
    p = PATTERN_PERIOD
    if pattern == "plain":
        return np.zeros(np.broadcast(u, v).shape, dtype=bool)
    if pattern == "striped":
        return ((u + v) * (1 / (math.sqrt(2) * p)) + 0.25) % 1.0 >= 0.5
    if pattern == "dotted":  # lattice points at (p/2 + i p, p/2 + j p): four dots round the centre
        du = (u % p) - p / 2
        dv = (v % p) - p / 2
        return du * du + dv * dv < DOT_RADIUS**2
    if pattern == "checkered":
        return ((np.floor(u * (1 / CHECK_SIZE)) + np.floor(v * (1 / CHECK_SIZE))) % 2) == 1
    raise ValueError(f"unknown pattern {pattern!r}")


def coverage(scene: Scene, size: int = BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(a, m): float32 [size, size] maps of the shape's coverage and of its coverage
    weighted by pattern brightness (1 or SHADE), so pixel = (1 - a) bg + m color."""
    s = SUPERSAMPLE
    k = size / BASE_SIZE
    pl = placement(scene)
    points = shape_points(scene.shape, pl.cx, pl.cy, pl.radius, pl.rotation) * (k * s)
    # Rasterize only the (SUPERSAMPLE-aligned) bounding box of the shape.
    big = size * s
    x0 = max(0, int(math.floor(points[:, 0].min() / s)) * s - s)
    y0 = max(0, int(math.floor(points[:, 1].min() / s)) * s - s)
    x1 = min(big, int(math.ceil(points[:, 0].max() / s)) * s + s)
    y1 = min(big, int(math.ceil(points[:, 1].max() / s)) * s + s)
    a = np.zeros((size, size), np.float32)
    m = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return a, m
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    # PIL fills pixels whose centres are inside; shift by half a pixel to match.
    ImageDraw.Draw(canvas).polygon([(x - x0 - 0.5, y - y0 - 0.5) for x, y in points], fill=1)
    inside = np.asarray(canvas, dtype=np.float32)
    brightness = inside
    if scene.pattern != "plain":
        # Pixel centres of the crop in BASE_SIZE pixels, relative to the centroid.
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / (k * s) - pl.cx
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / (k * s) - pl.cy
        c, sn = math.cos(math.radians(pl.rotation)), math.sin(math.radians(pl.rotation))
        u = xs[None, :] * c + ys[:, None] * sn  # rotate image offsets by -rotation
        v = -xs[None, :] * sn + ys[:, None] * c
        dark = pattern_darkness(scene.pattern, u, v)
        brightness = inside * np.where(dark, np.float32(SHADE), np.float32(1.0))
    h, w = (y1 - y0) // s, (x1 - x0) // s
    a[y0 // s: y0 // s + h, x0 // s: x0 // s + w] = inside.reshape(h, s, w, s).mean(axis=(1, 3))
    m[y0 // s: y0 // s + h, x0 // s: x0 // s + w] = brightness.reshape(h, s, w, s).mean(axis=(1, 3))
    return a, m


def render(scene: Scene, size: int = BASE_SIZE) -> np.ndarray:
    """The scene as an RGB uint8 array [size, size, 3]."""
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size}")
    a, m = coverage(scene, int(size))
    bg = np.asarray(BACKGROUND_RGB[scene.background], np.float32)
    color = np.asarray(COLOR_RGB[scene.color], np.float32)
    image = bg * (1 - a[..., None]) + color * m[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
