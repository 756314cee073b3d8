"""Stable Diffusion helpers every stage shares: loading (world or real), prompt encoding,
VAE round trips and the classifier-free-guided DDIM sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

def load_pipeline(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A local pipeline folder (the shipped world) or a hub id such as
    `CompVis/stable-diffusion-v1-4` (needs the weights in the local HF cache or network)."""
    looks_local = model.startswith((".", "/")) or Path(model).parts[:1] == ("artifacts",)
    if looks_local and not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"models.diffusion: {model} is not a diffusers pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(
        model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    # DDIM with SD's schedule everywhere: the paper leaves the sampler open.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    return pipe.to(device)


@torch.no_grad()
def encode_prompts(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (N x 77 x width), as Stable Diffusion conditions on them."""
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


@torch.no_grad()
def images_to_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N x 3 x H x W) to scaled latents (posterior mean)."""
    posterior = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
    return posterior.mean * vae.config.scaling_factor


@torch.no_grad()
def latents_to_images(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents to images in [0, 1]."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


def initial_noise(n: int, unet: UNet2DConditionModel, seed: int) -> torch.Tensor:
    """Starting latents fixed by `seed`, drawn on CPU so every device gets the same ones."""
    g = torch.Generator("cpu").manual_seed(seed)
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return torch.randn(shape, generator=g).to(unet.device, unet.dtype)


def sample(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    latents: torch.Tensor,
    steps: int,
    guidance: float,
    unet_call: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) with classifier-free guidance.

    `cond` and `uncond` may differ in token length (a mined 32-token embedding against
    the 77-token empty prompt), so the two branches run as separate UNet calls.
    `unet_call(latents, t, states)` replaces the plain UNet call when a method steers
    sampling (SLD). Returns the final scaled latents.
    """
    if uncond.shape[0] == 1 and cond.shape[0] > 1:
        uncond = uncond.expand(cond.shape[0], -1, -1)
    predict = unet_call or (lambda x, t, states: unet(x, t, encoder_hidden_states=states).sample)
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            eps = predict(x_in, t, cond)
            if guidance != 1.0:
                eps_u = predict(x_in, t, uncond)
                eps = eps_u + guidance * (eps - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
    return x


def generate_latents(
    pipe: StableDiffusionPipeline,
    cond: torch.Tensor,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int = 64,
) -> torch.Tensor:
    """Scaled latents sampled for conditioning `cond` (N x L x width). The noise for all
    N samples is drawn at once from `seed`, so results do not depend on `batch_size`."""
    uncond = encode_prompts(pipe, [""])
    noise = initial_noise(cond.shape[0], pipe.unet, seed)
    return torch.cat(
        [
            sample(pipe.unet, pipe.scheduler, cond[i : i + batch_size], uncond, noise[i : i + batch_size], steps, guidance)
            for i in range(0, cond.shape[0], batch_size)
        ]
    )


def generate(pipe: StableDiffusionPipeline, cond: torch.Tensor, seed: int, steps: int, guidance: float) -> torch.Tensor:
    """Images in [0, 1] for conditioning `cond`; see `generate_latents`."""
    return latents_to_images(pipe.vae, generate_latents(pipe, cond, seed, steps, guidance))
