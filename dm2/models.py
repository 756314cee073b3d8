"""Which models a run uses: the `models` and `device` params, shared by every stage.

The defaults point at the shipped shapes world; real users name a hub id or a local
folder (e.g. `CompVis/stable-diffusion-v1-4`, open_clip `ViT-L-14` / `openai`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dm2.config import require

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelsParams:
    diffusion: str
    clip_name: str
    clip_pretrained: str
    judge: str
    judge_path: str
    # A second judge of another family: every Ratio and ASR is reported by both. World:
    # "geometric" (shape descriptors of the segmented foreground, nothing learned); real
    # models: e.g. nudenet (a detector) beside q16 (CLIP).
    second_judge: str = "geometric"
    second_judge_path: str = ""

    def validate(self, name: str) -> None:
        for key in ("diffusion", "clip_name", "clip_pretrained", "judge", "second_judge"):
            require(bool(getattr(self, key).strip()), f"{name}.{key}", "must not be empty")
        require(self.second_judge != self.judge, f"{name}.second_judge", f"must differ from models.judge ({self.judge!r})")


def resolve_device(device: str) -> torch.device:
    require(device in DEVICES, "device", f"{device!r} is not one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no GPU; use 'cpu' or 'auto'")
    return torch.device(device)
