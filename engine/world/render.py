"""Deterministic procedural renderer of scenes of coloured geometric shapes.

The "shapes world" is the ground truth for the diffusion model and for every
label-quality benchmark, so it is exact and reproducible:

* all randomness comes from one PCG64 generator seeded by the caller;
* backgrounds are computed in integer arithmetic only;
* shapes are rasterized by PIL ImageDraw on rounded integer coordinates without
  antialiasing, so every pixel belongs to exactly one object or the background and
  the masks are exactly the painted pixels.

The same (seed, classes, config) therefore gives identical bytes on every machine
running the same numpy/Pillow versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..records import category_ids

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "noise", "stripes", "checker")

# Saturated object colours; the name goes into the caption.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (249, 140, 22),
    "yellow": (245, 215, 35),
    "green": (34, 177, 76),
    "cyan": (30, 200, 220),
    "blue": (40, 90, 230),
    "purple": (140, 60, 210),
    "pink": (245, 110, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# Muted, low-saturation background colours so that the objects stand out.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "dark gray": (72, 72, 72),
    "light gray": (178, 178, 178),
    "beige": (186, 170, 140),
    "brown": (112, 88, 68),
    "olive": (118, 116, 78),
    "slate": (92, 104, 122),
    "navy": (52, 60, 88),
    "teal": (76, 110, 106),
    "maroon": (104, 64, 70),
}

OBJECT_JITTER = 12  # per-channel colour jitter of objects, fixed per object
BACKGROUND_JITTER = 8
# A colour "blends in" with a pixel closer than this (Euclidean RGB distance) ...
BLEND_DISTANCE = 100
# ... and is rejected when more than this share of the local pixels are that close.
MAX_BLEND_SHARE = 0.03
LOCAL_SAMPLES = 400  # pixels sampled around an object to judge its contrast
# Two-colour backgrounds need visibly different colours or the texture disappears,
# but not so different that the texture competes with the objects.
BACKGROUND_CONTRAST = (45, 120)
# Objects may cross the border, but the centre stays this many diameters inside,
# which keeps roughly 90% of any shape in frame.
CENTER_MARGIN = 0.35
RING_HOLE = 0.55  # inner radius of a ring as a share of its outer radius
STAR_INNER = 0.45  # inner radius of a star as a share of its outer radius; fat enough to read at 64 px
EXTRA_ATTEMPTS = 8  # placements tried before an optional object is dropped
REQUIRED_ATTEMPTS = 40  # required objects keep trying, shrinking after EXTRA_ATTEMPTS
REQUIRED_SHRINK = 0.93  # per-attempt scale factor once a required object starts shrinking
MIN_SHRUNK_DIAMETER = 7.0  # px; shrinking stops here
FIXED_ONE = 1024  # fixed-point unit for integer background geometry
MAX_SIZE = 4096
MAX_OBJECTS = 64


# --------------------------------------------------------------------------- validation


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check(ok: bool, field: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{field}: expected {expected}, got {got!r}")


def _validate_classes(classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return []
    if isinstance(classes, str):  # a lone name, not a sequence of one-letter names
        classes = [classes]
    unknown = [name for name in classes if name not in CLASSES]
    _check(not unknown, "classes", f"names from {CLASSES}", unknown)
    return list(classes)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class WorldConfig:
    size: int = 64  # square images, size x size px
    min_objects: int = 1  # objects per scene, inclusive range
    max_objects: int = 4
    min_scale: float = 0.18  # object diameter as a fraction of `size`
    max_scale: float = 0.42
    backgrounds: tuple[str, ...] = BACKGROUNDS
    # Every object keeps at least this share of its in-frame area visible after
    # later objects occlude it.
    min_visible: float = 0.4

    def __post_init__(self) -> None:
        # Accept any sequence but store a tuple so the config stays hashable.
        object.__setattr__(self, "backgrounds", tuple(self.backgrounds))
        _check(_is_int(self.size) and 16 <= self.size <= MAX_SIZE,
               "size", f"an int in [16, {MAX_SIZE}]", self.size)
        _check(_is_int(self.min_objects) and self.min_objects >= 0,
               "min_objects", "an int >= 0", self.min_objects)
        _check(_is_int(self.max_objects) and self.min_objects <= self.max_objects <= MAX_OBJECTS,
               "max_objects", f"an int in [min_objects={self.min_objects}, {MAX_OBJECTS}]",
               self.max_objects)
        _check(_is_real(self.min_scale) and 0 < self.min_scale <= 1,
               "min_scale", "a number in (0, 1]", self.min_scale)
        _check(_is_real(self.max_scale) and self.min_scale <= self.max_scale <= 1,
               "max_scale", f"a number in [min_scale={self.min_scale}, 1]", self.max_scale)
        _check(len(self.backgrounds) > 0 and all(b in BACKGROUNDS for b in self.backgrounds),
               "backgrounds", f"a non-empty sequence of names from {BACKGROUNDS}", self.backgrounds)
        _check(_is_real(self.min_visible) and 0 <= self.min_visible <= 1,
               "min_visible", "a number in [0, 1]", self.min_visible)


@dataclass(eq=False)
class Instance:
    category: str  # one of CLASSES
    mask: np.ndarray  # bool HxW: exactly the visible pixels painted in this object's colour
    bbox: tuple[float, float, float, float]  # COCO [x, y, w, h] of `mask`
    area: int  # visible pixel count
    color: str  # colour name used in the caption
    rgb: tuple[int, int, int]
    full_area: int | None = None  # in-frame pixel count before occlusion; None if unknown


@dataclass(eq=False)
class Scene:
    image: np.ndarray  # uint8 HxWx3
    instances: list[Instance]  # in paint order
    semantic: np.ndarray  # uint8 HxW: 0 background, else 1 + CLASSES.index of the topmost object
    caption: str
    background: str  # one of BACKGROUNDS


def render_scene(seed: int, classes: Sequence[str] | None = None,
                 config: WorldConfig = WorldConfig(), extra_classes: Sequence[str] | None = None) -> Scene:
    """Render one scene; `classes` lists categories that must each appear (repeats allowed).

    Extra objects are drawn from `extra_classes` (default: all classes), so a job that
    asks for a subset of the world never gets unlabelled objects of other classes.
    """
    required = _validate_classes(classes)
    pool = _validate_classes(extra_classes) if extra_classes else list(CLASSES)
    rng = np.random.Generator(np.random.PCG64(seed))
    categories, is_required = _choose_categories(rng, required, pool, config)
    background = config.backgrounds[rng.integers(len(config.backgrounds))]
    image, background_phrase = _BACKGROUND_RENDERERS[background](rng, config.size)
    canvas = _Canvas(image, capacity=len(categories))
    for category, must_place in zip(categories, is_required):
        _place_object(rng, canvas, category, must_place, config)
    instances = canvas.instances()
    return Scene(
        image=canvas.image,
        instances=instances,
        semantic=canvas.semantic(),
        caption=_caption(instances, background_phrase),
        background=background,
    )


# --------------------------------------------------------------------------- objects


def _choose_categories(rng: np.random.Generator, required: list[str], pool: list[str],
                       config: WorldConfig) -> tuple[list[str], list[bool]]:
    """Required plus random extra categories from `pool`, shuffled into a random paint order."""
    drawn = int(rng.integers(config.min_objects, config.max_objects + 1))
    extras = [pool[i] for i in rng.integers(len(pool), size=max(0, drawn - len(required)))]
    categories = required + extras
    flags = [True] * len(required) + [False] * len(extras)
    order = rng.permutation(len(categories))
    return [categories[i] for i in order], [flags[i] for i in order]


def _regular_outline(count: int, radius: float, start_degrees: float) -> tuple[tuple[float, float], ...]:
    step = 2 * math.pi / count
    start = math.radians(start_degrees)
    return tuple((radius * math.cos(start + k * step), radius * math.sin(start + k * step))
                 for k in range(count))


def _star_outline(points: int, radius: float) -> tuple[tuple[float, float], ...]:
    outer = _regular_outline(points, radius, -90)
    inner = _regular_outline(points, radius * STAR_INNER, -90 + 180 / points)
    return tuple(vertex for pair in zip(outer, inner) for vertex in pair)


def _cross_outline(half_length: float, half_width: float) -> tuple[tuple[float, float], ...]:
    h, a = half_length, half_width
    return ((a, -h), (a, -a), (h, -a), (h, a), (a, a), (a, h),
            (-a, h), (-a, a), (-h, a), (-h, -a), (-a, -a), (-a, -h))


# Unrotated outlines in units of the object diameter (y points down). Sizes are tuned
# so that every class covers a similar share of its diameter and looks equally large.
_OUTLINES = {
    "square": _regular_outline(4, 0.8 / math.sqrt(2), 45),  # side 0.8
    "triangle": _regular_outline(3, 0.6, -90),  # equilateral, apex up
    "star": _star_outline(5, 0.62),
    "cross": _cross_outline(0.5, 1 / 6),  # arm width 1/3 of the span
}
# Rotational symmetry in degrees: larger angles would only repeat a shape.
_SYMMETRY_DEGREES = {"circle": 0, "ring": 0, "square": 90, "triangle": 120, "star": 72, "cross": 90}
# Farthest point from the centre, in diameters; bounds the drawing window.
_EXTENT = {"circle": 0.5, "ring": 0.5,
           **{name: max(math.hypot(x, y) for x, y in outline) for name, outline in _OUTLINES.items()}}


@dataclass
class _Shape:
    category: str
    center_x: float
    center_y: float
    diameter: float
    angle: float  # radians


@dataclass
class _Candidate:
    window: tuple[slice, slice]  # region of the image that holds the whole shape
    mask: np.ndarray  # bool, shape of the window
    lost: np.ndarray  # pixels each already placed object would lose under this one
    worst_share: float  # smallest visible share left to any placed object


def _sample_shape(rng: np.random.Generator, category: str, config: WorldConfig, shrink: float) -> _Shape:
    diameter = rng.uniform(config.min_scale, config.max_scale) * config.size
    # Shrinking below a few pixels would turn every class into the same blob.
    diameter = max(diameter * shrink, min(diameter, MIN_SHRUNK_DIAMETER))
    margin = CENTER_MARGIN * diameter
    center_x, center_y = rng.uniform(margin, config.size - margin, size=2)
    angle = math.radians(rng.uniform(0, _SYMMETRY_DEGREES[category]))
    return _Shape(category, float(center_x), float(center_y), float(diameter), angle)


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def _rasterize(shape: _Shape, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Draw the shape into a window around it; return the window and its bool mask."""
    reach = _EXTENT[shape.category] * shape.diameter
    x0 = max(0, math.floor(shape.center_x - reach) - 1)
    y0 = max(0, math.floor(shape.center_y - reach) - 1)
    x1 = min(size, math.floor(shape.center_x + reach) + 2)
    y1 = min(size, math.floor(shape.center_y + reach) + 2)
    layer = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(layer)
    if shape.category in ("circle", "ring"):
        _draw_disc(draw, shape, x0, y0)
    else:
        draw.polygon(_polygon_vertices(shape, x0, y0), fill=1)
    return (slice(y0, y1), slice(x0, x1)), np.asarray(layer).view(bool)


