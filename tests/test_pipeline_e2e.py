"""End to end on the shipped shapes world with small budgets: pool -> erase, then the
LoRA goes into a fresh diffusers pipeline through `load_lora_weights`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dm2.core.config import load_params, parse_section
from dm2.core.io import fingerprint
from dm2.core.params import ModelsParams
from dm2.erasure.dark_miner import DM2Settings
from dm2.erasure.lora import load_lora_into
from dm2.erasure.params import CircumventParams, EraseParams, MineParams, PoolParams, VerifyParams
from dm2.models.clip import load_clip
from dm2.models.diffusion import encode_prompts, generate, load_pipeline
from stages.erase import erase
from stages.pool import make_pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_shipped_world_pool_erase_and_reload(params, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    models = parse_section(ModelsParams, params["models"], "models")
    pipe = load_pipeline(models.diffusion)
    clip = load_clip(models.clip_name, models.clip_pretrained)
    latents, images = make_pool(pipe, "a circle photo", PoolParams(size=4, steps=10, guidance=5.0, seed=1))
    small = {"epochs": 4}
    e = EraseParams(max_loops=2, lora_rank=8, seed=0)
    m = parse_section(MineParams, {**params["mine"], **small}, "mine")
    v = parse_section(VerifyParams, {**params["verify"], "tau": -1.0, "steps": 10}, "verify")
    cp = parse_section(CircumventParams, {**params["circumvent"], **small, "steps": 10}, "circumvent")
    s = DM2Settings(e, m, v, cp)
    state = erase(pipe, clip, latents, images, s, tmp_path, fingerprint(s, data=latents), "a circle photo")
    assert state.stop == "max_loops" and len(state.verified) == 2

    fresh = load_pipeline(models.diffusion)
    load_lora_into(fresh, tmp_path)
    cond = encode_prompts(fresh, ["a photo of a red ball"])
    out = generate(fresh, cond, seed=0, steps=10, guidance=5.0)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    with torch.no_grad():
        x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
        reloaded = fresh.unet(x, t, encoder_hidden_states=cond).sample
        trained = pipe.unet(x, t, encoder_hidden_states=cond).sample
        fresh.unet.disable_adapters()
        base = fresh.unet(x, t, encoder_hidden_states=cond).sample
    assert torch.allclose(reloaded, trained, atol=1e-5)
    assert not torch.allclose(reloaded, base, atol=1e-5)
