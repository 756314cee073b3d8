"""The `precision` param: float32 everywhere; bfloat16 autocast for the diffusion model's
passes (UNet, text encoder, VAE), forward and backward, with float32 weights, adapters and
optimiser state; or, on a GPU, float32 with TF32 matrix products and convolutions (tf32).

A stage runs inside `model_precision` (entered by `python -m stages`). The judges and CLIP
always measure in float32 (`full_precision`), so a figure changes only through the images
it is given. Text states and latents leave the model passes as float32, so what is saved
and what the judges see keeps its dtype. Every `dm2.core.io.fingerprint` made under bf16
records it, so a cached result, shard or checkpoint made at one precision is never
reused at another; float32 keys are those of a run without this module.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, TypeVar

import torch

from dm2.core.config import ParamsError
from dm2.core.params import PRECISIONS

_CURRENT: ContextVar[str] = ContextVar("precision", default="fp32")
F = TypeVar("F", bound=Callable)


def current() -> str:
    """The precision the enclosing `model_precision` set ("fp32" outside any)."""
    return _CURRENT.get()


def check_supported(precision: str, device: torch.device) -> None:
    """Refuse bf16 where the device has no bfloat16 arithmetic (it would run emulated, slower),
    and tf32 off an Ampere-or-newer GPU."""
    if precision not in PRECISIONS:
        raise ParamsError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return
    if precision == "tf32":
        if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
            raise ParamsError(f"precision: tf32 needs a GPU with TF32 (Ampere or newer); this {device.type} has none, use fp32")
        return
    if device.type == "cuda":
        ok, need = torch.cuda.is_bf16_supported(), "a GPU with bfloat16 (Ampere or newer)"
    else:
        ok, need = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported(), "a CPU with AVX512-BF16 or AMX"
    if not ok:
        raise ParamsError(f"precision: bf16 needs {need}; this {device.type} has none, use fp32")


@contextmanager
def model_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the body at `precision` on `device` (see the module docstring)."""
    check_supported(precision, device)
    token = _CURRENT.set(precision)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"), _tf32(precision == "tf32"):
            yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 (10-bit mantissa) for CUDA float32 matrix products and convolutions, or strict float32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def full_precision(fn: F) -> F:
    """`fn` with autocast and TF32 off on every device: measurements (judges, CLIP) stay float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with ExitStack() as stack:
            for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device, enabled=False))
            stack.enter_context(_tf32(False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
