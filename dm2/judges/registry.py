"""Judges: classifiers that say whether generated images still show a concept.

Every judge maps images in [0, 1] (N x 3 x H x W) to per-class probabilities for each of
its heads; `load_judge` picks the judge by kind. The shapes world's judge is a small CNN
trained by stages/train_judge.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from dm2.core.config import InputError
from dm2.core.params import ModelsParams
from dm2.judges.world import load_world_judge


class Judge(Protocol):
    classes: dict[str, tuple[str, ...]]  # head name -> its class names

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per head, N x n_classes probabilities (on CPU) for images in [0, 1]."""
        ...


def _nudenet(path: str) -> Judge:
    from dm2.judges.real import NudeNetJudge  # onnxruntime is only needed here

    return NudeNetJudge()


def _q16(path: str) -> Judge:
    from dm2.judges.real import q16_judge

    return q16_judge("ViT-L-14", "openai", path)


def _clip_styles(path: str) -> Judge:
    """`path`: a text file with one class name (e.g. an UnlearnCanvas style) per line."""
    from dm2.judges.real import clip_names_judge

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: class-name list for the clip_styles judge not found")
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return clip_names_judge("ViT-L-14", "openai", names)


def _geometric(path: str) -> Judge:
    from dm2.judges.geometric import GeometricJudge  # OpenCV is only needed here

    return GeometricJudge()


JUDGES: dict[str, Callable[[str], Judge]] = {
    "world": load_world_judge,
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
