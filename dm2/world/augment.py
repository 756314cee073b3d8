"""Batched image augmentation for the world's judge and CLIP.

Both models later score images sampled from the world's diffusion model, which are
slightly blurred, noisy and colour-shifted versions of rendered ones; training on such
perturbations keeps their verdicts on generated images close to those on renders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dm2.world.params import AugmentParams


def _uniform(n: int, high: float, g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=g) * high


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur with one sigma per image (grouped convolution)."""
    n, c, h, w = x.shape
    radius = 2
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(taps[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, taps)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def augment(images: torch.Tensor, p: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """Randomly shift, blur, colour-jitter and add noise to images in [0, 1] (N x 3 x H x W)."""
    n = len(images)
    x = images
    if p.shift > 0:
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * p.shift  # grid spans [-1, 1]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if p.blur > 0:
        x = _blur(x, _uniform(n, p.blur, g))
    if p.jitter > 0:
        gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * p.jitter
        offset = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * p.jitter
        x = x * gain + offset
    if p.noise > 0:
        x = x + torch.randn(x.shape, generator=g) * _uniform(n, p.noise, g, 1, 1, 1)
    return x.clamp(0, 1)
