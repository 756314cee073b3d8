"""The `precision` param (dm2/core/precision.py): bf16 autocast for the diffusion model's passes
agrees with float32 within the stated tolerance, keeps float32 where results are saved or
measured, keys its results apart, and is refused where the device lacks bfloat16."""

from __future__ import annotations

import pytest
import torch

from dm2.core import precision
from dm2.core.config import ParamsError
from dm2.core.io import fingerprint
from dm2.core.precision import check_supported, model_precision
from dm2.erasure.dark_miner_steps import mining_loss
from dm2.judges.world import WorldJudge
from dm2.models.diffusion import encode_prompts, free_embedding_states, generate_latents

CPU = torch.device("cpu")
BF16 = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no bfloat16 arithmetic")
# bf16 keeps 8 bits of mantissa: one UNet pass is off by ~1e-2 relative; 4 sampler steps
# with guidance stay within this of the float32 latents (docs/scale.md, "Precision").
LATENT_TOLERANCE = 0.1


@needs_bf16
def test_bf16_sampling_agrees_with_float32_and_returns_float32(tiny_pipe):
    cond = encode_prompts(tiny_pipe, ["a red circle", "a blue square"])
    full = generate_latents(tiny_pipe, cond, seed=0, steps=4, guidance=5.0)
    with model_precision("bf16", CPU):
        states = encode_prompts(tiny_pipe, ["a red circle", "a blue square"])
        half = generate_latents(tiny_pipe, states, seed=0, steps=4, guidance=5.0)
    assert states.dtype == torch.float32 and half.dtype == torch.float32
    assert (states - cond).abs().max() < 0.05 * cond.abs().max()
    assert not torch.equal(half, full)  # autocast really ran
    assert (half - full).abs().max() < LATENT_TOLERANCE * full.abs().max()


@needs_bf16
def test_bf16_training_step_gives_float32_gradients_close_to_float32(tiny_pipe):
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    grads = {}
    for mode in ("fp32", "bf16"):
        leaf = c.clone().requires_grad_(True)
        with model_precision(mode, CPU):
            loss = mining_loss(
                tiny_pipe.unet, tiny_pipe.scheduler, x0, leaf, lambda e: free_embedding_states(tiny_pipe, e), torch.Generator().manual_seed(2)
            )
        loss.backward()
        grads[mode] = leaf.grad
    assert grads["bf16"].dtype == torch.float32 and torch.isfinite(grads["bf16"]).all()
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), dim=0)
    assert cosine > 0.9


def test_judges_measure_in_float32_under_autocast():
    torch.manual_seed(0)
    judge = WorldJudge(["circle", "square"], ["red"], ["plain"], width=8).eval()
    images = torch.rand(4, 3, 32, 32)
    plain = judge.probs(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = judge.probs(images)
    assert all(torch.equal(plain[k], inside[k]) for k in plain)


def test_results_made_at_bf16_are_keyed_apart():
    outside = fingerprint({"a": 1}, data=torch.ones(3))
    with model_precision("fp32", CPU):
        assert fingerprint({"a": 1}, data=torch.ones(3)) == outside  # float32 keys are unchanged
    if BF16:
        with model_precision("bf16", CPU):
            assert precision.current() == "bf16"
            assert fingerprint({"a": 1}, data=torch.ones(3)) != outside
    assert precision.current() == "fp32"


def test_unknown_or_unsupported_precision_is_refused(monkeypatch):
    with pytest.raises(ParamsError, match=r"^precision: 'fp16' is not one of \['fp32', 'bf16', 'tf32'\]$"):
        check_supported("fp16", CPU)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(ParamsError, match=r"^precision: bf16 needs a CPU with AVX512-BF16 or AMX; this cpu has none, use fp32$"):
        check_supported("bf16", CPU)
    with pytest.raises(ParamsError, match=r"^precision: tf32 needs a GPU with TF32 \(Ampere or newer\); this cpu has none, use fp32$"):
        check_supported("tf32", CPU)


def test_tf32_is_switched_on_inside_only_and_never_for_measurements(monkeypatch):
    """tf32 sets CUDA's TF32 flags for the model passes, off again for judges and CLIP
    (`full_precision`) and after the stage. The flags are plain switches, so this runs on CPU."""
    monkeypatch.setattr(precision, "check_supported", lambda p, d: None)  # no GPU here
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    before = flags()
    seen = {}
    with model_precision("tf32", CPU):
        seen["inside"] = flags()
        precision.full_precision(lambda: seen.update(measuring=flags()))()
        seen["after_measuring"] = flags()
        inside_key = fingerprint({"a": 1}, data=torch.ones(3))
    assert inside_key != fingerprint({"a": 1}, data=torch.ones(3))  # results made with TF32 are keyed apart
    assert seen == {"inside": (True, True), "measuring": (False, False), "after_measuring": (True, True)}
    assert flags() == before
