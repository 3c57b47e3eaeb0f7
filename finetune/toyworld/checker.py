"""Measures the attributes of a toy-world image (a render, or a generated sample).

    measured = measure(image)            # {"background": "white", "color": "red", ...}
    matches(measured, scene)             # {"background": True, "color": True, ...}
    accuracy(images, scenes)             # {"shape": 0.99, ..., "all": 0.97}

How, for one uint8 image (resized to 64x64 first if it is another size):

1. background: the named background color most border pixels are nearest to; `b` is
   the median RGB of those pixels, the noise level their median distance from `b`.
2. color: the renderer draws every pixel as p = (1 - a) b + m c: a mix of the background
   and a shade (0 <= m <= a) of the shape color c. For each named color c (other than the
   background) that model is fitted by least squares to the pixels that differ from the
   background; the color leaving the smallest residual, plus penalties for impossible
   fits (a or m out of range, or a < CORE_ALPHA in the eroded interior), wins. Blur and
   resizing mix pixels linearly, so the model still holds for blurred renders.
3. with that c, the fitted a is a soft shape mask and m / a the brightness of the fill
   (1 on the plain color, SHADE on the pattern's darker shade).
4. position: the mask's centroid x; size: the radius sqrt(area / unit_area(shape)).
5. shape: the soft mask, resampled around its centroid at the scale sqrt(area), is
   compared (soft IoU) with each shape's outline drawn the same way at rotations
   -20..20 degrees; the best match wins.
6. pattern: from the brightness inside the mask (3x3-averaged against pixel noise):
   its relative spread (~0: plain), the coherence of its gradients (one dominant
   direction: striped), and, for dots versus checks, its skewness (a few dark dots on
   the bright fill: negative; checks: symmetric) plus the dark fraction, from the mean
   brightness sum(m) / sum(a), which blur does not change (dots ~22%, checks 50%).
   Thresholds were set on renders that were blurred (sigma up to 2), resized (2x and
   4x down and up), warped, color-shifted and noised (see `degrade.py`).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from finetune.toyworld.attributes import ATTRIBUTES, BACKGROUND_RGB, BACKGROUNDS, COLOR_RGB, COLORS, SHADE, SHAPES
from finetune.toyworld.render import BASE_SIZE, RADIUS, outline, unit_area

MEASURED = ("shape", "color", "size", "position", "background", "pattern")  # the keys measure() returns

GRID = 32  # side of the normalized mask compared with the shape templates
GRID_EXTENT = 1.1  # the grid spans +-GRID_EXTENT * sqrt(area) around the centroid
ROTATIONS = tuple(range(-20, 21, 5))  # template rotations, degrees
TEMPLATE_BLURS = (0.0, 1.0, 2.0)  # template blurs, in grid cells (~0.07 sqrt(area) each)
SIZE_THRESHOLD = math.sqrt(RADIUS["small"] * RADIUS["large"])  # radius (px) between small and large
POSITION_THRESHOLD = 4.5  # |centroid x - centre| (px) beyond which a shape is left/right
BORDER = 2  # width (px) of the frame the background is read from
ROUGH_DISTANCE = 25.0  # RGB distance from the background beyond which a pixel is surely shape
ROUGH_FRACTION = 0.3  # ... or this fraction of the image's 99th-percentile distance, if more
QUIET_DISTANCE = 10.0  # RGB distance below which a pixel counts as background (coverage 0)
FIT_SLACK = 0.15  # a color fit may overshoot its ranges by this much unpenalized (color casts)
CORE_ALPHA = 0.75  # least coverage a color's fit may claim in the eroded interior
PLAIN_REL_STD = 0.02  # relative brightness spread below which a fill is plain
STRIPED_COHERENCE = 0.8  # gradient coherence above which a pattern is striped

_BG = np.array([BACKGROUND_RGB[n] for n in BACKGROUNDS], np.float32)
_COLOR = {name: np.asarray(rgb, np.float64) for name, rgb in COLOR_RGB.items()}
_YS, _XS = np.mgrid[0:BASE_SIZE, 0:BASE_SIZE].astype(np.float64) + 0.5


# ----------------------------------------------------------------------------- templates


@functools.lru_cache(maxsize=None)
def _templates() -> tuple[np.ndarray, np.ndarray]:
    """Soft masks [len(SHAPES) * len(ROTATIONS), GRID * GRID] of the unit-area outlines on
    the normalized grid, and the shape index of each row."""
    s = 4  # supersampling
    big = GRID * s
    to_pixels = big / (2 * GRID_EXTENT)
    rows, index = [], []
    for i, shape in enumerate(SHAPES):
        points = outline(shape) / math.sqrt(unit_area(shape))
        for degrees in ROTATIONS:
            t = math.radians(degrees)
            rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            p = (points @ rot.T) * to_pixels + big / 2
            canvas = Image.new("L", (big, big), 0)
            ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in p], fill=255)
            mask = np.asarray(canvas, np.float32).reshape(GRID, s, GRID, s).mean(axis=(1, 3)) / 255
            for sigma in TEMPLATE_BLURS:  # blurred copies match blurry images better
                rows.append(_blur2d(mask, sigma).ravel())
                index.append(i)
    return np.stack(rows), np.array(index)


def _blur2d(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, r)
    h = sum(w * p[:, i: i + x.shape[1]] for i, w in enumerate(k))
    return sum(w * h[i: i + x.shape[0]] for i, w in enumerate(k))


_OFFSETS = (np.arange(GRID, dtype=np.float64) + 0.5) / GRID * 2 * GRID_EXTENT - GRID_EXTENT


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Samples a 2D array at pixel-centre coordinates (x, y); 0 outside the image."""
    h, w = image.shape
    padded = np.zeros((h + 2, w + 2), image.dtype)
    padded[1:-1, 1:-1] = image
    x = np.clip(x + 0.5, 0, w + 1 - 1e-6)
    y = np.clip(y + 0.5, 0, h + 1 - 1e-6)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w + 1), np.minimum(y0 + 1, h + 1)
    top = padded[y0, x0] + (padded[y0, x1] - padded[y0, x0]) * fx
    bottom = padded[y1, x0] + (padded[y1, x1] - padded[y1, x0]) * fx
    return top + (bottom - top) * fy


