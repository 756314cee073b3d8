"""ESD, Erased Stable Diffusion (Gandikota et al., ICCV 2023), as a LoRA.

The adapted model's prediction for the concept prompt c is pulled to the original model's
negatively guided one, eps(x_t, "") - eta (eps(x_t, c) - eps(x_t, "")), on latents x_t the
original model itself produces from c (DDIM, stopped at a random step). ESD-x adapts the
cross-attention projections, ESD-u everything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from dm2.core.steps import check_finite
from dm2.erasure.lora import CROSS_ATTENTION, NON_CROSS_ATTENTION, Targets, adapters_disabled, add_lora
from dm2.erasure.params import ESDParams
from dm2.models.diffusion import encode_prompts

VARIANTS: dict[str, Targets] = {"x": CROSS_ATTENTION, "u": NON_CROSS_ATTENTION}


@torch.no_grad()
def sample_until(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    states: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    stop: int,
    guidance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided DDIM (eta = 0) on `states` = [cond, uncond] from `noise`, halted after `stop`
    of `steps` steps: the partly denoised x_t and its timestep t."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:stop]:
        x_in = scheduler.scale_model_input(x, t).repeat(2, 1, 1, 1)
        eps_c, eps_u = unet(x_in, t, encoder_hidden_states=states).sample.chunk(2)
        x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return x, scheduler.timesteps[stop]


def training_latent(
    pipe: StableDiffusionPipeline, states: torch.Tensor, steps: int, guidance: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (x_t, t) as ESD trains on: the ORIGINAL model samples from `states` = [c, ""]
    down to a random one of `steps` DDIM steps. Scheduler is a copy so the pipeline's stays put."""
    unet = pipe.unet
    stop = int(torch.randint(0, steps, (1,), generator=g))
    size = unet.config.sample_size
    noise = torch.randn((1, unet.config.in_channels, size, size), generator=g).to(unet.device, unet.dtype)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with adapters_disabled(unet):
        return sample_until(unet, scheduler, states, noise, steps, stop, guidance)


def esd_loss(unet: UNet2DConditionModel, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor, eta: float) -> torch.Tensor:
    """MSE between the adapted model's eps(x_t, c) and the original's negatively guided
    target; `states` = [c, ""]."""
    with torch.no_grad(), adapters_disabled(unet):
        eps_c, eps_u = unet(x_t.repeat(2, 1, 1, 1), t, encoder_hidden_states=states).sample.chunk(2)
    target = eps_u - eta * (eps_c - eps_u)
    new = unet(x_t, t, encoder_hidden_states=states[:1]).sample
    return F.mse_loss(new.float(), target.float())


def esd(pipe: StableDiffusionPipeline, concept: str, p: ESDParams) -> dict[str, list[float]]:
    """Add the ESD LoRA to `pipe.unet` and train it to erase the prompt `concept` (e.g. the
    concept's name); returns the loss per iteration."""
    unet = pipe.unet
    params = add_lora(unet, p.lora_rank, VARIANTS[p.variant], seed=p.seed)
    states = encode_prompts(pipe, [concept, ""])
    opt = torch.optim.Adam(params, lr=p.lr)
    g = torch.Generator().manual_seed(p.seed)
    losses = []
    for i in tqdm(range(p.iterations), desc=f"esd-{p.variant}", leave=False, mininterval=2):
        x_t, t = training_latent(pipe, states, p.ddim_steps, p.sample_guidance, g)
        loss = esd_loss(unet, x_t, t, states, p.eta)
        check_finite(loss, f"esd-{p.variant}", i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"loss": losses}
