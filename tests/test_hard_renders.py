"""Hard renders: deterministic, labelled, and as faint / small / blurred as asked."""

from __future__ import annotations

import pytest
import torch

from dm2.core.config import ParamsError, parse_section
from dm2.world.hard_renders import render_hard
from dm2.world.params import HardRanges
from dm2.world.render import BACKGROUNDS, EMPTY, WorldSpec

CLEAN = dict(blur=(0.0, 0.0), noise=(0.0, 0.0), empty_fraction=0.0)


def foreground(images: torch.Tensor, backgrounds: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the largest colour distance to its background, and how many pixels differ."""
    bg = torch.tensor([BACKGROUNDS[b] for b in backgrounds], dtype=torch.float32).view(-1, 3, 1, 1) / 255
    distance = (images - bg).norm(dim=1)
    return distance.flatten(1).max(1).values, (distance > 0.05).flatten(1).sum(1)


def test_same_seed_same_renders_and_labels():
    a, sa, ca = render_hard(WorldSpec(), 12, seed=3)
    b, sb, cb = render_hard(WorldSpec(), 12, seed=3)
    assert torch.equal(a, b) and sa == sb and ca == cb
    assert a.shape == (12, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, render_hard(WorldSpec(), 12, seed=4)[0])


def test_contrast_scales_the_colour_distance():
    full, s_full, _ = render_hard(WorldSpec(), 20, seed=1, ranges=HardRanges(contrast=(1.0, 1.0), canvas=(32, 32), **CLEAN))
    faint, s_faint, _ = render_hard(WorldSpec(), 20, seed=1, ranges=HardRanges(contrast=(0.25, 0.25), canvas=(32, 32), **CLEAN))
    assert [s.shape for s in s_full] == [s.shape for s in s_faint]
    peak_full, _ = foreground(full, [s.background for s in s_full])
    peak_faint, _ = foreground(faint, [s.background for s in s_faint])
    assert torch.allclose(peak_faint, 0.25 * peak_full, atol=0.01)


def test_small_canvas_draws_small_shapes_anywhere():
    images, samples, made = render_hard(WorldSpec(), 30, seed=2, ranges=HardRanges(canvas=(10, 10), contrast=(1.0, 1.0), **CLEAN))
    _, area = foreground(images, [s.background for s in samples])
    assert area.max() <= 64 and area.min() >= 8  # about 6 px across: far below the world's 15-22 px
    assert all(m.diameter == pytest.approx(5.8) for m in made)


def test_empty_renders_are_labelled_none():
    images, samples, made = render_hard(WorldSpec(), 40, seed=5, ranges=HardRanges(empty_fraction=0.5, blur=(0.0, 0.0), noise=(0.0, 0.0)))
    empty = [i for i, s in enumerate(samples) if s.shape == EMPTY]
    assert 5 < len(empty) < 35 and all(made[i].diameter == 0 for i in empty)
    peak, _ = foreground(images[empty], [samples[i].background for i in empty])
    assert peak.max() < 0.01


@pytest.mark.parametrize("bad, key", [({"contrast": [0.5, 0.2]}, "contrast"), ({"canvas": [2, 32]}, "canvas"), ({"blur": [0.0]}, "blur")])
def test_bad_ranges_name_the_key(bad, key):
    with pytest.raises(ParamsError, match=f"train_judge.hard.{key}"):
        parse_section(HardRanges, bad, "train_judge.hard")
