"""Which models a run uses: the `models` and `device` params, shared by every stage.

The defaults point at the shipped shapes world; real users name a hub id or a local
folder (e.g. `CompVis/stable-diffusion-v1-4`, open_clip `ViT-L-14` / `openai`)."""

from __future__ import annotations

import torch

from dm2.core.config import require
from dm2.core.params import DEVICES


def resolve_device(device: str) -> torch.device:
    require(device in DEVICES, "device", f"{device!r} is not one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no GPU; use 'cpu' or 'auto'")
    return torch.device(device)
