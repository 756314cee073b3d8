"""The world's rendered splits: the training images and the held-out ones, which never
share a seed."""

from __future__ import annotations

import torch

from dm2.core.steps import SEED_STRIDE
from dm2.world.params import WorldParams
from dm2.world.render import Sample, sample_world

HELDOUT_SEED_OFFSET = SEED_STRIDE  # held-out images never share a seed with training ones


def world_split(world: WorldParams, split: str) -> tuple[torch.Tensor, list[Sample]]:
    """Images in [0, 1] (N x 3 x 32 x 32) and labels of the `train` or `heldout` split."""
    if split == "train":
        images, samples = sample_world(world.spec(), world.train_images, world.seed)
    elif split == "heldout":
        images, samples = sample_world(world.spec(), world.heldout_images, world.seed + HELDOUT_SEED_OFFSET)
    else:
        raise ValueError(f"split: {split!r} is not one of ['train', 'heldout']")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, samples
