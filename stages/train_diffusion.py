"""Stage train_diffusion: train the world's Stable Diffusion (VAE, then text encoder and
UNet together) on rendered image-caption pairs and save a diffusers pipeline folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from dm2.config import load_params, parse_section
from dm2.io import read_json, write_json
from dm2.params import UnetParams, VaeParams, WorldParams
from dm2.paths import TRAIN_DIFFUSION_METRICS, WORLD_SD
from dm2.tokenizer import build_clip_tokenizer
from dm2.training import train_loop, world_split
from dm2.world_models import (
    assemble_pipeline,
    world_scheduler,
    world_text_encoder,
    world_unet,
    world_vae,
)



def train_vae(images: torch.Tensor, p: VaeParams, seed: int):
    torch.manual_seed(seed)
    vae = world_vae()
    vae.train()
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        return F.mse_loss(recon, x) + p.kl_weight * posterior.kl().mean() / x[0].numel()

    losses = train_loop(list(vae.parameters()), loss_fn, len(images), p, seed, "vae")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 512] * 2 - 1).latent_dist.mean for i in range(0, len(images), 512)])
    # SD scales latents to unit variance; compute the factor for this VAE.
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, latents * vae.config.scaling_factor, losses


def train_text_unet(latents: torch.Tensor, captions: list[str], p: UnetParams, seed: int):
    torch.manual_seed(seed)
    text_encoder = world_text_encoder()
    unet = world_unet(tuple(p.channels))
    scheduler = world_scheduler()
    tokenizer = build_clip_tokenizer()
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(seed + 2)
    text_encoder.train()
    unet.train()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x0 = latents[idx]
        batch_ids = ids[idx].clone()
        drop = torch.rand(len(idx), generator=g) < p.caption_dropout  # unconditional for CFG
        batch_ids[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        states = text_encoder(batch_ids)[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        return F.mse_loss(pred, noise)

    params = list(text_encoder.parameters()) + list(unet.parameters())
    losses = train_loop(params, loss_fn, len(latents), p, seed, "unet+text")
    return text_encoder.eval(), unet.eval(), losses


def train_world_diffusion(world: WorldParams, vae_p: VaeParams, unet_p: UnetParams) -> tuple[StableDiffusionPipeline, dict]:
    start = time.time()
    images, samples = world_split(world, "train")
    vae, latents, vae_losses = train_vae(images, vae_p, world.seed)
    vae_seconds = time.time() - start
    text_encoder, unet, unet_losses = train_text_unet(latents, [s.caption for s in samples], unet_p, world.seed)
    pipe = assemble_pipeline(vae, text_encoder, unet)
    metrics = {
        "vae_final_loss": sum(vae_losses[-100:]) / len(vae_losses[-100:]),
        "unet_final_loss": sum(unet_losses[-100:]) / len(unet_losses[-100:]),
        "vae_seconds": round(vae_seconds, 1),
        "seconds": round(time.time() - start, 1),
    }
    return pipe, metrics


def save_pipeline_fp16(pipe: StableDiffusionPipeline, out_dir: Path) -> None:
    """Weights are stored in float16 to keep the shipped world small. diffusers loads the
    UNet and VAE as float32 when no dtype is given, transformers the text encoder in the
    dtype its config names: the config says float32, so a plain `from_pretrained(out_dir)`
    gives one dtype throughout."""
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)
    config = out_dir / "text_encoder" / "config.json"
    write_json({**read_json(config), "dtype": "float32"}, config)


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    vae_p = parse_section(VaeParams, params["train_vae"], "train_vae")
    unet_p = parse_section(UnetParams, params["train_unet"], "train_unet")
    pipe, metrics = train_world_diffusion(world, vae_p, unet_p)
    save_pipeline_fp16(pipe, WORLD_SD)
    write_json(metrics, TRAIN_DIFFUSION_METRICS)
    print(metrics)


if __name__ == "__main__":
    main()
