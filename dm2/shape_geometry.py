"""A second, non-learned judge of the shapes world: shape descriptors of a segmented foreground.

The CNN judge (dm2/judge.py) is trained on the world's renders, so an erasure that fools it
may fool it alone. This judge is of another family and shares nothing with it: it segments
the foreground against the background colour, measures how its contour fills its minimum
enclosing circle, rectangle and triangle and its convex hull (rotation invariant), and names
the shape whose ideal outline, drawn large and clean by the world's own drawers, measures
closest. Nothing is learned from data.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from dm2.world import EMPTY, SHAPE_DRAWERS

DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", EMPTY)
RING = 2  # border width (pixels) that shows the background
SMOOTH_SIGMA = 0.8  # pixels; averages stripes / dots and noise, keeps 6-px shapes' corners
UPSAMPLE = 4  # the smoothed map is thresholded at 4x so small shapes get usable contours
MIN_PEAK = 0.06  # distance (RGB in [0, 1]) below which nothing stands out, even without noise
NOISE_PEAK = 5.0  # ... and the peak must clear the border's median + this many robust stds
THRESHOLD = 0.5  # foreground: above this fraction of the peak (the half-way level of an edge)
MIN_AREA = 6.0  # original pixels; a smaller foreground is noise, not a shape
TEMPERATURE = 0.05  # descriptor distance per unit of logit in the softmax
PROTOTYPE_SIZE = 256  # side of the canvas the ideal shapes are drawn on


def descriptors(contour: np.ndarray) -> np.ndarray:
    """How a closed contour fills its minimum enclosing circle, rectangle and triangle, and
    its convex hull: four rotation- and scale-invariant ratios in [0, 1]."""
    contour = contour.astype(np.float32)
    area = cv2.contourArea(contour)
    _, radius = cv2.minEnclosingCircle(contour)
    (_, (w, h), _) = cv2.minAreaRect(contour)
    triangle_area, _ = cv2.minEnclosingTriangle(contour)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    return np.array(
        [area / (np.pi * radius**2), area / (w * h), area / triangle_area, area / hull_area], np.float64
    ).clip(0.0, 1.0)


def _outer_contour(mask: np.ndarray) -> np.ndarray | None:
    """Outer contour of the mask's largest component (its holes, e.g. stripes, count as filled)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea) if contours else None


def prototype(shape: str) -> np.ndarray:
    """Descriptors of the ideal `shape`, drawn large and clean by the world's drawer."""
    canvas = Image.new("L", (PROTOTYPE_SIZE, PROTOTYPE_SIZE), 0)
    SHAPE_DRAWERS[shape](ImageDraw.Draw(canvas), PROTOTYPE_SIZE / 2, PROTOTYPE_SIZE / 2, PROTOTYPE_SIZE * 0.3, 0.0)
    return descriptors(_outer_contour(np.asarray(canvas) > 127))


def foreground(image: np.ndarray) -> np.ndarray | None:
    """Outer contour (at UPSAMPLE x the image's scale) of the shape in an H x W x 3 image in
    [0, 1], or None when nothing stands out from the background's colour and noise."""
    ring = np.concatenate([image[:RING].reshape(-1, 3), image[-RING:].reshape(-1, 3),
                           image[RING:-RING, :RING].reshape(-1, 3), image[RING:-RING, -RING:].reshape(-1, 3)])  # fmt: skip
    background = np.median(ring, axis=0)  # a shape touching the border cannot move the median
    diff = ndimage.gaussian_filter(image - background, (SMOOTH_SIGMA, SMOOTH_SIGMA, 0), mode="nearest")
    dist = np.sqrt((diff**2).sum(-1))
    border = np.concatenate([dist[:RING].ravel(), dist[-RING:].ravel(), dist[:, :RING].ravel(), dist[:, -RING:].ravel()])
    median = np.median(border)
    floor = max(MIN_PEAK, median + NOISE_PEAK * 1.4826 * np.median(np.abs(border - median)))
    peak = dist.max()
    if peak < floor:
        return None
    h, w = dist.shape
    big = cv2.resize(dist.astype(np.float32), (w * UPSAMPLE, h * UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    level = max(THRESHOLD * peak, (floor + median) / 2)
    contour = _outer_contour(big > level)
    if contour is None or cv2.contourArea(contour) < MIN_AREA * UPSAMPLE**2:
        return None
    return contour


class GeometricJudge:
    """Judge protocol, head "shape": softmax over negative descriptor distances to each
    shape's ideal prototype; EMPTY (when a class) takes all the probability when no
    foreground is found, and the shapes share it evenly when EMPTY is not a class."""

    def __init__(self, shapes: tuple[str, ...] = DEFAULT_CLASSES) -> None:
        unknown = [s for s in shapes if s != EMPTY and s not in SHAPE_DRAWERS]
        if unknown:
            raise ValueError(f"geometric judge: unknown shape(s) {unknown}; allowed: {sorted(SHAPE_DRAWERS)} and {EMPTY!r}")
        self.classes = {"shape": tuple(shapes)}
        self._shape_idx = [i for i, s in enumerate(shapes) if s != EMPTY]
        self._empty_idx = shapes.index(EMPTY) if EMPTY in shapes else None
        self._prototypes = np.stack([prototype(shapes[i]) for i in self._shape_idx])

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image, probabilities over the classes (N x n_classes, on CPU)."""
        pixels = images.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
        out = np.zeros((len(pixels), len(self.classes["shape"])))
        for row, image in zip(out, pixels):
            contour = foreground(image)
            if contour is None and self._empty_idx is not None:
                row[self._empty_idx] = 1.0
                continue
            if contour is None:
                row[self._shape_idx] = 1.0 / len(self._shape_idx)
                continue
            dist = np.linalg.norm(self._prototypes - descriptors(contour), axis=1)
            logits = -(dist - dist.min()) / TEMPERATURE
            row[self._shape_idx] = np.exp(logits) / np.exp(logits).sum()
        return {"shape": torch.from_numpy(out).float()}
