"""Concept removal with a learnable prompt (Bui et al. 2024; slides in
shared/papers/learnable-prompts-slides.txt).

A learnable prompt p joins the text states in every cross-attention during training
only, as extra key / value tokens (concatenative) or added to the states (additive). Each
iteration alternates
  - a one-step prompt update (eq. 7): p moves so that the adapted model WITH p still
    produces the concept, L_e = ||eps'(c_e, p) - eps(c_e)||^2;
  - a one-step model update (eq. 8): L_r = ||eps'(c_e) - eps(c_n)||^2
    + lam ||eps'(c_e, p) - eps(c_e)||^2, so the concept's knowledge moves into p and
    out of the weights the sanitized model keeps.
At inference the sanitized model (the LoRA) is used without p.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from dm2.core.steps import check_finite
from dm2.erasure.esd import VARIANTS, training_latent
from dm2.erasure.lora import adapters_disabled, add_lora
from dm2.erasure.params import LearnablePromptParams
from dm2.models.diffusion import encode_prompts


class PromptSlot:
    """The prompt every wrapped processor attaches; None runs plain cross-attention (the
    original model's and the sanitized model's own predictions)."""

    value: torch.Tensor | None = None


class PromptedCrossAttention:
    """An attn2 processor that attaches the slot's prompt to the text states, then runs
    the processor it wraps: K, V = W cat(C, p) (concat) or W (C + p) (additive)."""

    def __init__(self, inner: Any, slot: PromptSlot, mode: str) -> None:
        self.inner, self.slot, self.mode = inner, slot, mode

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        p, states = self.slot.value, encoder_hidden_states
        if p is not None and states is not None:
            p = p.to(states.dtype).expand(states.shape[0], -1, -1)
            states = torch.cat([states, p], dim=1) if self.mode == "concat" else states + p
        return self.inner(attn, hidden_states, states, attention_mask, **kwargs)


@contextmanager
def prompt_attached(unet: UNet2DConditionModel, slot: PromptSlot, mode: str) -> Iterator[None]:
    """Wrap every cross-attention processor for the block; the originals come back after."""
    original = unet.attn_processors
    # set_attn_processor pops from the dict it gets, hence the copies
    unet.set_attn_processor({n: PromptedCrossAttention(q, slot, mode) if ".attn2." in n else q for n, q in original.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))


def initial_prompt(states: torch.Tensor, p: LearnablePromptParams, g: torch.Generator) -> torch.nn.Parameter:
    """Additive: zeros, so training starts from the plain model. Concat: random tokens at
    the text states' scale (identical tokens would get identical gradients forever)."""
    if p.mode == "additive":
        return torch.nn.Parameter(torch.zeros_like(states[:1]))
    noise = torch.randn((1, p.tokens, states.shape[-1]), generator=g).to(states)
    return torch.nn.Parameter(noise * states[0, 1:].std())


def prompted_eps(
    unet: UNet2DConditionModel, slot: PromptSlot, prompt: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor,
    states: torch.Tensor,
) -> torch.Tensor:
    """The UNet's prediction with `prompt` attached (None: without), in float32."""
    slot.value = prompt
    try:
        return unet(x_t.expand(states.shape[0], -1, -1, -1), t, encoder_hidden_states=states).sample.float()
    finally:
        slot.value = None


def original_eps(unet: UNet2DConditionModel, slot: PromptSlot, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The original model's predictions (no LoRA, no prompt) for each of `states`."""
    with torch.no_grad(), adapters_disabled(unet):
        return prompted_eps(unet, slot, None, x_t, t, states)


def removal_losses(
    unet: UNet2DConditionModel, slot: PromptSlot, prompt: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
    c_e: torch.Tensor, eps_e: torch.Tensor, eps_n: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of L_r (eq. 8) with the prompt held fixed: l_1 pulls the sanitized
    model on c_e to the original on c_n; l_2 keeps the concept reachable through p, so it
    is p, not the weights, that holds it."""
    l_1 = F.mse_loss(prompted_eps(unet, slot, None, x_t, t, c_e), eps_n)
    # eq. 8's target eps(c_e) (the slides' L_r line writes eps(c_n); eq. 8 and the lambda ablation agree on c_e)
    l_2 = F.mse_loss(prompted_eps(unet, slot, prompt.detach(), x_t, t, c_e), eps_e)
    return l_1, l_2


def learnable_prompts(pipe: StableDiffusionPipeline, concept: str, p: LearnablePromptParams) -> dict[str, list[float]]:
    """Add the LoRA to `pipe.unet` and train it with a learnable prompt to erase the prompt
    `concept`; the prompt is dropped at the end. Returns l_e, l_1, l_2 per iteration."""
    unet = pipe.unet
    params = add_lora(unet, p.lora_rank, VARIANTS[p.variant], seed=p.seed)
    sample_states = encode_prompts(pipe, [concept, ""])
    states = encode_prompts(pipe, [concept, p.anchor])
    g = torch.Generator().manual_seed(p.seed)
    prompt = initial_prompt(states, p, g)
    opt_model, opt_prompt = torch.optim.Adam(params, lr=p.lr), torch.optim.Adam([prompt], lr=p.prompt_lr)
    slot, log = PromptSlot(), {"l_e": [], "l_1": [], "l_2": []}
    with prompt_attached(unet, slot, p.mode):
        for i in tqdm(range(p.iterations), desc="learnable prompts", leave=False, mininterval=2):
            x_t, t = training_latent(pipe, sample_states, p.ddim_steps, p.sample_guidance, g)
            eps_e, eps_n = original_eps(unet, slot, x_t, t, states).chunk(2)
            # eq. 7: p_k -> p_k+1 on theta'_k; autograd.grad keeps its gradient off the LoRA
            l_e = F.mse_loss(prompted_eps(unet, slot, prompt, x_t, t, states[:1]), eps_e)
            check_finite(l_e, "learnable prompts (prompt update)", i)
            (prompt.grad,) = torch.autograd.grad(l_e, [prompt])
            opt_prompt.step()
            # eq. 8 with p_k+1: theta'_k -> theta'_k+1
            l_1, l_2 = removal_losses(unet, slot, prompt, x_t, t, states[:1], eps_e, eps_n)
            loss = l_1 + p.lam * l_2
            check_finite(loss, "learnable prompts (model update)", i)
            opt_model.zero_grad(set_to_none=True)
            loss.backward()
            opt_model.step()
            for key, value in zip(log, (l_e, l_1, l_2)):
                log[key].append(value.item())
    return log
