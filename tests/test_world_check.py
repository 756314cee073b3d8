"""Stage world_check on tiny models: what it measures per head and texture, and its gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from dm2.core.config import InputError
from dm2.core.params import ModelsParams
from dm2.judges.world import WorldJudge, save_world_judge
from dm2.world.params import HardRanges, WorldCheckParams, WorldParams
from dm2.world.render import COLOURS, DEFAULT_SYNONYMS, EMPTY, TEXTURE_WORDS, TEXTURES
from stages.world_check import check_world, gate, texture_prompts

ROOT = Path(__file__).resolve().parents[1]
WORLD = WorldParams(
    heldout_images=24, colours=list(COLOURS), backgrounds=["black", "white"], textures=list(TEXTURES), empty_fraction=0.1
)


def test_texture_prompts_name_their_texture_and_no_other():
    rows = texture_prompts(WORLD)
    assert {t for _, t in rows} == set(TEXTURES)
    for prompt, texture in rows:
        words = set(prompt.split())
        assert words & set(TEXTURE_WORDS[texture])
        assert not words & {w for t, ws in TEXTURE_WORDS.items() if t != texture for w in ws}
    assert len({p for p, _ in rows}) == len(rows)


@pytest.fixture
def tiny_world(tiny_pipe, tmp_path):
    """A world of untrained models: a random UNet draws no shape and no texture."""
    tiny_pipe.save_pretrained(tmp_path / "sd")
    judge = WorldJudge([*DEFAULT_SYNONYMS, EMPTY], list(COLOURS), list(TEXTURES), width=8)
    save_world_judge(judge, tmp_path / "judge.safetensors")
    return ModelsParams(
        diffusion=str(tmp_path / "sd"),
        clip_name="world-clip",
        clip_pretrained=str(ROOT / "artifacts/world/clip.safetensors"),
        judge="world",
        judge_path=str(tmp_path / "judge.safetensors"),
    )


def test_world_check_refuses_a_world_that_draws_no_texture(tiny_world, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped world's size is reported too
    p = WorldCheckParams(images_per_prompt=1, steps=2, guidance=5.0, seed=0, hard_images=20, hard=HardRanges())
    metrics = check_world(WORLD, tiny_world, p, "cpu")

    assert set(metrics["generated_texture_rate"]) == {"world", "geometric"}
    for rates in (*metrics["generated_texture_rate"].values(), *metrics["vae_texture_retention"].values()):
        assert set(rates) == set(TEXTURES)
    assert set(metrics["judges"]["world"]) == {"shape", "colour", "texture"}
    assert set(metrics["judges"]["geometric"]) == {"shape", "texture"}
    # the world judge's texture head has no class for an empty image: those are left out
    world_texture = metrics["judges"]["world"]["texture"]["clean_heldout"]["confusion"]
    geometric_texture = metrics["judges"]["geometric"]["texture"]["clean_heldout"]["confusion"]
    assert EMPTY not in world_texture and EMPTY in geometric_texture
    assert sum(sum(row.values()) for row in geometric_texture.values()) == WORLD.heldout_images
    assert sum(sum(row.values()) for row in world_texture.values()) == WORLD.heldout_images - sum(geometric_texture[EMPTY].values())
    assert metrics["generated_texture_images"] == len(texture_prompts(WORLD))

    assert min(metrics["generated_texture_rate"]["geometric"].values()) < 0.9  # random weights draw no texture
    with pytest.raises(InputError, match=r"by the geometric judge.*world_check.min_drawn: 0.9") as e:
        gate(metrics, 0.9)
    assert "\n" not in str(e.value)
    gate(metrics, 0.0)  # a gate at 0 lets any world through


def test_gate_names_each_undrawn_concept():
    rates = {"world": {"circle": 1.0, "star": 0.5}, "geometric": {"circle": 0.95, "star": 0.92}}
    textures = {"world": {"plain": 1.0, "striped": 0.2}, "geometric": {"plain": 0.99, "striped": 0.95}}
    metrics = {"generated_accuracy_by_shape_by_judge": rates, "generated_texture_rate": textures}
    with pytest.raises(InputError) as e:
        gate(metrics, 0.9)
    said = str(e.value)
    assert "star in 50.0% of its images by the world judge" in said and "striped in 20.0%" in said
    assert "circle" not in said and "plain" not in said