# ----------------------------------------------------------------------------- helpers


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    image = np.ascontiguousarray(image[..., :3])
    if image.shape[:2] != (BASE_SIZE, BASE_SIZE):
        image = np.asarray(Image.fromarray(image).resize((BASE_SIZE, BASE_SIZE), Image.Resampling.BILINEAR))
    return image.astype(np.float64)


def _background(image: np.ndarray) -> tuple[str, np.ndarray, float]:
    """(name, median RGB, noise level) of the background, read from the image border."""
    b = BORDER
    border = np.concatenate([image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3),
                             image[b:-b, :b].reshape(-1, 3), image[b:-b, -b:].reshape(-1, 3)])
    nearest = ((border[:, None, :] - _BG[None]) ** 2).sum(-1).argmin(1)
    best = int(np.bincount(nearest, minlength=len(BACKGROUNDS)).argmax())
    pixels = border[nearest == best]
    rgb = np.median(pixels, axis=0)
    noise = float(np.median(np.sqrt(((pixels - rgb) ** 2).sum(-1))))
    return BACKGROUNDS[best], rgb, noise


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 square; outside the image counts as background."""
    h = mask.copy()
    h[:, 1:] &= mask[:, :-1]
    h[:, :-1] &= mask[:, 1:]
    h[:, [0, -1]] = False
    v = h.copy()
    v[1:] &= h[:-1]
    v[:-1] &= h[1:]
    v[[0, -1]] = False
    return v


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box sum (zero outside)."""
    h = x.copy()
    h[:, 1:] += x[:, :-1]
    h[:, :-1] += x[:, 1:]
    v = h.copy()
    v[1:] += h[:-1]
    v[:-1] += h[1:]
    return v


