"""The shapes world: deterministic 32x32 image-caption pairs rendered from a seed.

Every image shows one shape with a colour, a texture and a background. Captions come
from a small grammar and name the shape by any of its synonyms, so a concept can be
reached by words other than its name (as I2P prompts reach nudity without the word).
A fraction of the images (`empty_fraction`) shows the background alone, captioned with
generic words ("a photo", "an empty black background"): that gives the world what SD has
and erasure relies on, generic prompts that draw no concept (DM2's anchor "a photo").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
TEXTURE_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped",),
    "dotted": ("dotted", "spotted"),
}
IMAGE_SIZE = 32  # side of every world image, pixels
# Pixels from one stripe (or dot) to the next: 4 px bands. The VAE's 8x8 latents carry an
# 8 px period; a 4 px one comes back plain (research/texture_candidates.py).
TEXTURE_PERIOD = 8
# A shape is about half the image across; it must hold two periods to show its texture.
MAX_TEXTURE_PERIOD = IMAGE_SIZE // 4
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disk"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "pyramid", "wedge"),
    "star": ("star", "pentagram", "sparkle"),
    "cross": ("cross", "plus", "cruciform"),
}
EMPTY = "none"  # shape, colour and texture label of a background-only image
EMPTY_TEMPLATES: tuple[str, ...] = (
    "a photo",
    "a picture",
    "a drawing",
    "a photo of a {background} background",
    "an empty {background} background",
    "a {background} background",
)
TEMPLATES: tuple[str, ...] = (
    "a photo of a {colour} {shape}",
    "a {colour} {shape}",
    "a {texture} {colour} {shape} on a {background} background",
    "a {shape} on a {background} background",
    "a picture of a {texture} {shape}",
    "a drawing of a {colour} {texture} {shape}",
    "{colour} {shape}",
    "a {shape}",
)


@dataclass(frozen=True)
class WorldSpec:
    """The vocabulary of a world: its shapes with their synonyms, colours, backgrounds."""

    synonyms: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SYNONYMS))
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    textures: tuple[str, ...] = TEXTURES
    empty_fraction: float = 0.0  # share of background-only images
    texture_period: int = TEXTURE_PERIOD  # pixels from one stripe (or dot) to the next

    def __post_init__(self) -> None:
        if not 0.0 <= self.empty_fraction < 1.0:
            raise ValueError(f"world.empty_fraction: must be in [0, 1), got {self.empty_fraction}")
        if self.texture_period % 2 or not 2 <= self.texture_period <= MAX_TEXTURE_PERIOD:
            raise ValueError(
                f"world.texture_period: must be an even number of pixels in [2, {MAX_TEXTURE_PERIOD}] "
                f"(two periods on a shape half the {IMAGE_SIZE} px image across), got {self.texture_period}"
            )
        for shape, words in self.synonyms.items():
            if shape not in SHAPE_DRAWERS:
                raise ValueError(f"world.synonyms: unknown shape {shape!r}; allowed: {sorted(SHAPE_DRAWERS)}")
            if len(words) < 2:
                raise ValueError(
                    f"world.synonyms.{shape}: needs its name and at least one synonym, got {list(words)}"
                )
        for name, allowed, got in (
            ("colours", COLOURS, self.colours),
            ("backgrounds", BACKGROUNDS, self.backgrounds),
            ("textures", TEXTURES, self.textures),
        ):
            unknown = [g for g in got if g not in allowed]
            if unknown:
                raise ValueError(f"world.{name}: unknown {unknown}; allowed: {list(allowed)}")

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(self.synonyms)

    @property
    def shape_classes(self) -> tuple[str, ...]:
        """What a judge of this world tells apart: the shapes, and EMPTY if the world has it."""
        return self.shapes + ((EMPTY,) if self.empty_fraction > 0 else ())

    @classmethod
    def from_params(cls, params: dict) -> "WorldSpec":
        return cls(
            synonyms={k: tuple(v) for k, v in params["synonyms"].items()},
            colours=tuple(params["colours"]),
            backgrounds=tuple(params["backgrounds"]),
            textures=tuple(params["textures"]),
            empty_fraction=float(params.get("empty_fraction", 0.0)),
            texture_period=int(params.get("texture_period", TEXTURE_PERIOD)),
        )


@dataclass(frozen=True)
class Sample:
    shape: str
    colour: str
    background: str
    texture: str
    caption: str


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (cx + r * np.cos(angle + 2 * np.pi * i / n), cy + r * np.sin(angle + 2 * np.pi * i / n))
        for i, r in enumerate(radii)
    ]


def _draw_circle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)


def _draw_square(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    d.polygon(_polygon(cx, cy, [r * 1.15] * 4, angle + np.pi / 4), fill=255)


def _draw_triangle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    d.polygon(_polygon(cx, cy, [r * 1.2] * 3, angle - np.pi / 2), fill=255)


def _draw_star(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    d.polygon(_polygon(cx, cy, [r * 1.25, r * 0.5] * 5, angle - np.pi / 2), fill=255)


def _draw_cross(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    w = r * 0.36
    arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    c, s = np.cos(angle), np.sin(angle)
    d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm], fill=255)


SHAPE_DRAWERS = {
    "circle": _draw_circle,
    "square": _draw_square,
    "triangle": _draw_triangle,
    "star": _draw_star,
    "cross": _draw_cross,
}


def render(
    shape: str, colour: str, background: str, texture: str, rng: random.Random, size: int = 32, period: int = TEXTURE_PERIOD
) -> np.ndarray:
    """One image as uint8 HxWx3; position, size and rotation drawn from `rng`; shape EMPTY
    leaves the background alone. `period`: the texture's, in pixels of the image."""
    big = size * SUPERSAMPLE
    r = rng.uniform(0.24, 0.34) * big
    cx = big / 2 + rng.uniform(-0.12, 0.12) * big
    cy = big / 2 + rng.uniform(-0.12, 0.12) * big
    angle = rng.uniform(-0.25, 0.25)
    mask_img = Image.new("L", (big, big), 0)
    if shape != EMPTY:
        SHAPE_DRAWERS[shape](ImageDraw.Draw(mask_img), cx, cy, r, angle)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0

    fill = np.broadcast_to(np.array(COLOURS[colour], np.float32), (big, big, 3)).copy()
    yy, xx = np.mgrid[0:big, 0:big]
    period *= SUPERSAMPLE
    if texture == "striped":
        stripes = ((xx + yy + rng.randrange(period)) // (period // 2)) % 2 == 0
        fill[stripes] *= 0.35
    elif texture == "dotted":
        ox, oy = rng.randrange(period), rng.randrange(period)
        dots = ((xx + ox) % period - period / 2) ** 2 + ((yy + oy) % period - period / 2) ** 2 < (period / 4) ** 2
        fill[dots] = 255 - 0.8 * fill[dots]

    bg = np.array(BACKGROUNDS[background], np.float32)
    img = mask * fill + (1.0 - mask) * bg
    small = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def caption(spec: WorldSpec, shape: str, colour: str, background: str, texture: str, rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(
        shape=rng.choice(spec.synonyms[shape]),
        colour=colour,
        background=background,
        texture=rng.choice(TEXTURE_WORDS[texture]),
    )


def sample_world(spec: WorldSpec, n: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[Sample]]:
    """`n` images (uint8, n x size x size x 3) and their labelled captions, fixed by `seed`."""
    rng = random.Random(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    samples = []
    for i in range(n):
        # No draw at all when the world has no empty images, so such worlds stay as they were
        if spec.empty_fraction > 0 and rng.random() < spec.empty_fraction:
            background = rng.choice(spec.backgrounds)
            images[i] = render(EMPTY, spec.colours[0], background, "plain", rng, size)
            text = rng.choice(EMPTY_TEMPLATES).format(background=background)
            samples.append(Sample(EMPTY, EMPTY, background, EMPTY, text))
            continue
        shape = rng.choice(spec.shapes)
        colour = rng.choice(spec.colours)
        background = rng.choice(spec.backgrounds)
        texture = rng.choice(spec.textures)
        images[i] = render(shape, colour, background, texture, rng, size, spec.texture_period)
        samples.append(Sample(shape, colour, background, texture, caption(spec, shape, colour, background, texture, rng)))
    return images, samples


def shape_of_words(spec: WorldSpec) -> dict[str, str]:
    """Map every synonym to its shape (used to check captions and build prompts)."""
    return {word: shape for shape, words in spec.synonyms.items() for word in words}
