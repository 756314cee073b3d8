"""An SD-v1.4-shaped test bed: Stable Diffusion v1.4's exact architecture (UNet, CLIP
ViT-L/14 text encoder, VAE, scheduler) and an open_clip ViT-L-14, all with random weights,
written where the `models` params can load them offline. It proves the pipeline at SD's
scale (shapes, memory, cost) where no real weights can be downloaded; its images are noise.

    python -m dm2.models.testbed artifacts/sd_testbed [--latent-size 32]

writes `sd/` (a diffusers folder), `open_clip_vit_l14.safetensors` and `preset.yaml`,
an overlay for `python -m dm2.presets` that points the models params at them and cuts
every budget to a few steps (docs/real-models.md, "The SD-shaped test bed").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from dm2.core.weights import save_float16
from dm2.models.diffusion import SD_SCHEDULE
from dm2.models.tokenizer import MAX_LENGTH, build_clip_tokenizer

CLIP_NAME = "ViT-L-14"
CLIP_FILE = "open_clip_vit_l14.safetensors"
SD_LATENT_SIZE = 64  # SD v1.4: 512 x 512 images

# CompVis/stable-diffusion-v1-4's component configs (its unet / text_encoder / vae
# config.json), the keys that set the architecture; its noise schedule is SD_SCHEDULE.
SD14_UNET = dict(
    sample_size=SD_LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    downsample_padding=1,
    mid_block_scale_factor=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    center_input_sample=False,
)
SD14_TEXT_ENCODER = dict(  # openai/clip-vit-large-patch14's text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    # SD v1.4's file says 0 / 2 / 1 (a transformers legacy); these are the tokenizer's real ids
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SD14_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)


def sd14_components(latent_size: int = SD_LATENT_SIZE, seed: int = 0) -> dict[str, torch.nn.Module]:
    """UNet, text encoder and VAE of SD v1.4 with random weights (diffusers' and
    transformers' own initialisation, seeded). `latent_size` only sets the UNet's default
    sample size (the images' side / 8): 32 makes CPU runs 4x cheaper, the weights are the same."""
    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**{**SD14_UNET, "sample_size": latent_size}),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD14_TEXT_ENCODER)),
        "vae": AutoencoderKL(**SD14_VAE),
    }


def write_testbed(out: str | Path, latent_size: int = 32, seed: int = 0) -> Path:
    """Write the test bed under `out` (weights in float16, as SD's fp16 variant; the
    pipeline loads them in float32) and return `out`."""
    out = Path(out)
    parts = sd14_components(latent_size, seed)
    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=build_clip_tokenizer(),
        scheduler=PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True),  # SD v1.4 ships PNDM; stages use DDIM
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out / "sd", safe_serialization=True)
    del pipe, parts
    torch.manual_seed(seed)
    clip = open_clip.create_model(CLIP_NAME, pretrained=None)
    save_float16(clip.state_dict(), out / CLIP_FILE, metadata={"model": CLIP_NAME})
    (out / "preset.yaml").write_text(PRESET.format(out=out.as_posix()))
    return out


# Cut budgets: every stage runs, at a few steps, with SD's shapes. The world judge and the
# geometric judge score the (noise) images, which are resized to their inputs.
PRESET = """\
# SD-v1.4-shaped test bed (dm2/models/testbed.py): random weights, budgets cut to a few steps.
# Apply in a scratch copy of the repository: python -m dm2.presets {out}/preset.yaml
models:
  diffusion: {out}/sd
  clip_name: ViT-L-14
  clip_pretrained: {out}/open_clip_vit_l14.safetensors
device: auto
pool:
  size: 3
  steps: 2
erase:
  max_loops: 2
  lora_rank: 8
  cpu_threads: 2          # this project's 2-core machines; set it to your cores
mine:
  epochs: 2
  lr_drop_epoch: 1
  tokens: 8
verify:
  tau: -1.0
  steps: 2
  samples: 1
  references: 1
circumvent:
  epochs: 2
  lr_drop_epoch: 1
  steps: 2
  images: 1
  preserve: [a red square on a black background]
baselines:
  uce:
    preserve: [square]
compare:
  methods: [uce]
evaluate:
  images_per_prompt: 1
  n_prompts: 2
  n_other: 2
  n_heldout: 2
  steps: 2
  grid_images: 2
attacks:
  n_prompts: 2
  steps: 2
  batch_size: 2
  restarts: 1
  ideal_prompts: false
  cce:
    images: 2
    candidates: 2
    budgets: [1, 2]
    batch_size: 2
  p4d:
    budgets: [1, 2]
  unlearndiff:
    budgets: [1, 2]
  ring_a_bell:
    population: 4
    budgets: [1, 2]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (e.g. artifacts/sd_testbed)")
    parser.add_argument("--latent-size", type=int, default=32, help="UNet sample size; SD v1.4: 64 (512 px)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write_testbed(args.out, args.latent_size, args.seed)}")


if __name__ == "__main__":
    main()
