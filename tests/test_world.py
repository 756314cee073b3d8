"""The shapes world's empty (background-only) images and how the judge learns them."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from dm2.core.config import ParamsError, parse_section
from dm2.judges.world import WorldJudge
from dm2.training.world_models import IGNORE, judge_loss, labels_of
from dm2.world.params import WorldParams
from dm2.world.render import BACKGROUNDS, COLOURS, EMPTY, EMPTY_TEMPLATES, TEXTURES, WorldSpec, sample_world
from dm2.world.splits import world_split


def world(fraction: float) -> WorldParams:
    return WorldParams(
        train_images=60, heldout_images=8, colours=list(COLOURS), backgrounds=list(BACKGROUNDS), textures=list(TEXTURES), empty_fraction=fraction
    )


def test_empty_images_show_the_background_alone_with_generic_captions():
    spec = WorldSpec(empty_fraction=0.5)
    images, samples = sample_world(spec, 60, seed=0)
    empty = [i for i, s in enumerate(samples) if s.shape == EMPTY]
    assert 15 <= len(empty) <= 45
    for i in empty:
        s = samples[i]
        assert (images[i] == images[i][0, 0]).all()  # one colour: the background's
        assert tuple(images[i][0, 0]) == BACKGROUNDS[s.background]
        assert s.caption in {t.format(background=s.background) for t in EMPTY_TEMPLATES}
        assert s.colour == s.texture == EMPTY
    drawn = [i for i in range(60) if i not in empty]
    assert all(len({tuple(p) for p in images[i].reshape(-1, 3)}) > 1 for i in drawn)  # a shape on its background


def test_a_world_without_empty_images_has_no_empty_class():
    _, samples = sample_world(WorldSpec(), 40, seed=0)
    assert all(s.shape != EMPTY for s in samples)
    assert WorldSpec().shape_classes == WorldSpec().shapes
    assert WorldSpec(empty_fraction=0.1).shape_classes == WorldSpec().shapes + (EMPTY,)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_bad_empty_fraction_is_named(fraction):
    data = {"colours": list(COLOURS), "backgrounds": list(BACKGROUNDS), "textures": list(TEXTURES), "empty_fraction": fraction}
    with pytest.raises(ParamsError, match=r"world\.empty_fraction"):
        parse_section(WorldParams, data, "world")


def test_judge_learns_only_the_shape_of_an_empty_image():
    w = world(0.5)
    images, samples = world_split(w, "train")
    spec = w.spec()
    torch.manual_seed(0)
    judge = WorldJudge(list(spec.shape_classes), list(spec.colours), list(spec.textures), width=16)
    labels = labels_of(judge, samples)
    empty = torch.tensor([s.shape == EMPTY for s in samples])
    assert (labels["shape"][empty] == judge.classes["shape"].index(EMPTY)).all()
    assert (labels["colour"][empty] == IGNORE).all() and (labels["texture"][~empty] != IGNORE).all()
    # On empty images alone the loss is the shape head's cross-entropy: colour and texture are skipped
    with torch.no_grad():
        x = images[empty]
        loss = judge_loss(judge, x, {h: y[empty] for h, y in labels.items()})
        shape_only = F.cross_entropy(judge(x)[1]["shape"], labels["shape"][empty])
    assert loss.item() == pytest.approx(shape_only.item(), rel=1e-5)


def test_texture_period_is_a_choice_of_the_world_and_8_px_by_default():
    striped = WorldSpec(textures=("striped",))
    default, _ = sample_world(striped, 6, seed=3)
    assert striped.texture_period == 8
    assert not (sample_world(replace(striped, texture_period=4), 6, seed=3)[0] == default).all()


@pytest.mark.parametrize(
    ("change", "key"),
    [({"texture_period": 5}, "world.texture_period"), ({"texture_period": 32}, "world.texture_period"), ({"textures": ["plain", "checked"]}, "world.textures")],
)
def test_bad_texture_params_fail_before_any_training_naming_the_key(change, key):
    with pytest.raises(ParamsError, match=rf"^{key}: "):
        parse_section(WorldParams, {**world(0.1).__dict__, **change}, "world")


@pytest.mark.parametrize("period", [3, 0, 16, -2])
def test_a_texture_period_the_renderer_cannot_draw_names_the_key(period):
    with pytest.raises(ValueError, match=rf"world.texture_period: .*got {period}$"):
        WorldSpec(texture_period=period)


