"""Stable Diffusion helpers every stage shares: loading (world or real), prompt encoding,
VAE round trips and the classifier-free-guided DDIM sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel
from transformers.masking_utils import create_causal_mask

from dm2.core.config import InputError
from dm2.core.params import is_local_path
from dm2.core.sharding import ShardStore, run_batches

# Stable Diffusion v1's noise schedule (its scheduler config), so the world behaves like the real model.
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
)


class Guide(Protocol):
    """Sampling-time steering (SLD, `dm2.erasure.sld`): `reset` at the start of every `sample`
    call, then per step the conditional noise prediction to use instead of `eps_cond`."""

    def reset(self) -> None: ...

    def key(self) -> str:
        """What identifies its steering (settings, concept states), for cached images."""
        ...

    def __call__(
        self, step: int, x_in: torch.Tensor, t: torch.Tensor, eps_cond: torch.Tensor, eps_uncond: torch.Tensor
    ) -> torch.Tensor: ...


def load_pipeline(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A local pipeline folder (the shipped world) or a hub id such as
    `CompVis/stable-diffusion-v1-4` (needs the weights in the local HF cache or network)."""
    if is_local_path(model):
        folder = Path(model).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"models.diffusion: {model} is not a diffusers pipeline folder (no model_index.json)")
        model = str(folder)  # an absolute path is never taken for a hub id
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, use_safetensors=True, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, EnvironmentError) as e:  # diffusers' word for missing or pickle-only weights
        raise InputError(f"models.diffusion: {model}: {' '.join(str(e).split())[:300]} (weights load as safetensors only)") from None
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
    return pipe.text_encoder(ids)[0].to(pipe.text_encoder.dtype)  # float32 out of a bf16 autocast too


def encode_token_embeddings(text_encoder: CLIPTextModel, embeds: torch.Tensor) -> torch.Tensor:
    """Text-encoder states (N x L x width) from token embeddings (N x L x width, before
    position embeddings): `text_encoder(input_ids)[0]` after its lookup, so that soft or
    projected tokens get gradients."""
    hidden = text_encoder.embeddings(inputs_embeds=embeds)
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None)
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden).to(text_encoder.dtype)


def prompt_token_embeddings(pipe: StableDiffusionPipeline, prompt: str) -> torch.Tensor:
    """The input token embeddings (1 x 77 x width) of `prompt`, BOS first, padded."""
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    return pipe.text_encoder.get_input_embeddings()(ids.to(pipe.text_encoder.device)).detach()


def free_embedding_states(pipe: StableDiffusionPipeline, c: torch.Tensor, template: str = "{c}") -> torch.Tensor:
    """Text-encoder states (N x 77 x width) of free token embeddings `c` (N x L x width):
    the sequence BOS, c_1..c_L, then EOS / padding as for any prompt, so a mined embedding
    is conditioned on exactly like a prompt of L words. `template` ("... {c} ...") puts the
    words around it in their places, e.g. BOS, a, photo, of, a, c_1..c_L, EOS."""
    n, length, _ = c.shape
    tokenizer, max_len = pipe.tokenizer, pipe.tokenizer.model_max_length
    before, after = (tokenizer(part.strip(), add_special_tokens=False).input_ids if part.strip() else [] for part in template.split("{c}"))
    if len(before) + length + len(after) > max_len - 2:
        raise ValueError(
            f"mine.tokens: {length} free tokens and the {len(before) + len(after)} of mine.template do not fit {max_len - 2} text positions"
        )
    table = pipe.text_encoder.get_input_embeddings()
    head = torch.tensor([tokenizer.bos_token_id, *before], device=c.device)
    tail = torch.tensor([*after] + [tokenizer.eos_token_id] * (max_len - 1 - len(before) - length - len(after)), device=c.device)
    seq = torch.cat([table(head).to(c.dtype)[None].expand(n, -1, -1), c, table(tail).to(c.dtype)[None].expand(n, -1, -1)], dim=1)
    return encode_token_embeddings(pipe.text_encoder, seq)


@torch.no_grad()
def noised(scheduler: DDIMScheduler, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, the noise, t): `x0` noised to a random training timestep per sample, drawn from `g`."""
    noise = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g).to(x0.device)
    return scheduler.add_noise(x0, noise, t), noise, t


def images_to_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N x 3 x H x W) to scaled latents (posterior mean)."""
    posterior = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
    return (posterior.mean * vae.config.scaling_factor).to(vae.dtype)


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
    guide: Guide | None = None,
    batch_branches: bool | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) with classifier-free guidance.

    `guide` (SLD) is reset, then steers the conditional prediction of every step before
    the guidance is applied. `batch_branches`: the conditional and unconditional passes
    as one UNet call of 2N; None: on a GPU, where one larger call is faster. On CPU they
    stay two calls, because a batch of 2N does not reproduce their float results bit for
    bit (the world's results repeat exactly). Returns the final scaled latents.
    """
    if uncond.shape[0] == 1 and cond.shape[0] > 1:
        uncond = uncond.expand(cond.shape[0], -1, -1)
    if guide is not None:
        guide.reset()
    both = guidance != 1.0 or guide is not None  # a guide needs the unconditional branch
    if batch_branches is None:
        batch_branches = cond.device.type == "cuda"
    batch_branches = batch_branches and both and cond.shape[1:] == uncond.shape[1:]
    stacked = torch.cat([uncond, cond]) if batch_branches else None
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            if batch_branches:
                eps_u, eps = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=stacked).sample.to(x.dtype).chunk(2)
            else:
                eps = unet(x_in, t, encoder_hidden_states=cond).sample.to(x.dtype)  # guidance in float32 under autocast
                eps_u = unet(x_in, t, encoder_hidden_states=uncond).sample.to(x.dtype) if both else None
            if guide is not None:
                eps = guide(i, x_in, t, eps, eps_u)
            if guidance != 1.0:
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
    guide: Guide | None = None,
    noise: torch.Tensor | None = None,
    shards: ShardStore | None = None,
) -> torch.Tensor:
    """Scaled latents sampled for conditioning `cond` (N x L x width). The noise for all
    N samples is drawn at once from `seed`, so results do not depend on `batch_size`;
    `noise` (N x C x h x w) instead gives each sample its own starting latents. With
    `shards`, finished batches are kept there and the batches are spread over the launched
    processes (`dm2.core.sharding`): the same batches, so the same latents."""
    uncond = encode_prompts(pipe, [""])
    noise = initial_noise(cond.shape[0], pipe.unet, seed) if noise is None else noise.to(pipe.unet.device, pipe.unet.dtype)
    starts = range(0, cond.shape[0], batch_size)

    def batch(i: int) -> torch.Tensor:
        part = slice(starts[i], starts[i] + batch_size)
        return sample(pipe.unet, pipe.scheduler, cond[part], uncond, noise[part], steps, guidance, guide)

    if shards is None:
        return torch.cat([batch(i) for i in range(len(starts))])
    return run_batches(len(starts), batch, shards, what="generate").to(noise.device)


def generate(
    pipe: StableDiffusionPipeline,
    cond: torch.Tensor,
    seed: int,
    steps: int,
    guidance: float,
    guide: Guide | None = None,
    noise: torch.Tensor | None = None,
    shards: ShardStore | None = None,
) -> torch.Tensor:
    """Images in [0, 1] for conditioning `cond`; see `generate_latents`."""
    return latents_to_images(pipe.vae, generate_latents(pipe, cond, seed, steps, guidance, guide=guide, noise=noise, shards=shards))
