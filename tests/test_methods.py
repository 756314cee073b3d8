"""Methods behind one interface (stage baseline, dm2.erasure.methods), the compare stage and the
report stage, on tiny random models and fixed metrics files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dm2.attacks.params import ATTACKS
from dm2.attacks.sweep import prepare_attacks
from dm2.core.config import ParamsError, parse_section
from dm2.erasure.lora import LORA_FILE
from dm2.erasure.methods import INFO_FILE, apply_method
from dm2.erasure.params import BaselinesParams, check_method
from dm2.erasure.sld import SafetyGuidance
from dm2.judges.world import WorldJudge
from dm2.measure.evaluation import EvalSet
from dm2.measure.params import EvaluateParams
from dm2.models.diffusion import encode_prompts, generate_latents
from stages.baseline import train_baseline
from stages.compare import compare_method
from stages.report import collect_images, collect_rows, collect_sweeps, write_report
from tests.test_attacks import SEARCH, STAGE_PROMPTS, stage_params
from tests.test_evaluate import SHAPES, HalfCircleJudge

TINY_BASELINES = {
    "esd": {"iterations": 2, "ddim_steps": 2, "lora_rank": 2},
    "uce": {"preserve": ["square"]},
    "learnable_prompts": {"iterations": 2, "ddim_steps": 2, "lora_rank": 2, "tokens": 2},
}


def baselines() -> BaselinesParams:
    return parse_section(BaselinesParams, TINY_BASELINES, "baselines")


def sample(pipe, guide=None) -> torch.Tensor:
    return generate_latents(pipe, encode_prompts(pipe, ["a circle"]), seed=0, steps=2, guidance=2.0, guide=guide)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ParamsError, match="unknown method 'esd'; known methods: dm2, esd_x"):
        check_method("esd")
    with pytest.raises(ParamsError, match="unknown baseline 'dm2'"):
        train_baseline(None, "dm2", "circle", baselines(), None)


@pytest.mark.parametrize("method", ["esd_x", "uce"])
def test_weight_methods_reload_into_a_fresh_pipeline(tiny_pipe, tmp_path, method):
    base = sample(tiny_pipe)
    train_baseline(tiny_pipe, method, "circle", baselines(), tmp_path)
    trained = sample(tiny_pipe)
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info["method"] == method and len(info["lora_sha256"]) == 64
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    assert torch.allclose(sample(tiny_pipe), base)  # adapters gone: the base model again
    assert apply_method(tiny_pipe, tmp_path) is None
    assert torch.allclose(sample(tiny_pipe), trained, atol=1e-5) and not torch.allclose(trained, base)


def test_sld_is_a_guide_not_weights(tiny_pipe, tmp_path):
    train_baseline(tiny_pipe, "sld", "circle", baselines(), tmp_path)
    assert not (tmp_path / LORA_FILE).exists()
    guide = apply_method(tiny_pipe, tmp_path)
    assert isinstance(guide, SafetyGuidance) and guide.params.guidance_scale == 2000.0
    assert not getattr(tiny_pipe.unet, "peft_config", None)


def test_apply_refuses_a_missing_folder_or_a_swapped_lora(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=INFO_FILE):
        apply_method(tiny_pipe, tmp_path / "nowhere")
    train_baseline(tiny_pipe, "uce", "circle", baselines(), tmp_path)
    (tmp_path / LORA_FILE).write_bytes(b"not the weights")
    with pytest.raises(ParamsError, match="not the file method.json describes"):
        apply_method(tiny_pipe, tmp_path)


def test_compare_measures_the_erased_model_like_evaluate_and_attack(tiny_pipe, tiny_clip, tmp_path):
    train_baseline(tiny_pipe, "sld", "circle", baselines(), tmp_path / "sld")
    judge = WorldJudge(SHAPES, ["red", "blue"], ["plain"], width=8).eval()
    judges = {"world": judge, "other": HalfCircleJudge()}  # primary first
    data = EvalSet(["a red circle", "a blue ball"], [True, False], ["a red box", "a star"], ["square", "star"],
                   ["a blue star", "a square"], judge.features(torch.rand(2, 3, 32, 32)), judge.features)  # fmt: skip
    ep = EvaluateParams(images_per_prompt=2, n_prompts=2, n_other=2, n_heldout=2, steps=2, guidance=2.0, seed=0, kind="object", grid_images=2)
    ap = stage_params()
    inputs = prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, ap, SEARCH)  # the base side, as stage attack_base
    metrics, images = compare_method(tiny_pipe, tmp_path / "sld", judges, tiny_clip, data, "circle", ep, lambda: inputs, ap, tmp_path / "out")
    assert {"ratio", "clip_score", "fd", "other_shapes_accuracy", "asr", "asr_sweep", "second_judge", "seconds"} <= set(metrics)
    assert images.shape == (2, 3, 32, 32)
    second = metrics["second_judge"]
    assert second["judge"] == "other" and {"ratio", "other_shapes_accuracy", "asr"} <= set(second)
    assert second["ratio"] == 50.0  # HalfCircleJudge: half of the 4 concept images
    for attack in ATTACKS:
        sweep = metrics["asr_sweep"][attack]
        assert sweep["budgets"] == ap.budgets(attack)
        assert 0.0 <= metrics["asr"][attack] <= 100.0
        assert metrics["asr"][attack] == sweep["world"]["best"][-1]  # the primary judge's, best restart, largest budget
        assert second["asr"][attack] == sweep["other"]["best"][-1]
        for restart in range(ap.restarts):
            rows = (tmp_path / "out" / "attacks" / attack / f"restart{restart}" / "prompts.csv").read_text().splitlines()
            assert rows[0].endswith("score_world,is_concept_world,score_other,is_concept_other") and len(rows) == ap.n_prompts + 1


def fixed_metrics(tmp_path):
    row = {"ratio": 90.0, "ratio_synonym_prompts": 88.0, "score": 0.9, "clip_score": 70.0, "fd": 8.0, "other_shapes_accuracy": 90.0}
    erased = {**row, "ratio": 5.0, "ratio_synonym_prompts": 6.0, "clip_score": 68.0}
    by_second = {"judge": "geometric", "ratio": 80.0, "ratio_synonym_prompts": 85.0, "other_shapes_accuracy": 70.0}
    asr = {"cce": 80.0, "p4d": 85.0, "unlearndiff": 90.0, "ring_a_bell": 95.0}
    curve = {"per_restart": [[20.0, 40.0]], "best": [20.0, 40.0], "any_restart": [20.0, 40.0]}
    sweep = {a: {"budgets": [10, 20], "world": curve, "geometric": curve} for a in asr}
    eval_metrics = {"base": {**row, "second_judge": by_second}, "erased": {**erased, "second_judge": {**by_second, "ratio": 5.0}}}
    attack_metrics = {
        "judge": "world", "base": asr, "erased": {k: 10.0 for k in asr},
        "second_judge": {"judge": "geometric", "base": asr, "erased": {k: 12.0 for k in asr}},
        "sweep": {"base": sweep, "erased": sweep},
    }  # fmt: skip
    (tmp_path / "compare").mkdir()
    compare_row = {**row, "ratio": 30.0, "ratio_synonym_prompts": 50.0, "asr": asr, "asr_sweep": sweep,
                   "second_judge": {**by_second, "asr": asr}}  # fmt: skip
    (tmp_path / "compare" / "esd_x.json").write_text(json.dumps(compare_row))
    return eval_metrics, attack_metrics


def test_report_renders_every_row_from_fixed_metrics(tmp_path):
    eval_metrics, attack_metrics = fixed_metrics(tmp_path)
    rows = collect_rows("dm2", ["esd_x", "dm2"], eval_metrics, attack_metrics, tmp_path / "compare")
    assert list(rows) == ["base", "DM2", "ESD-x"]
    assert rows["DM2"]["second_judge"]["asr"] == {k: 12.0 for k in ATTACKS}
    images = {name: torch.rand(3, 3, 32, 32) for name in rows}
    sweeps = collect_sweeps("dm2", ["esd_x", "dm2"], attack_metrics, tmp_path / "compare")
    assert list(sweeps) == ["base", "DM2", "ESD-x"]
    table = write_report(rows, images, sweeps, ("world", "geometric"), tmp_path / "reports", no_images=["uce"])
    assert "The image grid leaves out UCE:" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    n = len(rows) + 2  # header, rule, one line per model: the primary judge's table first
    assert [line.split("|")[1].strip() for line in lines[2:n]] == ["base", "DM2", "ESD-x"]
    assert "| 5.0 |" in lines[3] and "| 50.0 |" in lines[4]  # DM2's Ratio, ESD-x's synonym Ratio
    assert [line.split("|")[1].strip() for line in lines[n + 2 : 2 * n]] == ["base", "DM2", "ESD-x"]  # the second judge's
    assert "| 80.0 |" in lines[n + 2]  # the base model's Ratio by the second judge
    budget = [line.split("|")[1:3] for line in lines[2 * n + 2 :]]  # ASR against budget: attack, model
    assert [(a.strip(), m.strip()) for a, m in budget[:3]] == [("CCE", "base"), ("CCE", "DM2"), ("CCE", "ESD-x")]
    assert len(budget) == 4 * len(rows) and "| 10: 20.0, 20: 40.0 |" in lines[2 * n + 2]
    assert "base: Ratio world 90.0 vs geometric 80.0" in table
    assert (tmp_path / "reports" / "table.md").read_text() == table
    for png in ("radar.png", "grid.png", "asr_budget.png"):
        with Image.open(tmp_path / "reports" / png) as im:
            assert im.width > 100 and im.height > 100


def test_report_images_come_from_each_stage(tmp_path):
    from dm2.core.io import save_tensors

    save_tensors({"base": torch.zeros(2, 3, 8, 8), "dm2": torch.ones(2, 3, 8, 8)}, tmp_path / "eval.safetensors")
    save_tensors({"uce": torch.full((2, 3, 8, 8), 0.5)}, tmp_path / "compare" / "uce" / "concept_images.safetensors")
    images, missing = collect_images("dm2", ["uce", "esd_x"], tmp_path / "eval.safetensors", tmp_path / "compare")
    assert list(images) == ["base", "DM2", "UCE"] and images["UCE"].mean().item() == 0.5
    assert missing == ["esd_x"]  # no compare images here: left out of the grid, and named


def test_report_leaves_out_methods_measured_by_an_earlier_protocol(tmp_path):
    from stages.report import measured_methods

    fixed_metrics(tmp_path)
    (tmp_path / "compare" / "uce.json").write_text(json.dumps({"ratio": 12.0, "asr": {"cce": 85.0}}))  # no sweep: old protocol
    current, stale = measured_methods("dm2", ["esd_x", "uce", "sld", "dm2"], tmp_path / "compare")
    assert current == ["esd_x"] and stale == ["uce", "sld"]  # sld: no metrics at all


def test_compare_keeps_its_evaluation_when_the_attacks_cannot_start(tiny_pipe, tiny_clip, tmp_path, monkeypatch):
    """A compare run stopped after the evaluation (here: no attack inputs yet) loses no
    finished work: the next run with the same key reuses it, another key measures again."""
    import stages.compare as compare

    train_baseline(tiny_pipe, "uce", "circle", baselines(), tmp_path / "uce")
    judge = WorldJudge(SHAPES, ["red", "blue"], ["plain"], width=8).eval()
    judges = {"world": judge, "other": HalfCircleJudge()}
    data = EvalSet(["a red circle"], [True], ["a red box"], ["square"], ["a blue star", "a square"],
                   judge.features(torch.rand(2, 3, 32, 32)), judge.features)  # fmt: skip
    ep = EvaluateParams(images_per_prompt=2, n_prompts=1, n_other=1, n_heldout=2, steps=2, guidance=2.0, seed=0, kind="object", grid_images=2)
    ap = stage_params()

    def missing():
        raise FileNotFoundError("artifacts/attack_base/inputs.safetensors: not found")

    with pytest.raises(FileNotFoundError, match="attack_base"):
        compare_method(tiny_pipe, tmp_path / "uce", judges, tiny_clip, data, "circle", ep, missing, ap, tmp_path / "out", "key1")
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    first = json.loads((tmp_path / "out" / compare.EVAL_CHECKPOINT).with_suffix(".json").read_text())
    calls = []
    monkeypatch.setattr(compare, "measure", lambda *a, **k: calls.append(1) or (first, torch.zeros(2, 3, 32, 32), None))
    inputs = prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, ap, SEARCH)
    metrics, _ = compare_method(tiny_pipe, tmp_path / "uce", judges, tiny_clip, data, "circle", ep, lambda: inputs, ap, tmp_path / "out", "key1")
    assert calls == [] and metrics["ratio"] == first["ratio"]  # reused, not measured again
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    compare_method(tiny_pipe, tmp_path / "uce", judges, tiny_clip, data, "circle", ep, lambda: inputs, ap, tmp_path / "out", "key2")
    assert calls == [1]  # other settings: measured again
