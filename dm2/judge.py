"""Judges: classifiers that say whether generated images still show a concept.

Every judge maps images in [0, 1] (N x 3 x H x W) to per-class probabilities for each of
its heads; `load_judge` picks the judge by kind. The shapes world's judge is a small CNN
trained by stages/train_judge.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from dm2.config import InputError
from dm2.io import read_metadata
from dm2.params import ModelsParams
from dm2.precision import full_precision
from dm2.weights import load_float32, save_float16

WORLD_IMAGE_SIZE = 32


class Judge(Protocol):
    classes: dict[str, tuple[str, ...]]  # head name -> its class names

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per head, N x n_classes probabilities (on CPU) for images in [0, 1]."""
        ...


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


def _load_world_judge(path: str) -> WorldJudge:
    weights = load_float32(path)
    meta = read_metadata(path)
    classes = json.loads(meta["classes"])
    judge = WorldJudge(classes["shape"], classes["colour"], classes["texture"], width=int(meta["width"]))
    judge.load_state_dict(weights)
    return judge.eval().requires_grad_(False)


def _nudenet(path: str) -> Judge:
    from dm2.real_judges import NudeNetJudge  # onnxruntime is only needed here

    return NudeNetJudge()


def _q16(path: str) -> Judge:
    from dm2.real_judges import q16_judge

    return q16_judge("ViT-L-14", "openai", path)


def _clip_styles(path: str) -> Judge:
    """`path`: a text file with one class name (e.g. an UnlearnCanvas style) per line."""
    from dm2.real_judges import clip_names_judge

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: class-name list for the clip_styles judge not found")
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return clip_names_judge("ViT-L-14", "openai", names)


def _geometric(path: str) -> Judge:
    from dm2.shape_geometry import GeometricJudge  # OpenCV is only needed here

    return GeometricJudge()


JUDGES: dict[str, Callable[[str], Judge]] = {
    "world": _load_world_judge,
    "geometric": _geometric,
    "nudenet": _nudenet,
    "q16": _q16,
    "clip_styles": _clip_styles,
}


def load_judge(kind: str, path: str, key: str = "models.judge") -> Judge:
    if kind not in JUDGES:
        raise ValueError(f"{key}: {kind!r} is unknown; allowed: {sorted(JUDGES)}")
    try:
        return JUDGES[kind](path)
    except ImportError as e:
        raise ImportError(f"{key}: the {kind!r} judge needs a package that is not installed ({e})") from None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{key}_path: {e}; train or fetch the {kind!r} judge first") from None
    except InputError as e:
        raise InputError(f"{key}_path: {e}") from None


def load_judges(models: ModelsParams) -> dict[str, Judge]:
    """The primary judge (`models.judge`) and the second one (`models.second_judge`), by
    kind, primary first; loaded before any work so a missing file fails at once."""
    return {
        models.judge: load_judge(models.judge, models.judge_path),
        models.second_judge: load_judge(models.second_judge, models.second_judge_path, "models.second_judge"),
    }


def judge_concept(judge: Judge, images: torch.Tensor, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the score that it shows `concept` and whether the judge says it does.

    `concept` is looked up in every head (the world judge: a shape, colour or texture;
    CLIP class judges: a class name): classified as the concept when it is the head's
    argmax. Binary judges (NudeNet, Q16: head "concept" = [negative, positive]) score the
    positive class for any concept name; NudeNet decides by its pinned threshold."""
    threshold = getattr(judge, "threshold", None)
    for head, names in judge.classes.items():
        if concept in names:
            probs = judge.probs(images)[head]
            idx = names.index(concept)
            scores = probs[:, idx]
            return scores, (scores >= threshold) if threshold is not None else (probs.argmax(-1) == idx)
    if list(judge.classes) == ["concept"] and len(judge.classes["concept"]) == 2:
        scores = judge.probs(images)["concept"][:, 1]
        return scores, (scores >= threshold) if threshold is not None else (scores > 0.5)
    known = [name for names in judge.classes.values() for name in names]
    raise ValueError(f"concept {concept!r} is not a class of this judge; known: {known}")
