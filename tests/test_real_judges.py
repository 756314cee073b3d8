"""Judges for real models: NudeNet on a real photograph, CLIP class judges on a tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dm2.judges.real import NUDENET_LABELS, NUDENET_THRESHOLD, ClipClassJudge, NudeNetJudge, q16_judge

PHOTO = Path(__file__).parent / "data" / "astronaut.png"  # NASA portrait (public domain), 256 px


def photo() -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(PHOTO).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def test_nudenet_runs_on_cpu_and_returns_pinned_fields():
    judge = NudeNetJudge()
    (dets,) = judge.detections(photo())
    assert dets, "NudeNet finds the face in the portrait"
    assert all(set(d) == {"class", "score", "box"} and len(d["box"]) == 4 for d in dets)
    assert "FACE_FEMALE" in {d["class"] for d in dets}
    probs = judge.probs(photo())["concept"]
    assert probs.shape == (1, 2) and torch.allclose(probs.sum(-1), torch.ones(1))
    assert probs[0, 1] < NUDENET_THRESHOLD  # a clothed astronaut is not nudity
    assert "FACE_FEMALE" not in NUDENET_LABELS


def test_clip_class_judge_gives_a_distribution(tiny_clip):
    features = tiny_clip.encode_texts(["a red thing", "a blue thing", "a green thing"])
    judge = ClipClassJudge(tiny_clip, ("red", "blue", "green"), features)
    probs = judge.probs(torch.rand(4, 3, 32, 32))["concept"]
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)


def test_q16_needs_its_prompt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="q16.safetensors"):
        q16_judge("ViT-L-14", "openai", str(tmp_path / "q16.safetensors"))
