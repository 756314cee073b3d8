"""The shapes world's judge: a small CNN with one head per attribute (shape, colour,
texture), trained by stages/train_judge.py (`dm2.training.world_models.train_judge`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dm2.core.io import read_metadata
from dm2.core.precision import full_precision
from dm2.core.weights import load_float32, save_float16

WORLD_IMAGE_SIZE = 32


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: identical behaviour in training and eval, so
    # small or single-concept batches of generated images are judged like training ones.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class WorldJudge(nn.Module):
    """Small CNN on 32x32 images with one head per attribute: shape, colour, texture."""

    def __init__(self, shapes: list[str], colours: list[str], textures: list[str], width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.classes = {"shape": tuple(shapes), "colour": tuple(colours), "texture": tuple(textures)}
        w = width
        self.body = nn.Sequential(
            _block(3, w), _block(w, w), nn.AvgPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.AvgPool2d(2),
            _block(2 * w, 4 * w), _block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({head: nn.Linear(4 * w, len(names)) for head, names in self.classes.items()})

    @full_precision
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(penultimate features, logits per head) of images in [0, 1]; differentiable."""
        if images.shape[-2:] != (WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE):
            images = F.interpolate(images, (WORLD_IMAGE_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False)
        device = next(self.parameters()).device
        feats = self.body(images.to(device, torch.float32) * 2 - 1)
        return feats, {head: layer(feats) for head, layer in self.heads.items()}

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, logits = self(images)
        return {head: v.softmax(-1).cpu() for head, v in logits.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (on CPU), the embedding for Frechet distances."""
        return self(images)[0].cpu()


def save_world_judge(judge: WorldJudge, path: str | Path) -> None:
    """float16 weights; class names and width go in the metadata so the file loads alone."""
    metadata = {"kind": "world", "width": str(judge.width), "classes": json.dumps({k: list(v) for k, v in judge.classes.items()})}
    save_float16(judge.state_dict(), path, metadata)


def load_world_judge(path: str) -> WorldJudge:
    weights = load_float32(path)
    meta = read_metadata(path)
    classes = json.loads(meta["classes"])
    judge = WorldJudge(classes["shape"], classes["colour"], classes["texture"], width=int(meta["width"]))
    judge.load_state_dict(weights)
    return judge.eval().requires_grad_(False)