def _projectors(bg: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each color c [C, 3]: the basis [-bg, c] ([C, 3, 2]) and its pseudo-inverse ([C, 2, 3])."""
    basis = np.stack([np.broadcast_to(-bg, colors.shape), colors], axis=2)
    return basis, np.linalg.inv(basis.transpose(0, 2, 1) @ basis) @ basis.transpose(0, 2, 1)


# ----------------------------------------------------------------------------- attributes


def _color(rough: np.ndarray, core: np.ndarray, bg_name: str, bg: np.ndarray) -> tuple[str, dict[str, float]]:
    """The named color whose model fits the shape's pixels best. `rough`: pixels [N, 3]
    (minus the background) that differ from the background; `core`: those of the eroded
    interior, where the fit must also claim mostly shape (a >= CORE_ALPHA): that settles
    near-degenerate cases such as orange on yellow, whose pixels could also be read as a
    red shade half mixed with the yellow."""
    names = [n for n in COLORS if n != bg_name]
    colors = np.stack([_COLOR[n] for n in names])
    basis, pinv = _projectors(bg, colors)
    pixels = np.concatenate([rough, core])
    floor = np.concatenate([np.zeros(len(rough)), np.full(len(core), CORE_ALPHA)])
    coef = pixels[None] @ pinv.transpose(0, 2, 1)  # [C, N, 2]: (a, m) per color and pixel
    residual = np.sqrt(((pixels[None] - coef @ basis.transpose(0, 2, 1)) ** 2).sum(-1))
    a, m = coef[..., 0], coef[..., 1]
    penalty = (np.maximum(a - 1 - FIT_SLACK, 0) + np.maximum(floor - a, 0)) * float(np.linalg.norm(bg))
    penalty += (np.maximum(m - a - FIT_SLACK, 0) + np.maximum(-m - FIT_SLACK, 0)) * np.linalg.norm(
        colors, axis=1)[:, None]
    score = (residual + penalty).sum(1) / max(float(np.sqrt((pixels**2).sum(-1)).sum()), 1e-6)
    scores = dict(zip(names, score.tolist()))
    return min(scores, key=scores.get), scores


def _shape(alpha: np.ndarray, cx: float, cy: float, area: float) -> tuple[str, dict[str, float]]:
    g = _OFFSETS * math.sqrt(area)
    sample = _bilinear(alpha, cx + g[None, :], cy + g[:, None]).ravel()
    templates, index = _templates()
    iou = np.minimum(templates, sample).sum(1) / np.maximum(np.maximum(templates, sample).sum(1), 1e-6)
    best_per_shape = np.zeros(len(SHAPES))
    np.maximum.at(best_per_shape, index, iou)
    scores = dict(zip(SHAPES, best_per_shape.tolist()))
    return SHAPES[int(best_per_shape.argmax())], scores


def _pattern_features(alpha: np.ndarray, m: np.ndarray) -> dict[str, float]:
    mean_k = float(m.sum() / max(alpha.sum(), 1e-6))
    # Brightness k = m / a after a 3x3 average of both (against pixel noise; like any blur
    # it keeps the model), on the interior where the averaged coverage is high.
    a3, m3 = _box3(alpha) / 9, _box3(m) / 9
    k = m3 / np.maximum(a3, 1e-6)
    inner = a3 > 0.7
    valid = _erode(inner)[1:-1, 1:-1]  # (a cross would do; the square is as good)
    gx = (k[1:-1, 2:] - k[1:-1, :-2])[valid]
    gy = (k[2:, 1:-1] - k[:-2, 1:-1])[valid]
    jxx, jyy, jxy = float(gx @ gx), float(gy @ gy), float(gx @ gy)
    trace = jxx + jyy
    coherence = math.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / trace if trace > 1e-12 else 0.0
    kin = k[1:-1, 1:-1][valid]
    if kin.size > 1:
        mu, std = float(kin.mean()), float(kin.std())
        skew = float(((kin - mu) ** 3).mean()) / max(std, 1e-6) ** 3
    else:
        mu, std, skew = mean_k, 0.0, 0.0
    return {"dark": (1 - mean_k) / (1 - SHADE), "rel_std": std / max(mu, 1e-6), "skew": skew,
            "coherence": coherence, "interior": float(kin.size)}


def _pattern(f: Mapping[str, float]) -> str:
    if f["rel_std"] < PLAIN_REL_STD or (f["rel_std"] < 1.75 * PLAIN_REL_STD and f["dark"] < 0.08):
        return "plain"
    if f["coherence"] > STRIPED_COHERENCE:
        return "striped"
    # Dots: a few dark spots on the bright fill (negative skew, ~22% dark); checks:
    # symmetric, half dark. A generated image's brightness may be off, so both count.
    z = (f["skew"] + 0.4) + 1.5 * (f["dark"] - 0.4)
    return "dotted" if z < 0 else "checkered"


# ----------------------------------------------------------------------------- public API


def measure(image: np.ndarray, details: bool = False) -> dict:
    """The attributes seen in `image` (uint8 [H, W, 3]): a dict with the keys of
    MEASURED. With no shape found, all but "background" are None. With `details`,
    also "_scores": the evidence (per-value scores, pattern features, area, radius...)."""
    img = _as_image(image)
    bg_name, bg, noise = _background(img)
    diff = (img - bg).reshape(-1, 3)
    dist = np.sqrt((diff**2).sum(-1))
    contrast = float(np.percentile(dist, 99))
    rough = (dist > max(ROUGH_DISTANCE, 4 * noise, ROUGH_FRACTION * contrast)).reshape(BASE_SIZE, BASE_SIZE)
    result = dict.fromkeys(MEASURED)
    result["background"] = bg_name
    if rough.sum() < 4:
        if details:
            result["_scores"] = {"area": 0.0}
        return result
    core = _erode(_erode(rough))
    if core.sum() < 4:
        core = _erode(rough)
    color, color_scores = _color(diff[rough.ravel()], diff[core.ravel()], bg_name, bg)

    basis, pinv = _projectors(bg, _COLOR[color][None])
    coef = diff @ pinv[0].T
    quiet = dist < max(QUIET_DISTANCE, 3 * noise)  # indistinguishable from the background
    alpha = np.where(quiet, 0.0, np.clip(coef[:, 0], 0, 1)).reshape(BASE_SIZE, BASE_SIZE)
    m = np.minimum(np.clip(coef[:, 1], 0, None).reshape(BASE_SIZE, BASE_SIZE), alpha)
    area = float(alpha.sum())
    cx = float((alpha * _XS).sum() / area)
    cy = float((alpha * _YS).sum() / area)

    shape, shape_scores = _shape(alpha, cx, cy, area)
    radius = math.sqrt(area / unit_area(shape))
    offset = cx - BASE_SIZE / 2
    features = _pattern_features(alpha, m)
    result.update(
        color=color,
        shape=shape,
        size="small" if radius < SIZE_THRESHOLD else "large",
        position="left" if offset < -POSITION_THRESHOLD else "right" if offset > POSITION_THRESHOLD else "center",
        pattern=_pattern(features),
    )
    if details:
        result["_scores"] = {"color": color_scores, "shape": shape_scores, "pattern": features,
                             "area": area, "radius": radius, "cx": cx, "cy": cy, "noise": noise}
    return result


def _target(scene_or_dict) -> dict:
    if hasattr(scene_or_dict, "attributes"):
        return dict(scene_or_dict.attributes)
    return dict(scene_or_dict)


def matches(measured: Mapping, scene_or_dict, attributes: Iterable[str] | None = None) -> dict[str, bool]:
    """attribute -> whether `measured` agrees with the scene (a Scene, or a dict of
    attribute values, e.g. only the ones a prompt asked for), for `attributes`
    (default: every attribute the scene or dict names)."""
    target = _target(scene_or_dict)
    if attributes is None:
        attributes = [a for a in ATTRIBUTES if a in target]
    out = {}
    for name in attributes:
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; expected one of {tuple(ATTRIBUTES)}")
        if name not in target:
            raise KeyError(f"the scene has no {name!r}")
        out[name] = measured.get(name) == target[name]
    return out


def accuracy(images: Sequence[np.ndarray] | np.ndarray, scenes: Sequence,
             attributes: Iterable[str] | None = None) -> dict[str, float]:
    """Fraction of images whose measured attributes match their scenes, per attribute,
    and "all": the fraction matching on every one of those attributes."""
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
    if not len(scenes):
        raise ValueError("no images")
    rows = [matches(measure(im), sc, attributes) for im, sc in zip(images, scenes)]
    names = list(rows[0])
    out = {n: float(np.mean([r[n] for r in rows])) for n in names}
    out["all"] = float(np.mean([all(r.values()) for r in rows]))
    return out
