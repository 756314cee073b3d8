"""The evaluate stage on tiny random models: both models measured on the same set, the
LoRA really applied, metrics complete, grids laid out base row over erased row."""

from __future__ import annotations

import torch

from dm2.judge import WorldJudge
from dm2.world import DEFAULT_SYNONYMS
from stages.evaluate import EvalSet, EvaluateParams, evaluate
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
    metrics, grids = evaluate(tiny_pipe, tmp_path, judge, tiny_clip, data, "circle", p)
    keys = {"ratio", "score", "ratio_name_prompts", "ratio_synonym_prompts", "other_shapes_accuracy", "clip_score", "fd"}
    assert set(metrics["base"]) == keys and set(metrics["erased"]) == keys
    assert all(0 <= metrics[m]["ratio"] <= 100 for m in ("base", "erased"))
    assert metrics["base"]["fd"] != metrics["erased"]["fd"]  # the LoRA changed the images
    assert grids["concept"].shape == (2, 2, 3, 32, 32) and grids["other"].shape == (2, 2, 3, 32, 32)
