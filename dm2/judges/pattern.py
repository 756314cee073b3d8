"""A non-learned texture judge of the shapes world: the colour pattern inside a shape.

The world judge's texture head (dm2/judges/world.py) is a CNN trained on the world's
renders; this judge learns nothing and shares no code with it. It segments the shape
from the background's colour (the median of the image border; noisy images are median-
filtered first, and every threshold stays above the background's noise), keeps the pixels
at least 2 px inside its edge (so a blurred edge is not read as pattern), and reads their
colours:

- striped: the world draws stripes along x + y = const, so the colour changes across
  that direction (step (+1, +1)) much more than along it (step (+1, -1)), and at least
  PATTERN_SHARE of them stray from the shape's median colour;
- dotted: the colour changes alike in both directions, and at least PATTERN_SHARE of them
  stray further (DOT_PATTERN: only contrast tells dots from mottle);
- plain: neither.

Thresholds were set on clean renders of the world at 8 and 4 px periods and on VAE round
trips of them, DOT_PATTERN on 180 of the base model's samples looked at by eye (plain
shapes with a mottle a 30 / 255 threshold called dotted). world_check reports the judge
per texture on clean and hard renders.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from dm2.world.render import EMPTY, TEXTURES

FLOOR = 30.0 / 255  # colour distance (RGB in [0, 1]) from the background that always counts as shape
# Colour distance from the shape's median that always counts as pattern: stripes, which
# their direction tells from any mottle, count from STRIPE_PATTERN; dots, which only their
# contrast tells from the mottle a diffusion model leaves on plain shapes (up to ~45 / 255),
# from DOT_PATTERN. The world draws both at 150 / 255 or more.
STRIPE_PATTERN = 30.0 / 255
DOT_PATTERN = 50.0 / 255
NOISE_STDS = 3.0  # ... unless the background's noise reaches it: then this many noise stds
RELATIVE = 0.3  # faint shapes: shape and pattern thresholds fall to this share of the shape's contrast
DENOISE_ABOVE = 0.02  # background noise std above which a 3 x 3 median filter goes first (a VAE's output stays below)
EDGE = 2  # pixels of the shape's rim left out
MIN_INTERIOR = 6  # pixels; a smaller interior cannot show a pattern and is judged plain
MIN_PEAK = 0.05  # a shape stands out from the background by at least this colour distance
# A shape with at least this share of pattern pixels is textured: a VAE's round trip leaves
# up to ~15 % on plain crosses and stars, clean 8 px dots cover ~20 %, and textured
# round trips keep more than 25 % (research/texture_candidates.py's reconstructions).
PATTERN_SHARE = 0.1
ANISOTROPY = 1.6  # stripes: change across their direction over change along it
# Soft scores (for the Score metric) from the decisions above; the argmax agrees with
# them except within a sliver of the thresholds. Widths: about a tenth of each quantity's
# typical margin on clean renders.
SHARE_WIDTH = 0.01
LOG_RATIO_WIDTH = 0.1


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _noise_std(image: np.ndarray) -> float:
    """Robust std of the border's colours, the median over channels."""
    border = _border(image)
    return float(np.median(1.4826 * np.median(np.abs(border - np.median(border, axis=0)), axis=0)))


def interior(shape: np.ndarray) -> np.ndarray:
    """The shape's pixels at least EDGE px inside its outline; holes (dots the colour of
    the background) count as shape."""
    return ndimage.binary_erosion(ndimage.binary_fill_holes(shape), iterations=EDGE, border_value=1)


def pattern_features(image: np.ndarray) -> tuple[float, float, float] | None:
    """(share of pattern pixels at STRIPE_PATTERN, the same at DOT_PATTERN, log of across /
    along change) inside the shape of an H x W x 3 image in [0, 1]; None when nothing stands
    out from the background, zeros when the shape is too small to hold a pattern."""
    if _noise_std(image) > DENOISE_ABOVE:
        image = ndimage.median_filter(image, size=(3, 3, 1), mode="nearest")  # keeps 4 px bands, drops pixel noise
    floor = NOISE_STDS * np.sqrt(3) * _noise_std(image)
    dist = np.linalg.norm(image - np.median(_border(image), axis=0), axis=-1)
    if dist.max() < max(floor, MIN_PEAK):
        return None
    inner = interior(dist > max(floor, min(FLOOR, RELATIVE * dist.max())))
    if inner.sum() < MIN_INTERIOR:
        return 0.0, 0.0, 0.0
    contrast = RELATIVE * np.median(dist[inner])  # faint shapes: faint patterns
    spread = np.linalg.norm(image[inner] - np.median(image[inner], axis=0), axis=-1)
    shares = [float(np.mean(spread > max(floor, min(level, contrast)))) for level in (STRIPE_PATTERN, DOT_PATTERN)]
    across_pairs = inner[1:, 1:] & inner[:-1, :-1]
    along_pairs = inner[1:, :-1] & inner[:-1, 1:]
    across = np.linalg.norm(image[1:, 1:] - image[:-1, :-1], axis=-1)[across_pairs]
    along = np.linalg.norm(image[1:, :-1] - image[:-1, 1:], axis=-1)[along_pairs]
    across_mean = across.mean() if across.size else 0.0
    along_mean = along.mean() if along.size else 0.0
    return shares[0], shares[1], float(np.log((across_mean + 1 / 255) / (along_mean + 1 / 255)))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0))))


class PatternJudge:
    """Judge protocol, head "texture": plain / striped / dotted (and EMPTY, when a class,
    for an image with no shape interior)."""

    def __init__(self, with_empty: bool = True) -> None:
        self.classes = {"texture": TEXTURES + ((EMPTY,) if with_empty else ())}

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image, probabilities over the classes (N x n_classes, on CPU)."""
        pixels = images.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
        out = np.zeros((len(pixels), len(self.classes["texture"])))
        for row, image in zip(out, pixels):
            features = pattern_features(image)
            if features is None:
                row[-1 if EMPTY in self.classes["texture"] else 0] = 1.0
                continue
            stripe_share, dot_share, log_ratio = features
            banded = _sigmoid((log_ratio - np.log(ANISOTROPY)) / LOG_RATIO_WIDTH)
            striped = _sigmoid((stripe_share - PATTERN_SHARE) / SHARE_WIDTH) * banded
            dotted = _sigmoid((dot_share - PATTERN_SHARE) / SHARE_WIDTH) * (1.0 - banded)
            row[:3] = (1.0 - striped - dotted, striped, dotted)
        return {"texture": torch.from_numpy(out).float()}
