"""params.yaml and the SD v1.4 preset parse with every stage's section; bad values are
one-line errors naming the key."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dm2.attacks.params import ATTACK_LABELS, ATTACK_PARAMS, ATTACKS, AttacksParams
from dm2.core.config import ParamsError, load_params, parse_section
from dm2.core.devices import resolve_device
from dm2.core.params import ConceptParams, ModelsParams
from dm2.erasure.params import CircumventParams, MineParams, PoolParams, VerifyParams, check_method
from dm2.measure.params import EvaluateParams
from dm2.params import SECTIONS, check_params
from dm2.presets import WORLD_SECTIONS, apply_preset
from dm2.presets import main as presets_main
from dm2.world.params import WorldParams

ROOT = Path(__file__).resolve().parents[1]


def sd14_params() -> dict:
    """params.yaml with the SD v1.4 overlay applied, as `python -m dm2.presets` writes it."""
    return yaml.safe_load(apply_preset((ROOT / "params.yaml").read_text(), load_params(ROOT / "presets/sd14.yaml")))


@pytest.mark.parametrize("which", ["world", "sd14"])
def test_every_section_parses(which, tmp_path):
    params = load_params(ROOT / "params.yaml") if which == "world" else sd14_params()
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
    params = sd14_params()
    m = parse_section(MineParams, params["mine"], "mine")
    cp = parse_section(CircumventParams, params["circumvent"], "circumvent")
    v = parse_section(VerifyParams, params["verify"], "verify")
    assert (m.tokens, m.k, m.epochs, m.lr, m.lr_drop_epoch, m.lr_after_drop, m.grad_clip) == (32, 3, 1000, 0.1, 500, 0.01, 10.0)
    assert (cp.epochs, cp.lr, cp.lr_drop_epoch, cp.lr_after_drop, cp.grad_clip, cp.optimizer) == (1000, 0.01, 800, 0.001, 100.0, "sgd")
    assert (cp.r, cp.alpha_c, cp.alpha_p, cp.anchor, v.reference_prompt, v.tau) == (0.7, 1.0, 0.5, "a photo", "a photo", 0.2)
    assert (m.norm_bound, v.samples, v.references, cp.images) == (None, 1, 1, 1)  # the paper: unbounded c, one x_c, one x_r, one x
    assert (cp.replay, cp.preserve) == ("loop", [])  # one pick of r per step; l_p keeps c0, 0*c, -c only
    assert params["models"]["diffusion"] == "CompVis/stable-diffusion-v1-4"


def test_preset_overlay_leaves_the_world_sections_byte_equal(tmp_path):
    """Applied in place, the overlay changes only what it names: the world and training
    sections keep every byte (so DVC does not retrain the shipped world), comments stay."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    presets_main([str(ROOT / "presets/sd14.yaml"), str(params)])

    def sections(text: str) -> dict[str, str]:
        blocks = re.split(r"^(?=[a-z_]+:)", text, flags=re.M)
        return {b.split(":", 1)[0]: b for b in blocks if b.strip() and not b.startswith("#")}

    before, after = sections((ROOT / "params.yaml").read_text()), sections(params.read_text())
    for name in WORLD_SECTIONS:
        assert after[name] == before[name], name
    assert after["mine"] != before["mine"] and "# paper: 3 pool images per loop" in after["mine"]
    assert yaml.safe_load(params.read_text()) == sd14_params()


