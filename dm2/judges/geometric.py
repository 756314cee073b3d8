"""A second, non-learned judge of the shapes world: shape descriptors of a segmented
foreground, and the colour pattern inside it for textures (dm2/judges/pattern.py).

The CNN judge (dm2/judges/registry.py) is trained on the world's renders, so an erasure that fools it
may fool it alone. This judge is of another family and shares nothing with it: it segments
the foreground against the background colour, measures its contour by rotation-invariant
descriptors (how it fills its minimum enclosing circle, rectangle and triangle and its convex
hull; which of 3-, 4- and 5-fold symmetry its outline shows), and names the shape whose ideal
outline, drawn large and clean by the world's own drawers, measures closest. Nothing is
learned from data.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from dm2.judges.pattern import PatternJudge
from dm2.world.render import EMPTY, SHAPE_DRAWERS

DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", EMPTY)
RING = 2  # border width (pixels) that shows the background
SMOOTH_SIGMA = 0.5  # pixels; takes the edge off noise, light enough to keep star tips (0.8 lost most blurred stars)
UPSAMPLE = 4  # the smoothed map is thresholded at 4x so small shapes get usable contours
MIN_PEAK = 0.06  # distance (RGB in [0, 1]) below which nothing stands out, even without noise
NOISE_PEAK = 5.0  # ... and the peak must clear the border's median + this many robust stds
NOISE_LEVEL = 2.5  # the foreground's level stays this many robust stds above the noise
# Foreground: above this fraction of the peak; a little under the half-way level of an edge,
# so that thin star tips and dark stripes, which smoothing lowers, stay in.
THRESHOLD = 0.4
MIN_AREA = 6.0  # original pixels; a smaller foreground is noise, not a shape
# A striped shape's dark bands (0.35 x its colour) lie 0.29-0.37 of the peak from a black
# background: at THRESHOLD the shape falls apart into bands and its rim gets notches. For
# images the texture head calls striped the foreground starts lower: clean 8 px striped
# renders on black 92 -> 100 % right, hard renders 80.2 -> 81.7 %.
STRIPED_THRESHOLD = 0.2
# Descriptor distance per unit of logit; at 0.1 the mean top probability on hard renders
# about matches the accuracy there (~0.85), so scores are neither over- nor under-confident.
TEMPERATURE = 0.1
HARMONICS = (3, 4, 5)  # triangle, square / cross, star
RIPPLE = 0.02  # relative harmonic amplitude that is still "round"
PROTOTYPE_SIZE = 256  # side of the canvas the ideal shapes are drawn on


def descriptors(contour: np.ndarray) -> np.ndarray:
    """Rotation- and scale-invariant descriptors of a closed contour, all in [0, 1], equally
    weighted (re-weighting them moved accuracy on hard renders by 1 point at most): how it
    fills its minimum enclosing circle, rectangle and triangle and its convex hull, then
    its `symmetry`."""
    contour = contour.astype(np.float32)
    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)  # encloses what the contour does, with far fewer points
    _, radius = cv2.minEnclosingCircle(hull)
    (_, (w, h), _) = cv2.minAreaRect(hull)
    triangle_area, _ = cv2.minEnclosingTriangle(hull)
    hull_area = cv2.contourArea(hull)
    fills = np.array([area / (np.pi * radius**2), area / (w * h), area / triangle_area, area / hull_area]).clip(0.0, 1.0)
    return np.concatenate([fills, symmetry(contour)])


def symmetry(contour: np.ndarray) -> np.ndarray:
    """Which of 3-, 4- and 5-fold symmetry the contour's radius-vs-angle profile shows:
    its harmonics HARMONICS relative to the mean radius, as shares of their norm (plus
    RIPPLE, so a round outline gives ~0). Blur shrinks a star's five lobes but keeps them
    five, so the shares survive where the fill ratios drift."""
    m = cv2.moments(contour)
    points = contour.reshape(-1, 2).astype(np.float64) - (m["m10"] / m["m00"], m["m01"] / m["m00"])
    radius = np.hypot(points[:, 0], points[:, 1])
    theta = np.arctan2(points[:, 1], points[:, 0])
    step = np.angle(np.exp(1j * (np.roll(theta, -1) - np.roll(theta, 1)))) / 2  # dtheta at each point
    amplitude = np.abs((radius * step) @ np.exp(-1j * np.outer(theta, HARMONICS))) / abs((radius * step).sum())
    return amplitude / (np.linalg.norm(amplitude) + RIPPLE)


def _outer_contour(mask: np.ndarray) -> np.ndarray | None:
    """Outer contour of the mask's largest component (its holes, e.g. stripes, count as filled)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea) if contours else None


