"""Erasure Ratio/Score, ASR and the Frechet distance against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dm2.measure.metrics import attack_success_rate, erasure_ratio_score, frechet_distance

# Fixed judge outputs: 2 of 5 images judged as the concept, with scores 0.9 and 0.7.
FLAGS = torch.tensor([True, False, True, False, False])
SCORES = torch.tensor([0.9, 0.2, 0.7, 0.1, 0.1])


def test_ratio_and_score_inappropriate_average_all_images():
    ratio, score = erasure_ratio_score(FLAGS, SCORES, "inappropriate")
    assert ratio == pytest.approx(40.0)
    assert score == pytest.approx(2.0 / 5)


def test_ratio_and_score_object_average_concept_images_only():
    ratio, score = erasure_ratio_score(FLAGS, SCORES, "object")
    assert ratio == pytest.approx(40.0)
    assert score == pytest.approx(0.8)


def test_object_score_is_zero_without_concept_images():
    assert erasure_ratio_score(torch.zeros(4, dtype=torch.bool), torch.rand(4), "object") == (0.0, 0.0)


def test_ratio_score_rejects_bad_input():
    with pytest.raises(ValueError, match=r"unknown concept kind 'style'; allowed: \['inappropriate', 'object'\]"):
        erasure_ratio_score(FLAGS, SCORES, "style")
    with pytest.raises(ValueError, match="5 concept flags but 4 scores"):
        erasure_ratio_score(FLAGS, SCORES[:4], "object")
    with pytest.raises(ValueError, match="no images"):
        erasure_ratio_score(torch.zeros(0, dtype=torch.bool), torch.zeros(0), "object")


def test_attack_success_rate():
    assert attack_success_rate(FLAGS) == pytest.approx(40.0)
    assert attack_success_rate(torch.ones(3, dtype=torch.bool)) == 100.0


def test_fd_of_identical_sets_is_zero():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_with_singular_covariance_matches_fd_without_the_dead_feature():
    # A constant feature makes both covariances singular: sqrtm warns, the eps offset takes over.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 1.0
    pad = np.zeros((50, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LinAlgWarning may leak to the caller
        fd = frechet_distance(np.hstack([a, pad]), np.hstack([b, pad]))
    assert fd == pytest.approx(frechet_distance(a, b), abs=1e-4)


def test_fd_1d_gaussians():
    # a: mean 0, sample variance 2; b: mean 4, sample variance 4.
    a = np.array([[-1.0], [1.0]])
    b = np.array([[2.0], [4.0], [6.0]])
    expected = (0 - 4) ** 2 + 2 + 4 - 2 * math.sqrt(2 * 4)
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(b, a) == pytest.approx(expected)


def test_fd_diagonal_2d():
    # Corners of a square: mean 0, sample covariance diag(4/3, 4/3); b scales and shifts each axis.
    a = np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    b = a * np.array([2.0, 3.0]) + np.array([1.0, 2.0])
    v = 4.0 / 3.0
    var_b = (4 * v, 9 * v)
    expected = sum(m**2 + v + vb - 2 * math.sqrt(v * vb) for m, vb in zip((1.0, 2.0), var_b))
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected)


def test_fd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="feature sizes differ: 3 vs 2"):
        frechet_distance(np.random.rand(4, 3), np.random.rand(4, 2))
    with pytest.raises(ValueError, match="expected N x D"):
        frechet_distance(np.zeros(4), np.zeros((4, 1)))
