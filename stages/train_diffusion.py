"""Stage train_diffusion: train the world's Stable Diffusion (VAE, then text encoder and
UNet together) on rendered image-caption pairs and save a diffusers pipeline folder."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dm2.core.config import load_params, parse_section
from dm2.core.io import read_json, write_json
from dm2.core.paths import TRAIN_DIFFUSION_METRICS, WORLD_SD
from dm2.training.world_models import train_world_diffusion
from dm2.world.params import UnetParams, VaeParams, WorldParams


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
