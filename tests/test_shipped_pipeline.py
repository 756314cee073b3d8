"""The shipped world pipeline loads as a plain diffusers user loads it (no dtype given),
with and without an erasure LoRA; the project's loader takes safetensors only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from dm2.core.config import InputError
from dm2.erasure.lora import LORA_FILE, add_lora, save_lora
from dm2.models.diffusion import load_pipeline

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "world" / "sd"


def _sample(pipe: StableDiffusionPipeline) -> torch.Tensor:
    out = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0))
    return out.images


def test_plain_from_pretrained_runs_with_and_without_lora(tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, safety_checker=None, requires_safety_checker=False)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    plain = _sample(pipe)
    assert plain.shape == (1, 3, 32, 32) and torch.isfinite(plain).all()

    # a LoRA as the erase stage writes it, with non-zero B so it changes the output
    writer = load_pipeline(str(SHIPPED))
    torch.manual_seed(0)
    for p in add_lora(writer.unet, 2):
        torch.nn.init.normal_(p, std=0.5)
    save_lora(writer.unet, tmp_path)
    pipe.load_lora_weights(tmp_path, weight_name=LORA_FILE)  # offline diffusers wants the file named
    erased = _sample(pipe)
    assert torch.isfinite(erased).all() and not torch.allclose(plain, erased)


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(SHIPPED, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(unet), folder / "unet" / "diffusion_pytorch_model.bin")  # written only: never read back here
    unet.unlink()
    with pytest.raises(InputError, match=rf"models\.diffusion: {folder}: .*safetensors"):
        load_pipeline(str(folder))
