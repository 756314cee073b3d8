"""Methods behind one interface (stage baseline, dm2.methods), the compare stage and the
report stage, on tiny random models and fixed metrics files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dm2.config import ParamsError, parse_section
from dm2.diffusion import encode_prompts, generate_latents
from dm2.judge import WorldJudge
from dm2.lora import LORA_FILE
from dm2.methods import INFO_FILE, apply_method, check_method
from dm2.sld import SafetyGuidance
from stages.baseline import BaselinesParams, train_baseline
from stages.compare import compare_method
from stages.evaluate import EvalSet, EvaluateParams
from stages.report import collect_images, collect_rows, write_report
from tests.test_attacks import STAGE_PROMPTS, stage_params
from tests.test_evaluate import SHAPES

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
    data = EvalSet(["a red circle", "a blue ball"], [True, False], ["a red box", "a star"], ["square", "star"],
                   ["a blue star", "a square"], judge.features(torch.rand(2, 3, 32, 32)), judge.features)  # fmt: skip
    ep = EvaluateParams(images_per_prompt=2, n_prompts=2, n_other=2, n_heldout=2, steps=2, guidance=2.0, seed=0, kind="object", grid_images=2)
    metrics, images = compare_method(
        tiny_pipe, tmp_path / "sld", judge, tiny_clip, data, "circle", ep, STAGE_PROMPTS, stage_params(), tmp_path / "out", STAGE_PROMPTS
    )
    assert {"ratio", "clip_score", "fd", "other_shapes_accuracy", "asr"} <= set(metrics)
    assert images.shape == (2, 3, 32, 32)
    for attack in ("cce", "p4d", "unlearndiff", "ring_a_bell"):
        assert 0.0 <= metrics["asr"][attack] <= 100.0
        assert (tmp_path / "out" / "attacks" / attack / "prompts.csv").is_file()


def fixed_metrics(tmp_path):
    row = {"ratio": 90.0, "ratio_synonym_prompts": 88.0, "score": 0.9, "clip_score": 70.0, "fd": 8.0, "other_shapes_accuracy": 90.0}
    erased = {**row, "ratio": 5.0, "ratio_synonym_prompts": 6.0, "clip_score": 68.0}
    asr = {"cce": 80.0, "p4d": 85.0, "unlearndiff": 90.0, "ring_a_bell": 95.0}
    eval_metrics = {"base": row, "erased": erased}
    attack_metrics = {"base": asr, "erased": {k: 10.0 for k in asr}}
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "esd_x.json").write_text(json.dumps({**row, "ratio": 30.0, "ratio_synonym_prompts": 50.0, "asr": asr}))
    return eval_metrics, attack_metrics


def test_report_renders_every_row_from_fixed_metrics(tmp_path):
    eval_metrics, attack_metrics = fixed_metrics(tmp_path)
    rows = collect_rows("dm2", ["esd_x", "dm2"], eval_metrics, attack_metrics, tmp_path / "compare")
    assert list(rows) == ["base", "DM2", "ESD-x"]
    images = {name: torch.rand(3, 3, 32, 32) for name in rows}
    table = write_report(rows, images, tmp_path / "reports")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["base", "DM2", "ESD-x"]
    assert "| 5.0 |" in lines[3] and "| 50.0 |" in lines[4]  # DM2's Ratio, ESD-x's synonym Ratio
    assert (tmp_path / "reports" / "table.md").read_text() == table
    for png in ("radar.png", "grid.png"):
        with Image.open(tmp_path / "reports" / png) as im:
            assert im.width > 100 and im.height > 100


def test_report_images_come_from_each_stage(tmp_path):
    from dm2.io import save_tensors

    save_tensors({"base": torch.zeros(2, 3, 8, 8), "dm2": torch.ones(2, 3, 8, 8)}, tmp_path / "eval.safetensors")
    save_tensors({"uce": torch.full((2, 3, 8, 8), 0.5)}, tmp_path / "compare" / "uce" / "concept_images.safetensors")
    images = collect_images("dm2", ["uce"], tmp_path / "eval.safetensors", tmp_path / "compare")
    assert list(images) == ["base", "DM2", "UCE"] and images["UCE"].mean().item() == 0.5