def _draw_disc(draw: ImageDraw.ImageDraw, shape: _Shape, x0: int, y0: int) -> None:
    # Round the box once and derive the hole from it so a ring is exactly concentric
    # with the same thickness on every side.
    span = max(1, _round(shape.diameter))
    left = _round(shape.center_x - span / 2) - x0
    top = _round(shape.center_y - span / 2) - y0
    draw.ellipse((left, top, left + span - 1, top + span - 1), fill=1)
    if shape.category == "ring":
        thickness = max(1, _round(span / 2 * (1 - RING_HOLE)))
        if span - 1 - 2 * thickness >= 0:
            draw.ellipse((left + thickness, top + thickness,
                          left + span - 1 - thickness, top + span - 1 - thickness), fill=0)


def _polygon_vertices(shape: _Shape, x0: int, y0: int) -> list[tuple[int, int]]:
    cos_a, sin_a = math.cos(shape.angle), math.sin(shape.angle)
    d = shape.diameter
    return [(_round(shape.center_x + d * (x * cos_a - y * sin_a)) - x0,
             _round(shape.center_y + d * (x * sin_a + y * cos_a)) - y0)
            for x, y in _OUTLINES[shape.category]]


class _Canvas:
    """The image being painted plus, per pixel, the index of the object on top (-1: none)."""

    def __init__(self, background: np.ndarray, capacity: int):
        self.image = background
        self.owner = np.full(background.shape[:2], -1, np.int16)
        self.categories: list[str] = []
        self.colors: list[tuple[str, tuple[int, int, int]]] = []
        self.full_area = np.zeros(capacity, np.int64)
        self.visible = np.zeros(capacity, np.int64)

    @property
    def count(self) -> int:
        return len(self.categories)

    def candidate(self, shape: _Shape) -> _Candidate | None:
        window, mask = _rasterize(shape, self.image.shape[0])
        if not mask.any():
            return None
        under = self.owner[window][mask]
        lost = np.bincount(under[under >= 0], minlength=self.count)
        full = self.full_area[:self.count]
        shares = (self.visible[:self.count] - lost) / full
        worst = float(shares.min()) if self.count else 1.0
        return _Candidate(window, mask, lost, worst)

    def paint(self, candidate: _Candidate, category: str, color: str, rgb: tuple[int, int, int]) -> None:
        index = self.count
        self.visible[:index] -= candidate.lost
        area = int(candidate.mask.sum())
        self.full_area[index] = area
        self.visible[index] = area
        self.image[candidate.window][candidate.mask] = rgb
        self.owner[candidate.window][candidate.mask] = index
        self.categories.append(category)
        self.colors.append((color, rgb))

    def local_pixels(self, window: tuple[slice, slice]) -> np.ndarray:
        """Pixels around a shape as float (N, 3), subsampled to a few hundred: plenty for a share."""
        patch = self.image[window]
        stride = max(1, math.ceil(math.sqrt(patch.shape[0] * patch.shape[1] / LOCAL_SAMPLES)))
        return patch[::stride, ::stride].reshape(-1, 3).astype(np.float64)

    def instances(self) -> list[Instance]:
        result = []
        for index, category in enumerate(self.categories):
            mask = self.owner == index
            area = int(mask.sum())
            if area == 0:  # possible only when min_visible is 0 or a required object was forced
                continue
            color, rgb = self.colors[index]
            result.append(Instance(category, mask, _bbox(mask), area, color, rgb,
                                   full_area=int(self.full_area[index])))
        return result

    def semantic(self) -> np.ndarray:
        ids = category_ids(CLASSES)
        class_ids = np.array([0] + [ids[c] for c in self.categories], np.uint8)
        return class_ids[self.owner + 1]


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]),
            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def _place_object(rng: np.random.Generator, canvas: _Canvas, category: str,
                  required: bool, config: WorldConfig) -> None:
    """Paint one object where it leaves every earlier object >= min_visible visible.

    Optional objects are dropped after a few failed tries. Required ones keep trying
    at shrinking scale and, if even that fails, take the least damaging try so that
    the requested class is never missing.
    """
    best: _Candidate | None = None
    for attempt in range(REQUIRED_ATTEMPTS if required else EXTRA_ATTEMPTS):
        shrink = REQUIRED_SHRINK ** max(0, attempt - EXTRA_ATTEMPTS + 1)
        candidate = canvas.candidate(_sample_shape(rng, category, config, shrink))
        if candidate is None:
            continue
        if candidate.worst_share >= config.min_visible:
            best = candidate
            break
        if best is None or candidate.worst_share > best.worst_share:
            best = candidate
    if best is None or (not required and best.worst_share < config.min_visible):
        return
    color, rgb = _pick_color(rng, canvas.local_pixels(best.window))
    canvas.paint(best, category, color, rgb)


