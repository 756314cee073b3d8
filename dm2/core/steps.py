"""What every optimisation loop shares: a seed per loop and a guard against a loss that
has gone non-finite (which would otherwise poison the weights silently)."""

from __future__ import annotations

import torch

SEED_STRIDE = 1_000_003  # a prime far above any loop count: runs with different seeds never share a loop seed


def loop_seed(seed: int, i: int) -> int:
    """The seed of loop (or chunk, or batch) `i` of a run seeded with `seed`: each loop's
    randomness depends on (seed, i) alone, so a resumed run repeats a fresh one."""
    return seed * SEED_STRIDE + i


def check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    """Stop with an error naming the loop and step when any element of `loss` is NaN or infinite."""
    if not torch.isfinite(loss).all():
        value = loss.item() if loss.numel() == 1 else "not finite"
        raise FloatingPointError(f"{what}: loss is {value} at step {step}")
