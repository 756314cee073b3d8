"""Hard renders of the shapes world: faint, small, blurred and noisy versions of its images.

An erased model that only fades or shrinks the concept has not erased it, so the judges
must name a shape at any contrast, size, blur or position. These renders span:

- contrast: the shape's colour moved towards the background, down to `contrast[0]` of the
  world's colour distance (a quarter by default);
- size: the shape drawn by the world renderer on a smaller canvas and pasted anywhere on
  the image, down to about `min_diameter` pixels across;
- blur and noise like (and beyond) the diffusion model's samples.

Images come from `dm2.world.render.render`, so shapes, colours and textures are the world's own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dm2.core.config import require
from dm2.world.params import HardRanges
from dm2.world.render import BACKGROUNDS, EMPTY, IMAGE_SIZE, Sample, WorldSpec, render

# The world renderer draws a shape about 0.58 canvas sides across (radius 0.24-0.34 of
# the side, and the drawers extend it by up to 1.25x), so a canvas of 10 px gives ~6 px.
DIAMETER_PER_CANVAS = 0.58
# Hard renders never share a seed with the world's train / held-out images, nor with each other.
HARD_TRAIN_SEED_OFFSET = 2_000_029
HARD_HELDOUT_SEED_OFFSET = 3_000_017


@dataclass(frozen=True)
class HardCondition:
    """How one hard render was made (for accuracy by difficulty)."""

    contrast: float
    diameter: float  # approximate shape size in pixels
    blur: float
    noise: float


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur of N x C x H x W images, one sigma per image (0: unchanged)."""
    n, c, h, w = images.shape
    radius = 3
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(taps[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(F.conv2d(y, k[:, None, None, :], groups=n * c), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _one(spec: WorldSpec, shape: str, rng: random.Random, r: HardRanges) -> tuple[np.ndarray, Sample, float, float]:
    """One image (float32 HxWx3 in [0, 1], before blur and noise), its labels, contrast and diameter."""
    colour = rng.choice(spec.colours)
    background = rng.choice(spec.backgrounds)
    texture = "plain" if shape == EMPTY else rng.choice(spec.textures)
    canvas = rng.randint(*r.canvas)
    patch = render(shape, colour, background, texture, rng, canvas, spec.texture_period).astype(np.float32)
    bg = np.array(BACKGROUNDS[background], np.float32)
    image = np.broadcast_to(bg, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    top, left = rng.randint(0, IMAGE_SIZE - canvas), rng.randint(0, IMAGE_SIZE - canvas)
    image[top : top + canvas, left : left + canvas] = patch
    contrast = rng.uniform(*r.contrast)
    image = bg + contrast * (image - bg)  # the shape's colour moved towards the background
    labels = Sample(shape, EMPTY if shape == EMPTY else colour, background, EMPTY if shape == EMPTY else texture, "")
    return image / 255.0, labels, contrast, DIAMETER_PER_CANVAS * canvas


def render_hard(spec: WorldSpec, n: int, seed: int, ranges: HardRanges = HardRanges()) -> tuple[torch.Tensor, list[Sample], list[HardCondition]]:
    """`n` hard renders (N x 3 x 32 x 32 in [0, 1]), their labels and how each was made,
    fixed by `seed`. Shapes are drawn evenly from the world's; `ranges.empty_fraction`
    of the images show no shape."""
    require(n > 0, "hard renders", f"need at least one image, got {n}")
    rng = random.Random(seed)
    images, samples, made = [], [], []
    for _ in range(n):
        shape = EMPTY if rng.random() < ranges.empty_fraction else rng.choice(spec.shapes)
        image, sample, contrast, diameter = _one(spec, shape, rng, ranges)
        images.append(image)
        samples.append(sample)
        made.append((contrast, 0.0 if shape == EMPTY else diameter, rng.uniform(*ranges.blur), rng.uniform(*ranges.noise)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(seed)
    blur = torch.tensor([m[2] for m in made], dtype=torch.float32)
    noise = torch.tensor([m[3] for m in made], dtype=torch.float32)
    x = torch.where((blur > 0).view(-1, 1, 1, 1), gaussian_blur(x, blur), x)
    x = (x + torch.randn(x.shape, generator=g) * noise.view(-1, 1, 1, 1)).clamp(0, 1)
    return x, samples, [HardCondition(*m) for m in made]