_OBJECT_NAMES = tuple(OBJECT_COLORS)
_OBJECT_RGB = np.array([OBJECT_COLORS[name] for name in _OBJECT_NAMES], np.float64)
_OBJECT_NORM2 = (_OBJECT_RGB * _OBJECT_RGB).sum(axis=1)


def _pick_color(rng: np.random.Generator, local_pixels: np.ndarray) -> tuple[str, tuple[int, int, int]]:
    """A random palette colour that stands out against the pixels around the object."""
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as a BLAS product, laid out colours x pixels
    # for fast row sums; every term is an integer far below 2**53, so float64 is exact.
    pixel_norm2 = np.einsum("ij,ij->i", local_pixels, local_pixels)
    distance2 = pixel_norm2[None, :] - 2 * (_OBJECT_RGB @ local_pixels.T) + _OBJECT_NORM2[:, None]
    blend_counts = (distance2 < BLEND_DISTANCE ** 2).sum(axis=1)
    allowed = np.flatnonzero(blend_counts <= MAX_BLEND_SHARE * len(local_pixels))
    if len(allowed):
        index = int(allowed[rng.integers(len(allowed))])
    else:
        index = int(np.argmin(blend_counts))
    jitter = rng.integers(-OBJECT_JITTER, OBJECT_JITTER + 1, size=3).tolist()
    rgb = tuple(min(255, max(0, int(base) + shift)) for base, shift in zip(_OBJECT_RGB[index], jitter))
    return _OBJECT_NAMES[index], rgb