def test_preset_naming_a_world_section_is_refused(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("world:\n  seed: 1\nmine:\n  epochs: 5\n")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(SystemExit, match=r"bad\.yaml: world: a preset may not change the shipped world's sections"):
        presets_main([str(preset), str(params)])
    preset.write_text("mine:\n  epochs: -5\n")
    with pytest.raises(SystemExit, match=r"mine\.epochs: must be positive"):
        presets_main([str(preset), str(params)])
    assert params.read_text() == (ROOT / "params.yaml").read_text()  # nothing written


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


def test_cpu_processes_must_be_a_whole_number_of_one_or_more():
    params = load_params(ROOT / "params.yaml")
    assert check_params({**params, "cpu_processes": 1})["cpu_processes"] == 1
    for bad in (0, 2.5, "3", True):
        with pytest.raises(ParamsError, match=rf"^cpu_processes: expected a whole number >= 1, got {bad!r}$"):
            check_params({**params, "cpu_processes": bad})


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_missing_base_model_folder_is_named(tmp_path):
    from dm2.models.diffusion import load_pipeline

    with pytest.raises(FileNotFoundError, match="models.diffusion: .*missing_sd is not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path / "missing_sd"))


def test_second_judge_must_differ_from_the_first():
    models = load_params(ROOT / "params.yaml")["models"]
    parsed = parse_section(ModelsParams, models, "models")
    assert parsed.second_judge != parsed.judge
    with pytest.raises(ParamsError, match=r"models\.second_judge: must differ from models\.judge"):
        parse_section(ModelsParams, {**models, "second_judge": models["judge"]}, "models")


def _params() -> dict:
    return load_params(ROOT / "params.yaml")


def test_whole_file_checks_and_returns_every_section():
    sections = check_params(_params(), ROOT)
    assert set(SECTIONS) <= set(sections) and isinstance(sections["mine"], MineParams)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(erasee=p.pop("erase")), r"top level: unknown section\(s\) \['erasee'\]"),
        (lambda p: p.pop("verify"), r"top level: missing section\(s\) \['verify'\]"),
        (lambda p: p["concept"].update(name="hexagon"), r"concept\.name: 'hexagon' is not a world shape .* data/prompts/hexagon\.csv does not exist"),
        (lambda p: p["concept"].update(template="a {concept} {style} photo"), r"concept\.template: may use only '\{concept\}'"),
        (lambda p: p["concept"].update(template="a {concept photo"), r"concept\.template"),
        (lambda p: p["mine"].update(tokens=76), r"mine\.tokens: 76 tokens do not fit the text encoder's 75 text positions"),
        (lambda p: p["mine"].update(tokens=72, template="a photo of a {c}"), r"mine\.tokens: 76 tokens do not fit"),
        (lambda p: p["mine"].update(template="a photo of a {concept}"), r"mine\.template: must use '\{c\}' once and nothing else"),
        (lambda p: p["mine"].update(template="{c} and {c}"), r"mine\.template: must use '\{c\}' once"),
        (lambda p: p["attacks"]["cce"].update(prompt_templates=["a {token} by {artist}"]), r"attacks\.cce\.prompt_templates: may use only '\{token\}'"),
        (lambda p: p["models"].update(diffusion="artifacts/world/sdx"), r"models\.diffusion: artifacts/world/sdx is not a diffusers pipeline folder"),
        (lambda p: p["models"].update(diffusion="./sd"), r"models\.diffusion: \./sd is not a diffusers pipeline folder"),
        (lambda p: p["models"].update(judge_path="artifacts/world/nope.safetensors"), r"models\.judge_path: artifacts/world/nope\.safetensors does not exist"),
        (lambda p: p.update(method="dm3"), r"method: unknown method 'dm3'"),
        (lambda p: p.update(device="tpu"), r"device: 'tpu' is not one of"),
        (lambda p: p["verify"].update(tau=float("nan")), r"verify\.tau: expected a finite number, got nan"),
        (lambda p: p["pool"].update(size=True), r"pool\.size: expected an integer, got bool"),
        (lambda p: p["pool"].update(size=2.5), r"pool\.size: expected an integer, got 2\.5"),
        (lambda p: p["erase"].update(lora_targets=["to_x"]), r"erase\.lora_targets: 'to_x' is not one of \['to_q', 'to_k', 'to_v', 'to_out\.0'\]"),
        (lambda p: p["erase"].update(lora_targets=[]), r"erase\.lora_targets: must name at least one projection"),
        (lambda p: p["erase"].update(lora_targets="to_v"), r"erase\.lora_targets: expected a list"),
        (lambda p: p["mine"].update(k=1000), r"mine\.k: mining draws k = 1000 pool images, but pool\.size is 30"),
    ],
)
def test_cross_section_and_file_checks_name_the_key(edit, message):
    params = _params()
    edit(params)
    with pytest.raises(ParamsError, match=message):
        check_params(params, ROOT)


