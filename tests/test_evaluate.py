"""The evaluate stage on tiny random models: both models measured on the same set, the
LoRA really applied, metrics complete, grids laid out base row over erased row."""

from __future__ import annotations

import pytest
import torch

import stages.evaluate as evaluate_stage
from dm2.core.config import ParamsError
from dm2.judges.world import WorldJudge
from dm2.measure.evaluation import EvalSet, judged, measure
from dm2.measure.params import EvaluateParams
from dm2.models.diffusion import encode_prompts, generate
from dm2.world.render import DEFAULT_SYNONYMS
from stages.evaluate import evaluate, evaluate_base
from tests.test_erase import run

SHAPES = list(DEFAULT_SYNONYMS)


def test_evaluate_measures_base_and_erased_side_by_side(tiny_pipe, tiny_clip, tmp_path):
    torch.manual_seed(0)
    from stages.pool import PoolParams, make_pool

    pool = make_pool(tiny_pipe, "a circle photo", PoolParams(size=2, steps=2, guidance=2.0, seed=0))
    run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=1)
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())

    judge = WorldJudge(SHAPES, ["red", "blue"], ["plain"], width=8).eval()
    data = EvalSet(
        concept_prompts=["a red circle", "a blue ball"],
        says_name=[True, False],
        other_prompts=["a red box", "a star", "a blue plus"],
        other_shapes=["square", "star", "cross"],
        heldout_captions=["a red circle", "a blue star", "a square", "a plus"],
        reference_features=judge.features(torch.rand(4, 3, 32, 32)),
        features=judge.features,
    )
    p = EvaluateParams(images_per_prompt=2, n_prompts=2, n_other=3, n_heldout=4, steps=2, guidance=2.0, seed=0, kind="object", grid_images=2)
    torch.manual_seed(1)
    second = ("other", WorldJudge(SHAPES, ["red", "blue"], ["plain"], width=8).eval())
    base = evaluate_base(tiny_pipe, judge, tiny_clip, data, "circle", p, second)
    metrics, grids = evaluate(tiny_pipe, tmp_path, judge, tiny_clip, data, "circle", p, base, second)
    judged_keys = {"ratio", "score", "ratio_name_prompts", "ratio_synonym_prompts", "other_shapes_accuracy"}
    keys = judged_keys | {"clip_score", "fd", "second_judge"}
    assert set(metrics["base"]) == keys and set(metrics["erased"]) == keys
    for m in ("base", "erased"):  # the second judge's own figures on the same images
        assert set(metrics[m]["second_judge"]) == judged_keys | {"judge"} and metrics[m]["second_judge"]["judge"] == "other"
        assert 0 <= metrics[m]["second_judge"]["ratio"] <= 100
    assert all(0 <= metrics[m]["ratio"] <= 100 for m in ("base", "erased"))
    assert metrics["base"]["fd"] != metrics["erased"]["fd"]  # the LoRA changed the images
    assert grids["concept"].shape == (2, 2, 3, 32, 32) and grids["other"].shape == (2, 2, 3, 32, 32)
    assert metrics["base"] == base[0] and torch.equal(grids["concept"][0], base[1]["concept"])


def test_base_results_are_reused_only_with_the_same_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json: not found; run `dvc repro evaluate_base`"):
        evaluate_stage.load_base("k1", tmp_path)
    rows = {"concept": torch.rand(2, 3, 32, 32), "other": torch.rand(2, 3, 32, 32)}
    evaluate_stage.save_base(({"ratio": 90.0}, rows), 1.0, "k1", tmp_path)
    metrics, loaded = evaluate_stage.load_base("k1", tmp_path)
    assert metrics == {"ratio": 90.0} and torch.equal(loaded["other"], rows["other"])
    with pytest.raises(ParamsError, match="made with other settings"):
        evaluate_stage.load_base("k2", tmp_path)


class HalfCircleJudge:
    """Calls the first half of every batch a circle, the rest a square."""

    classes = {"shape": tuple(SHAPES)}

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = torch.full((len(images), len(SHAPES)), 0.01)
        probs[: len(images) // 2, SHAPES.index("circle")] = 0.9
        probs[len(images) // 2 :, SHAPES.index("square")] = 0.9
        return {"shape": probs}


def test_second_judge_figures_are_that_judges_own(tiny_pipe, tiny_clip):
    """`second` adds a `second_judge` block with the same figures, by that judge: the primary
    judge passed again gives the primary figures; another judge gives its own."""
    torch.manual_seed(0)
    judge = WorldJudge(SHAPES, ["red", "blue"], ["plain"], width=8).eval()
    other = HalfCircleJudge()
    data = EvalSet(["a red circle", "a blue ball", "a circle"], [True, False, True], ["a red box", "a star"], ["square", "star"],
                   ["a blue star", "a square"], judge.features(torch.rand(2, 3, 32, 32)), judge.features)  # fmt: skip
    p = EvaluateParams(images_per_prompt=2, n_prompts=3, n_other=2, n_heldout=2, steps=2, guidance=2.0, seed=0, kind="object", grid_images=2)
    alone, _, _ = measure(tiny_pipe, judge, tiny_clip, data, "circle", p)
    assert "second_judge" not in alone
    same, _, _ = measure(tiny_pipe, judge, tiny_clip, data, "circle", p, second=("world", judge))
    figures = {k: alone[k] for k in ("ratio", "score", "ratio_name_prompts", "ratio_synonym_prompts", "other_shapes_accuracy")}
    assert same["second_judge"] == {"judge": "world", **figures}
    assert {k: v for k, v in same.items() if k != "second_judge"} == alone  # the primary figures are unchanged
    by_other, _, _ = measure(tiny_pipe, judge, tiny_clip, data, "circle", p, second=("other", other))
    # measure's images, made again as it makes them: concept prompts x images_per_prompt, then the others.
    repeated = [q for q in data.concept_prompts for _ in range(p.images_per_prompt)]
    concept_images = generate(tiny_pipe, encode_prompts(tiny_pipe, repeated), p.seed, p.steps, p.guidance)
    other_images = generate(tiny_pipe, encode_prompts(tiny_pipe, data.other_prompts), p.seed + 1, p.steps, p.guidance)
    named = torch.tensor([True, True, False, False, True, True])
    want = judged(other, concept_images, named, other_images, data.other_shapes, "circle", p.kind)
    assert want != figures, "both judges give the same figures: the check below could not tell them apart"
    assert by_other["second_judge"] == pytest.approx({"judge": "other", **want})
    assert {k: v for k, v in by_other.items() if k != "second_judge"} == alone