# --------------------------------------------------------------------------- backgrounds

_BACKGROUND_NAMES = tuple(BACKGROUND_COLORS)
_BACKGROUND_RGB = np.array([BACKGROUND_COLORS[name] for name in _BACKGROUND_NAMES], np.int64)
# Ordered pairs of background colours that make a visible but calm texture.
_BACKGROUND_PAIRS = tuple(
    (i, j) for i in range(len(_BACKGROUND_NAMES)) for j in range(len(_BACKGROUND_NAMES))
    if BACKGROUND_CONTRAST[0] <= np.linalg.norm(_BACKGROUND_RGB[i] - _BACKGROUND_RGB[j]) <= BACKGROUND_CONTRAST[1]
)


def _background_color(rng: np.random.Generator, index: int) -> np.ndarray:
    jitter = rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, size=3)
    return np.clip(_BACKGROUND_RGB[index] + jitter, 0, 255)


def _background_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = _BACKGROUND_PAIRS[rng.integers(len(_BACKGROUND_PAIRS))]
    return _background_color(rng, first), _background_color(rng, second)


def _blend(first: np.ndarray, second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours; `weight` is an int array in [0, 256] (256 = second)."""
    weight = weight[..., None]
    return ((first * (256 - weight) + second * weight) >> 8).astype(np.uint8)


def _two_tone(first: np.ndarray, second: np.ndarray, use_second: np.ndarray) -> np.ndarray:
    return np.where(use_second[..., None], second, first).astype(np.uint8)


def _projection(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixel coordinates projected on a random direction, in FIXED_ONE units.

    Rounding the direction to integers keeps all later arithmetic exact, so
    platform-dependent float rounding can never change a pixel.
    """
    angle = rng.uniform(0, 2 * math.pi)
    dx, dy = _round(math.cos(angle) * FIXED_ONE), _round(math.sin(angle) * FIXED_ONE)
    coords = np.arange(size, dtype=np.int64)
    return coords[None, :] * dx + coords[:, None] * dy


def _stretch(values: np.ndarray) -> np.ndarray:
    """Rescale an int array to the full [0, 256] weight range."""
    low, high = int(values.min()), int(values.max())
    return (values - low) * 256 // max(1, high - low)


def _solid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    index = int(rng.integers(len(_BACKGROUND_NAMES)))
    color = _background_color(rng, index)
    image = np.broadcast_to(color.astype(np.uint8), (size, size, 3)).copy()
    return image, f"a plain {_BACKGROUND_NAMES[index]} background"


def _gradient(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    first, second = _background_pair(rng)
    return _blend(first, second, _stretch(_projection(rng, size))), "a gradient background"


def _noise_octave(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Random grid values upsampled with integer smoothstep interpolation, in [0, 256]."""
    grid = rng.integers(0, 257, size=(cells + 1, cells + 1))
    position = np.arange(size, dtype=np.int64) * (cells * 256) // size  # 8-bit fixed point
    cell, fraction = position >> 8, position & 255
    weight = fraction * fraction * (768 - 2 * fraction) >> 16  # 3t^2 - 2t^3, t = fraction / 256
    rows = (grid[:, cell] * (256 - weight) + grid[:, cell + 1] * weight) >> 8
    return (rows[cell, :] * (256 - weight)[:, None] + rows[cell + 1, :] * weight[:, None]) >> 8


def _noise(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    first, second = _background_pair(rng)
    cells = int(rng.integers(3, 6))
    # A coarse octave for blobs plus a finer, weaker one for texture.
    field = 2 * _noise_octave(rng, size, cells) + _noise_octave(rng, size, 2 * cells)
    return _blend(first, second, _stretch(field)), "a mottled background"


def _stripes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    first, second = _background_pair(rng)
    width = int(rng.integers(max(2, size // 16), max(3, size // 6) + 1)) * FIXED_ONE
    offset = int(rng.integers(2 * width))
    band = (_projection(rng, size) + offset) // width % 2 == 1
    return _two_tone(first, second, band), "a striped background"


def _checker(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    first, second = _background_pair(rng)
    cell = int(rng.integers(max(2, size // 10), max(3, size // 4) + 1))
    offset_x, offset_y = rng.integers(cell, size=2)
    coords = np.arange(size, dtype=np.int64)
    band = ((coords[None, :] + offset_x) // cell + (coords[:, None] + offset_y) // cell) % 2 == 1
    return _two_tone(first, second, band), "a checkered background"


_BACKGROUND_RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, str]]] = {
    "solid": _solid,
    "gradient": _gradient,
    "noise": _noise,
    "stripes": _stripes,
    "checker": _checker,
}


# --------------------------------------------------------------------------- captions

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten"}


def _noun_phrase(count: int, color: str, category: str) -> str:
    if count == 1:
        article = "an" if color[0] in "aeiou" else "a"
        return f"{article} {color} {category}"
    plural = category + ("es" if category.endswith("s") else "s")
    return f"{_COUNT_WORDS.get(count, str(count))} {color} {plural}"


def _caption(instances: list[Instance], background_phrase: str) -> str:
    """e.g. "a red circle, two blue stars and a green square on a striped background"."""
    counts: dict[tuple[str, str], int] = {}
    for instance in instances:  # dicts keep first-seen order, i.e. paint order
        key = (instance.color, instance.category)
        counts[key] = counts.get(key, 0) + 1
    phrases = [_noun_phrase(count, color, category) for (color, category), count in counts.items()]
    if not phrases:
        return background_phrase
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objects} on {background_phrase}"


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (the embedded model's tokenizer is built from it)."""
    words = {"a", "an", "and", "on", "plain", "gradient", "mottled", "striped", "checkered", "background"}
    words.update(OBJECT_COLORS)
    words.update(w for name in BACKGROUND_COLORS for w in name.split())
    words.update(_COUNT_WORDS.values())
    words.update(CLASSES)
    words.update(c + ("es" if c.endswith("s") else "s") for c in CLASSES)
    return sorted(words)
