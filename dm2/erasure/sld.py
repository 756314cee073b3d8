"""Safe Latent Diffusion (SLD, Schramowski et al. 2023) as sampling-time guidance for
`dm2.models.diffusion.sample`: no weights change; each DDIM step pushes the conditional noise
prediction away from that of a safety concept (the paper's Eq. 3-8), wherever the
prompt's prediction leans towards the concept."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dm2.core.io import fingerprint
from dm2.erasure.params import SLDParams
from dm2.models.diffusion import encode_prompts

SLD_PRESETS: dict[str, SLDParams] = {
    "weak": SLDParams(20.0, 15, 0.0, 0.0, 0.0),
    "medium": SLDParams(1000.0, 10, 0.01, 0.3, 0.4),
    "strong": SLDParams(2000.0, 7, 0.025, 0.5, 0.7),
    "max": SLDParams(5000.0, 0, 1.0, 0.5, 0.7),
}


class SafetyGuidance:
    """A `dm2.models.diffusion.Guide`: runs the UNet on the safety concept's text-encoder states
    (1 or N x L x width) and returns the steered conditional prediction
    eps_p - gamma_S, so the sampler's classifier-free guidance turns it into SLD's
    eps_u + s_g (eps_p - eps_u - gamma_S). The momentum lives for one `sample` call."""

    def __init__(self, unet: UNet2DConditionModel, states: torch.Tensor, params: SLDParams) -> None:
        self.unet = unet
        self.states = states.to(unet.device, unet.dtype)
        self.params = params
        self.momentum: torch.Tensor | None = None

    def reset(self) -> None:
        self.momentum = None

    def key(self) -> str:
        return fingerprint("sld", self.params, data=self.states)

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
