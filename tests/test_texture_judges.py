"""Both texture judges of the shapes world on fixed renders (the non-learned pattern judge,
the shipped world judge's texture head), and a texture through the shipped VAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dm2.judges.geometric import GeometricJudge
from dm2.judges.pattern import PatternJudge
from dm2.judges.registry import load_judge
from dm2.models.diffusion import images_to_latents, latents_to_images, load_pipeline
from dm2.world.hard_renders import render_hard
from dm2.world.params import HardRanges
from dm2.world.render import EMPTY, TEXTURES, WorldSpec, sample_world

ROOT = Path(__file__).resolve().parents[1]
N = 30  # renders per texture


def renders(texture: str, seed: int = 5) -> torch.Tensor:
    images, _ = sample_world(WorldSpec(textures=(texture,)), N, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def said(judge, images: torch.Tensor) -> list[str]:
    return [judge.classes["texture"][i] for i in judge.probs(images)["texture"].argmax(-1).tolist()]


@pytest.mark.parametrize("texture", TEXTURES)
def test_pattern_judge_calls_clean_renders_by_their_texture(texture):
    calls = said(PatternJudge(), renders(texture))
    assert calls.count(texture) >= N - 1, calls


@pytest.mark.parametrize("texture", TEXTURES)
def test_shipped_world_judge_calls_clean_renders_by_their_texture(texture):
    judge = load_judge("world", str(ROOT / "artifacts/world/judge.safetensors"))
    calls = said(judge, renders(texture))
    assert calls.count(texture) >= N - 1, calls


def test_pattern_judge_sees_no_texture_in_noise_or_on_an_empty_background():
    noisy = HardRanges(contrast=(1.0, 1.0), canvas=(30, 32), blur=(0.0, 0.0), noise=(0.06, 0.06), empty_fraction=0.0)
    images, samples, _ = render_hard(WorldSpec(textures=("plain",)), 20, seed=3, ranges=noisy)
    assert said(PatternJudge(), images).count("plain") >= 18
    background = torch.full((2, 3, 32, 32), 0.5) + 0.05 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert said(PatternJudge(), background) == [EMPTY, EMPTY]
    assert said(PatternJudge(with_empty=False), background) == ["plain", "plain"]


def test_probabilities_sum_to_one_and_the_geometric_judge_carries_the_texture_head():
    images = torch.cat([renders(t)[:4] for t in TEXTURES])
    probs = PatternJudge().probs(images)["texture"]
    assert torch.allclose(probs.sum(-1), torch.ones(len(images)), atol=1e-6)
    geometric = GeometricJudge()
    assert geometric.classes["texture"] == (*TEXTURES, EMPTY)
    assert torch.equal(geometric.probs(images)["texture"], probs)


@pytest.mark.parametrize("texture", TEXTURES)
def test_a_texture_survives_the_shipped_vae(texture):
    vae = load_pipeline(str(ROOT / "artifacts/world/sd")).vae
    with torch.no_grad():
        back = latents_to_images(vae, images_to_latents(vae, renders(texture, seed=11)))
    assert said(PatternJudge(), back).count(texture) >= N - 3
