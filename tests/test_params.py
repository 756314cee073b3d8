"""params.yaml and the SD v1.4 preset parse with every stage's section; bad values are
one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dm2.attack_runs import AttacksParams
from dm2.concept import ConceptParams
from dm2.config import ParamsError, load_params, parse_section
from dm2.dark_miner import CircumventParams, MineParams, VerifyParams
from dm2.models import ModelsParams, resolve_device
from dm2.training import WorldParams
from dm2.methods import check_method
from stages.baseline import BaselinesParams
from stages.erase import EraseParams
from stages.evaluate import EvaluateParams
from stages.pool import PoolParams
from stages.prompts import PromptsParams
from stages.report import CompareParams
from stages.train_clip import ClipTrainParams
from stages.train_diffusion import UnetParams, VaeParams
from stages.train_judge import JudgeTrainParams
from stages.world_check import WorldCheckParams

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "world": WorldParams,
    "train_vae": VaeParams,
    "train_unet": UnetParams,
    "train_clip": ClipTrainParams,
    "train_judge": JudgeTrainParams,
    "models": ModelsParams,
    "world_check": WorldCheckParams,
    "concept": ConceptParams,
    "pool": PoolParams,
    "erase": EraseParams,
    "mine": MineParams,
    "verify": VerifyParams,
    "circumvent": CircumventParams,
    "prompts": PromptsParams,
    "evaluate": EvaluateParams,
    "attacks": AttacksParams,
    "baselines": BaselinesParams,
    "compare": CompareParams,
}


@pytest.mark.parametrize("path", ["params.yaml", "presets/sd14.yaml"])
def test_every_section_parses(path, tmp_path):
    params = load_params(ROOT / path)
    check_method(params["method"])
    coco = params["evaluate"].get("coco")
    if coco:  # the preset points at COCO files the user provides: stand-ins here
        with pytest.raises(ParamsError, match="evaluate.coco.captions: .* does not exist"):
            parse_section(EvaluateParams, params["evaluate"], "evaluate")
        (tmp_path / "captions.json").write_text("{}")
        (tmp_path / "inception.safetensors").write_text("")
        params["evaluate"]["coco"] = {**coco, "captions": str(tmp_path / "captions.json"), "images": str(tmp_path),
                                      "inception": str(tmp_path / "inception.safetensors")}  # fmt: skip
    for name, cls in SECTIONS.items():
        parse_section(cls, params[name], name)


def test_sd14_preset_has_the_paper_settings():
    params = load_params(ROOT / "presets/sd14.yaml")
    m = parse_section(MineParams, params["mine"], "mine")
    cp = parse_section(CircumventParams, params["circumvent"], "circumvent")
    v = parse_section(VerifyParams, params["verify"], "verify")
    assert (m.tokens, m.k, m.epochs, m.lr, m.lr_drop_epoch, m.lr_after_drop, m.grad_clip) == (32, 3, 1000, 0.1, 500, 0.01, 10.0)
    assert (cp.epochs, cp.lr, cp.lr_drop_epoch, cp.lr_after_drop, cp.grad_clip, cp.optimizer) == (1000, 0.01, 800, 0.001, 100.0, "sgd")
    assert (cp.r, cp.alpha_c, cp.alpha_p, cp.anchor, v.reference_prompt, v.tau) == (0.7, 1.0, 0.5, "a photo", "a photo", 0.2)
    assert (m.norm_bound, v.samples, v.references, cp.images) == (None, 1, 1, 1)  # the paper: unbounded c, one x_c, one x_r, one x
    assert (cp.replay, cp.preserve) == ("loop", [])  # one pick of r per step; l_p keeps c0, 0*c, -c only
    assert params["models"]["diffusion"] == "CompVis/stable-diffusion-v1-4"


def test_world_without_synonyms_is_refused():
    params = load_params(ROOT / "params.yaml")
    world = {**params["world"], "synonyms": {**params["world"]["synonyms"], "star": ["star"]}}
    with pytest.raises(ParamsError, match=r"world\.synonyms\.star: needs its name and at least one synonym"):
        parse_section(WorldParams, world, "world")


def test_wrong_types_and_unknown_keys_are_named():
    with pytest.raises(ParamsError, match=r"pool\.size: expected an integer, got str"):
        parse_section(PoolParams, {"size": "many", "steps": 5, "guidance": 5.0, "seed": 0}, "pool")
    with pytest.raises(ParamsError, match=r"pool: unknown key\(s\) \['sizes'\]"):
        parse_section(PoolParams, {"sizes": 3, "steps": 5, "guidance": 5.0, "seed": 0}, "pool")
    with pytest.raises(ParamsError, match=r"pool\.size: the pool must hold at least one image"):
        parse_section(PoolParams, {"size": 0, "steps": 5, "guidance": 5.0, "seed": 0}, "pool")
    with pytest.raises(ParamsError, match=r"concept\.name"):
        parse_section(ConceptParams, {"name": " "}, "concept")
    with pytest.raises(ParamsError, match="device"):
        resolve_device("tpu")
    verify = {"tau": 0.2, "steps": 5, "guidance": 5.0, "seed": 0}
    with pytest.raises(ParamsError, match=r"verify\.references: must be positive, got 0"):
        parse_section(VerifyParams, {**verify, "references": 0}, "verify")
    mine = {"epochs": 5, "lr": 0.1, "lr_drop_epoch": 2, "lr_after_drop": 0.01, "grad_clip": 10.0, "optimizer": "sgd"}
    with pytest.raises(ParamsError, match=r"mine\.norm_bound: must be positive or null, got -1\.0"):
        parse_section(MineParams, {**mine, "norm_bound": -1.0}, "mine")
    with pytest.raises(ParamsError, match=r"mine\.norm_bound: expected a number, got str"):
        parse_section(MineParams, {**mine, "norm_bound": "vocab"}, "mine")


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_missing_base_model_folder_is_named(tmp_path):
    from dm2.diffusion import load_pipeline

    with pytest.raises(FileNotFoundError, match="models.diffusion: .*missing_sd is not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path / "missing_sd"))


def test_second_judge_must_differ_from_the_first():
    models = load_params(ROOT / "params.yaml")["models"]
    parsed = parse_section(ModelsParams, models, "models")
    assert parsed.second_judge != parsed.judge
    with pytest.raises(ParamsError, match=r"models\.second_judge: must differ from models\.judge"):
        parse_section(ModelsParams, {**models, "second_judge": models["judge"]}, "models")
