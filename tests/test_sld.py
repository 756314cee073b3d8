"""SLD as sampling-time guidance: no guide is the plain sampler, SLD changes a prompt's
samples only when its safety concept is in play, and momentum does not leak between calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dm2.core.config import ParamsError, parse_section
from dm2.erasure.params import SLDParams
from dm2.erasure.sld import SLD_PRESETS, SafetyGuidance, safety_guidance
from dm2.models.diffusion import encode_prompts, generate, generate_latents, initial_noise

STEPS, GUIDANCE, SEED = 6, 7.5, 3
# Warm-up 0 so the tiny sampler's 6 steps are steered; the rest is SLD-Strong.
IN_PLAY = dataclasses.replace(SLD_PRESETS["strong"], warmup_steps=0)


def plain_ddim(pipe, cond: torch.Tensor, seed: int) -> torch.Tensor:
    """The sampler as it was before guides: DDIM, eta 0, classifier-free guidance."""
    uncond = encode_prompts(pipe, [""]).expand(cond.shape[0], -1, -1)
    sched = pipe.scheduler
    sched.set_timesteps(STEPS)
    x = initial_noise(cond.shape[0], pipe.unet, seed) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            eps = pipe.unet(x_in, t, encoder_hidden_states=cond).sample
            eps_u = pipe.unet(x_in, t, encoder_hidden_states=uncond).sample
            x = sched.step(eps_u + GUIDANCE * (eps - eps_u), t, x).prev_sample
    return x


@pytest.fixture
def cond(tiny_pipe) -> torch.Tensor:
    return encode_prompts(tiny_pipe, ["a red circle", "a ball on white", "a blue square"])


def sld_latents(pipe, cond: torch.Tensor, params: SLDParams, concept: str = "circle") -> torch.Tensor:
    return generate_latents(pipe, cond, SEED, STEPS, GUIDANCE, guide=safety_guidance(pipe, concept, params))


def test_no_guide_is_the_plain_sampler(tiny_pipe, cond):
    assert torch.equal(generate_latents(tiny_pipe, cond, SEED, STEPS, GUIDANCE), plain_ddim(tiny_pipe, cond, SEED))


@pytest.mark.parametrize(
    "off",
    [
        pytest.param(dict(guidance_scale=0.0), id="no-safety-scale"),
        pytest.param(dict(warmup_steps=STEPS), id="still-warming-up"),
        pytest.param(dict(threshold=-1e9), id="empty-threshold-mask"),
    ],
)
def test_changes_sampling_only_when_its_concept_is_in_play(tiny_pipe, cond, off):
    plain = generate_latents(tiny_pipe, cond, SEED, STEPS, GUIDANCE)
    steered = sld_latents(tiny_pipe, cond, IN_PLAY)
    # In play, every sample moves; one knob taking the concept out of play undoes it exactly.
    assert ((steered - plain).flatten(1).abs().amax(1) > 1e-3).all()
    assert torch.equal(sld_latents(tiny_pipe, cond, dataclasses.replace(IN_PLAY, **off)), plain)


def test_warmup_delays_the_push(tiny_pipe, cond):
    early = sld_latents(tiny_pipe, cond, IN_PLAY)
    late = sld_latents(tiny_pipe, cond, dataclasses.replace(IN_PLAY, warmup_steps=STEPS - 1))
    plain = generate_latents(tiny_pipe, cond, SEED, STEPS, GUIDANCE)
    assert (late - plain).abs().max() < (early - plain).abs().max()


def test_momentum_resets_between_calls(tiny_pipe, cond):
    guide = safety_guidance(tiny_pipe, "circle", IN_PLAY)
    first = generate(tiny_pipe, cond, SEED, STEPS, GUIDANCE, guide=guide)
    assert guide.momentum is not None and guide.momentum.abs().max() > 0
    assert torch.equal(generate(tiny_pipe, cond, SEED, STEPS, GUIDANCE, guide=guide), first)


def test_guidance_one_still_steers(tiny_pipe, cond):
    guide = SafetyGuidance(tiny_pipe.unet, encode_prompts(tiny_pipe, ["circle"]), IN_PLAY)
    plain = generate_latents(tiny_pipe, cond, SEED, STEPS, 1.0)
    assert not torch.allclose(generate_latents(tiny_pipe, cond, SEED, STEPS, 1.0, guide=guide), plain)


def test_params_validate_and_presets():
    assert parse_section(SLDParams, {}, "sld") == SLD_PRESETS["strong"]
    assert SLD_PRESETS["medium"].guidance_scale == 1000 and SLD_PRESETS["max"].warmup_steps == 0
    with pytest.raises(ParamsError, match="sld.mom_beta"):
        parse_section(SLDParams, {"mom_beta": 1.0}, "sld")
    with pytest.raises(ParamsError, match="sld.warmup_steps"):
        parse_section(SLDParams, {"warmup_steps": -1}, "sld")
