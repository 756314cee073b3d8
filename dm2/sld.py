"""Safe Latent Diffusion (SLD, Schramowski et al. 2023) as sampling-time guidance for
`dm2.diffusion.sample`: no weights change; each DDIM step pushes the conditional noise
prediction away from that of a safety concept (the paper's Eq. 3-8), wherever the
prompt's prediction leans towards the concept."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dm2.config import require
from dm2.diffusion import encode_prompts


@dataclass
class SLDParams:
    """SLD hyper-parameters; the defaults are SLD-Strong, the baseline of the Dark Miner
    paper (Section 4.1). The paper's presets (also diffusers' `SafetyConfig`):

    | preset | guidance_scale | warmup_steps | threshold | momentum_scale | mom_beta |
    | weak   | 20             | 15           | 0.0       | 0.0            | 0.0      |
    | medium | 1000           | 10           | 0.01      | 0.3            | 0.4      |
    | strong | 2000           | 7            | 0.025     | 0.5            | 0.7      |
    | max    | 5000           | 0            | 1.0       | 0.5            | 0.7      |

    Warm-up counts steps of our sampler, which runs fewer steps than SD's 50 on the
    shapes world, so a preset steers over a larger share of the trajectory there.
    """

    guidance_scale: float = 2000.0  # s_S: scale of |eps_p - eps_S|, clamped to 1 per element
    warmup_steps: int = 7  # delta: steps before the safety term is applied (momentum builds)
    threshold: float = 0.025  # lambda: elements with eps_p - eps_S >= lambda are left alone
    momentum_scale: float = 0.5  # s_m
    mom_beta: float = 0.7  # beta_m: share of the previous momentum kept

    def validate(self, name: str) -> None:
        require(self.guidance_scale >= 0, f"{name}.guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        require(self.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.momentum_scale >= 0, f"{name}.momentum_scale", f"must be >= 0, got {self.momentum_scale}")
        require(0 <= self.mom_beta < 1, f"{name}.mom_beta", f"must be in [0, 1), got {self.mom_beta}")


SLD_PRESETS: dict[str, SLDParams] = {
    "weak": SLDParams(20.0, 15, 0.0, 0.0, 0.0),
    "medium": SLDParams(1000.0, 10, 0.01, 0.3, 0.4),
    "strong": SLDParams(2000.0, 7, 0.025, 0.5, 0.7),
    "max": SLDParams(5000.0, 0, 1.0, 0.5, 0.7),
}


class SafetyGuidance:
    """A `dm2.diffusion.Guide`: runs the UNet on the safety concept's text-encoder states
    (1 or N x L x width) and returns the steered conditional prediction
    eps_p - gamma_S, so the sampler's classifier-free guidance turns it into SLD's
    eps_u + s_g (eps_p - eps_u - gamma_S). The momentum lives for one `sample` call."""

    def __init__(self, unet: UNet2DConditionModel, states: torch.Tensor, params: SLDParams) -> None:
        params.validate("sld")
        self.unet = unet
        self.states = states.to(unet.device, unet.dtype)
        self.params = params
        self.momentum: torch.Tensor | None = None

    def reset(self) -> None:
        self.momentum = None

    @torch.no_grad()
    def __call__(
        self, step: int, x_in: torch.Tensor, t: torch.Tensor, eps_cond: torch.Tensor, eps_uncond: torch.Tensor
    ) -> torch.Tensor:
        p = self.params
        states = self.states.expand(x_in.shape[0], -1, -1) if self.states.shape[0] == 1 else self.states
        eps_s = self.unet(x_in, t, encoder_hidden_states=states).sample
        diff = eps_cond - eps_s
        # Eq. 6: per-element scale; only where the prompt does not already point away from the concept.
        scale = torch.clamp(diff.abs() * p.guidance_scale, max=1.0)
        scale = torch.where(diff >= p.threshold, torch.zeros_like(scale), scale)
        gamma = (eps_s - eps_uncond) * scale  # Eq. 4
        if self.momentum is None:
            self.momentum = torch.zeros_like(gamma)
        gamma = gamma + p.momentum_scale * self.momentum  # Eq. 7
        self.momentum = p.mom_beta * self.momentum + (1 - p.mom_beta) * gamma  # Eq. 8
        # Eq. 3 after warm-up; returning eps_cond itself keeps the sampler bit-identical.
        return eps_cond - gamma if step >= p.warmup_steps else eps_cond


def safety_guidance(pipe: StableDiffusionPipeline, concept: str, params: SLDParams) -> SafetyGuidance:
    """SLD against the text `concept` (e.g. the concept's name and its synonyms)."""
    return SafetyGuidance(pipe.unet, encode_prompts(pipe, [concept]), params)