def prototype(shape: str) -> np.ndarray:
    """Descriptors of the ideal `shape`, drawn large and clean by the world's drawer."""
    canvas = Image.new("L", (PROTOTYPE_SIZE, PROTOTYPE_SIZE), 0)
    SHAPE_DRAWERS[shape](ImageDraw.Draw(canvas), PROTOTYPE_SIZE / 2, PROTOTYPE_SIZE / 2, PROTOTYPE_SIZE * 0.3, 0.0)
    return descriptors(_outer_contour(np.asarray(canvas) > 127))


def _ring(a: np.ndarray) -> np.ndarray:
    """The outer RING pixels of an H x W (x C) array, where the background shows."""
    inner = np.zeros(a.shape[:2], bool)
    inner[RING:-RING, RING:-RING] = True
    return a[~inner]


def foreground(image: np.ndarray, striped: bool = False) -> np.ndarray | None:
    """Outer contour (at UPSAMPLE x the image's scale) of the shape in an H x W x 3 image in
    [0, 1], or None when nothing stands out from the background's colour and noise.
    `striped`: keep a striped shape's dark bands (STRIPED_THRESHOLD)."""
    diff = image - np.median(_ring(image), axis=0)  # a shape touching the border cannot move the median
    dist = np.linalg.norm(ndimage.gaussian_filter(diff, (SMOOTH_SIGMA, SMOOTH_SIGMA, 0), mode="nearest"), axis=-1)
    border = _ring(dist)  # the background's noise, as it shows in the distance map
    median = np.median(border)
    spread = 1.4826 * np.median(np.abs(border - median))  # robust std
    if dist.max() < max(MIN_PEAK, median + NOISE_PEAK * spread):
        return None
    h, w = dist.shape
    big = cv2.resize(dist.astype(np.float32), (w * UPSAMPLE, h * UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    threshold = STRIPED_THRESHOLD if striped else THRESHOLD
    contour = _outer_contour(big > max(threshold * dist.max(), median + NOISE_LEVEL * spread))
    if contour is None or cv2.contourArea(contour) < MIN_AREA * UPSAMPLE**2:
        return None
    return contour


class GeometricJudge:
    """Judge protocol, head "shape": softmax over negative descriptor distances to each
    shape's ideal prototype; EMPTY (when a class) takes all the probability when no
    foreground is found, and the shapes share it evenly when EMPTY is not a class.
    Head "texture": the PatternJudge's."""

    def __init__(self, shapes: tuple[str, ...] = DEFAULT_CLASSES) -> None:
        unknown = [s for s in shapes if s != EMPTY and s not in SHAPE_DRAWERS]
        if unknown:
            raise ValueError(f"geometric judge: unknown shape(s) {unknown}; allowed: {sorted(SHAPE_DRAWERS)} and {EMPTY!r}")
        self._pattern = PatternJudge(with_empty=EMPTY in shapes)
        self.classes = {"shape": tuple(shapes), **self._pattern.classes}
        self._shape_idx = [i for i, s in enumerate(shapes) if s != EMPTY]
        self._empty_idx = shapes.index(EMPTY) if EMPTY in shapes else None
        self._prototypes = np.stack([prototype(shapes[i]) for i in self._shape_idx])

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image, probabilities over the classes (N x n_classes, on CPU)."""
        pixels = images.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
        textures = self._pattern.probs(images)
        striped = (textures["texture"].argmax(-1) == self.classes["texture"].index("striped")).tolist()
        out = np.zeros((len(pixels), len(self.classes["shape"])))
        for row, image, bands in zip(out, pixels, striped):
            contour = foreground(image, bands)
            if contour is None and self._empty_idx is not None:
                row[self._empty_idx] = 1.0
                continue
            if contour is None:
                row[self._shape_idx] = 1.0 / len(self._shape_idx)
                continue
            dist = np.linalg.norm(self._prototypes - descriptors(contour), axis=1)
            logits = -(dist - dist.min()) / TEMPERATURE
            row[self._shape_idx] = np.exp(logits) / np.exp(logits).sum()
        return {"shape": torch.from_numpy(out).float(), **textures}
