import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dm2.core.config import load_params, parse_section
from dm2.judges.geometric import DEFAULT_CLASSES, GeometricJudge
from dm2.world.hard_renders import render_hard
from dm2.world.params import HardRanges, WorldParams
from dm2.world.render import BACKGROUNDS, DEFAULT_SYNONYMS, EMPTY, TEXTURES, WorldSpec, sample_world
from dm2.world.splits import world_split

torch.set_num_threads(1)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# One difficulty at a time, everything else clean: contrast, size or blur.
SINGLE_DIFFICULTY = {
    "faint": HardRanges(contrast=(0.3, 0.3), canvas=(24, 32), blur=(0.0, 0.0), noise=(0.0, 0.0), empty_fraction=0.0),
    "small": HardRanges(contrast=(1.0, 1.0), canvas=(12, 12), blur=(0.0, 0.0), noise=(0.0, 0.0), empty_fraction=0.0),
    "blurred": HardRanges(contrast=(1.0, 1.0), canvas=(24, 32), blur=(1.2, 1.2), noise=(0.0, 0.0), empty_fraction=0.0),
}


@pytest.fixture(scope="module")
def judge() -> GeometricJudge:
    return GeometricJudge()


def called(judge: GeometricJudge, images: torch.Tensor) -> list[str]:
    return [judge.classes["shape"][i] for i in judge.probs(images)["shape"].argmax(-1).tolist()]


def test_agrees_with_the_true_shape_on_clean_heldout_renders(judge):
    world = parse_section(WorldParams, load_params(PARAMS)["world"], "world")
    images, samples = world_split(dataclasses.replace(world, heldout_images=100), "heldout")
    agree = np.mean([p == s.shape for p, s in zip(called(judge, images), samples)])
    assert agree >= 0.95, agree


def test_striped_shapes_on_black_keep_their_outline(judge):
    """Their dark bands are near the background's colour: cut at the usual threshold, a
    striped circle falls into bands with a notched rim and reads as a square."""
    images, samples = sample_world(WorldSpec(backgrounds=("black",), textures=("striped",)), 40, seed=1)
    said = called(judge, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    assert sum(a == s.shape for a, s in zip(said, samples)) >= 39, list(zip([s.shape for s in samples], said))


def test_names_faint_small_and_blurred_shapes(judge):
    misses = []
    for condition, ranges in SINGLE_DIFFICULTY.items():
        for shape, words in DEFAULT_SYNONYMS.items():
            image = render_hard(WorldSpec(synonyms={shape: words}), 1, seed=0, ranges=ranges)[0]
            if (got := called(judge, image)[0]) != shape:
                misses.append(f"{condition} {shape} called {got}")
    # A ~7-px shape covers ~40 pixels, where a square and a cross (or a circle and a square)
    # differ by a pixel or two: about 1 in 10 of them is misnamed, so allow one miss.
    assert len(misses) <= 1, misses


def test_plain_noisy_background_is_none(judge):
    generator = torch.Generator().manual_seed(0)
    backgrounds = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255
    images = backgrounds[:, :, None, None].expand(-1, -1, 32, 32).repeat(4, 1, 1, 1)
    images = (images + 0.03 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    assert called(judge, images) == [EMPTY] * len(images)


@pytest.mark.parametrize("classes", [DEFAULT_CLASSES, ("star", "circle")])
def test_probs_rows_sum_to_one_over_the_classes(classes):
    judge = GeometricJudge(classes)
    images = torch.cat([world_split(WorldParams(heldout_images=4, colours=["red"], backgrounds=["black"],
                                                textures=["plain"]), "heldout")[0], torch.full((2, 3, 32, 32), 0.5)])  # fmt: skip
    probs = judge.probs(images)
    textures = (*TEXTURES, EMPTY) if EMPTY in classes else TEXTURES
    assert judge.classes == {"shape": classes, "texture": textures}
    assert {head: p.shape for head, p in probs.items()} == {"shape": (6, len(classes)), "texture": (6, len(textures))}
    for p in probs.values():
        assert torch.allclose(p.sum(-1), torch.ones(6), atol=1e-5) and (p >= 0).all()


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        GeometricJudge(("circle", "hexagon"))