@pytest.mark.parametrize(
    "stage, key, value",
    [("train_judge", "judge_path", "artifacts/world/new_judge.safetensors"), ("train_clip", "clip_pretrained", "artifacts/world/new_clip.safetensors"),
     ("train_diffusion", "diffusion", "artifacts/world/new_sd")],
)  # fmt: skip
def test_a_training_stage_may_name_the_model_it_makes(stage, key, value):
    """`dvc repro` deletes a stage's outputs before running it: the stage that trains a world
    model must pass the check without it, and every other stage must not."""
    from stages.__main__ import MADE_BY

    params = _params()
    params["models"][key] = value
    check_params(params, ROOT, made=MADE_BY[stage])
    for other, made in MADE_BY.items():
        if other != stage:
            with pytest.raises(ParamsError, match=rf"models\.{key}: "):
                check_params(params, ROOT, made=made)


def test_numbers_in_any_yaml_spelling(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.1 ", "  lr: 1e-1 ", 1).replace("  size: 30 ", "  size: 3e1 ", 1)
    assert "1e-1" in text and "3e1" in text
    (tmp_path / "params.yaml").write_text(text)
    raw = load_params(tmp_path / "params.yaml")
    assert raw["mine"]["lr"] == "1e-1"  # PyYAML reads an exponent without a dot as text
    sections = check_params(raw, ROOT)
    assert sections["mine"].lr == 0.1 and sections["pool"].size == 30 and isinstance(sections["pool"].size, int)


def test_broken_yaml_is_named(tmp_path):
    (tmp_path / "params.yaml").write_text("mine: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_params_module_imports_nothing_heavy():
    code = "import sys, dm2.params; heavy = [m for m in ('torch', 'diffusers', 'transformers', 'open_clip') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "old, new, line",
    [
        ("  tokens: 32 ", "  tokens: 80 ", "params.yaml: mine.tokens: 80 tokens do not fit the text encoder's 75 text positions (77 less BOS and EOS)"),
        ("  k: 3 ", "  k: 1000 ", "params.yaml: mine.k: mining draws k = 1000 pool images, but pool.size is 30"),
        ("judge_path: artifacts/world/judge.safetensors", "judge_path: artifacts/world/gone.safetensors", "params.yaml: models.judge_path: artifacts/world/gone.safetensors does not exist"),
    ],
)  # fmt: skip
def test_stage_entry_point_refuses_bad_params_in_one_line(tmp_path, old, new, line):
    """Through `python -m stages`, as dvc runs it: one line naming the key, before any model loads."""
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    for name in ("artifacts", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stages", "erase"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [line]


def test_sections_check_themselves_as_they_are_built():
    """Validation is in `__post_init__`: an object built in code is checked like a parsed one,
    so the code that uses it need not check again."""
    with pytest.raises(ParamsError, match="pool.size: the pool must hold at least one image"):
        PoolParams(size=0, steps=10, guidance=5.0, seed=0)
    with pytest.raises(ParamsError, match=r"mine\.optimizer: 'rmsprop' is not one of"):
        replace(parse_section(MineParams, load_params(ROOT / "params.yaml")["mine"], "mine"), optimizer="rmsprop")
    # A class under two keys is named by the key it was parsed under.
    for section in ("train_judge", "world_check"):
        data = load_params(ROOT / "params.yaml")[section]
        with pytest.raises(ParamsError, match=rf"^{section}\.hard\.canvas: must lie in"):
            parse_section(SECTIONS[section], {**data, "hard": {"canvas": [2, 8]}}, section)


def test_each_section_class_knows_its_key():
    for name, cls in SECTIONS.items():
        assert cls.key == name
    for name, cls in ATTACK_PARAMS.items():
        assert cls.key == f"attacks.{name}"


def test_the_attack_registries_agree():
    """The params side (light, read by the params check and the report) and the code side
    (read by the sweep) list the same attacks in the same order, each with its section."""
    from dm2.attacks.registry import REGISTRY

    assert tuple(REGISTRY) == ATTACKS == tuple(ATTACK_LABELS)
    fields = {f.name: f.type for f in dataclasses.fields(AttacksParams)}
    for name, cls in ATTACK_PARAMS.items():
        assert fields[name] == cls.__name__  # `from __future__ import annotations`: types are names
