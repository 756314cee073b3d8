"""Half-precision weight files for the shipped world models: float16 on disk keeps the
repository small, float32 in memory keeps CPU inference exact and fast."""

from __future__ import annotations

from pathlib import Path

import torch

from dm2.core.io import load_tensors, save_tensors


def save_float16(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    # Integer buffers (BatchNorm's step counter) keep their dtype.
    save_tensors({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path, metadata)


def load_float32(path: str | Path) -> dict[str, torch.Tensor]:
    """Raises FileNotFoundError naming `path` when it is missing."""
    return {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(path).items()}
