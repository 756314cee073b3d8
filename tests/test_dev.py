"""The development tools (dev/) on tiny inputs: the output comparison that holds a
refactor to byte-equal results."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


same_outputs = load_script(ROOT / "dev" / "same_outputs.py")


def test_same_ignores_only_time_and_code_identity(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"ratio": 9.6, "seconds": 12.0, "nested": {"code": "x1", "asr": 50.0, "vae_seconds": 3.0}}))
    b.write_text(json.dumps({"ratio": 9.6, "seconds": 99.0, "nested": {"code": "y2", "asr": 50.0, "vae_seconds": 4.0}}))
    assert same_outputs.same(a, b)
    b.write_text(json.dumps({"ratio": 9.7, "seconds": 99.0, "nested": {"code": "y2", "asr": 50.0, "vae_seconds": 4.0}}))
    assert not same_outputs.same(a, b)


def test_same_compares_safetensors_by_tensor_and_metadata(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.ones(3)}, a, metadata={"fingerprint": "old", "loops": "3"})
    save_file({"w": torch.ones(3)}, b, metadata={"fingerprint": "new", "loops": "3"})
    assert same_outputs.same(a, b)
    save_file({"w": torch.ones(3)}, b, metadata={"fingerprint": "new", "loops": "4"})
    assert not same_outputs.same(a, b)
    save_file({"w": torch.full((3,), 1.0 + 1e-7)}, b, metadata={"fingerprint": "new", "loops": "3"})
    assert not same_outputs.same(a, b)


def test_compare_counts_files_that_differ_or_exist_once(tmp_path, capsys):
    for side, text in (("old", "1"), ("new", "2")):
        (tmp_path / side / "metrics").mkdir(parents=True)
        (tmp_path / side / "metrics" / "a.txt").write_text(text)
        (tmp_path / side / "metrics" / "same.txt").write_text("x")
    (tmp_path / "new" / "metrics" / "extra.txt").write_text("y")
    assert same_outputs.compare(tmp_path / "old", tmp_path / "new", [Path("metrics")]) == 2
    out = capsys.readouterr().out
    assert "differs      metrics/a.txt" in out and "only in one  metrics/extra.txt" in out and "same         metrics/same.txt" in out


def test_tiny_params_are_a_valid_overlay_of_params_yaml():
    from dm2.params import check_params

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = same_outputs._merge(params, yaml.safe_load(same_outputs.TINY.read_text()))
    sections = check_params(tiny, ROOT)
    assert sections["train_unet"].steps == 3 and sections["erase"].max_loops == 2
    assert sections["mine"].tokens == params["mine"]["tokens"]  # what the overlay leaves out stays


def test_tiny_run_makes_each_stage_after_the_stages_it_reads_from():
    outs = same_outputs.stage_outputs(ROOT)
    assert outs["erase"] == ["artifacts/methods/dm2", "metrics/erase.json", "plots/erase_s.json"]
    assert outs["compare sld"] == ["artifacts/compare/sld", "metrics/compare/sld.json"]
    made_at = {path: i for i, paths in enumerate(outs.values()) for path in paths}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    order = list(outs)
    for name, body in stages.items():
        body = body.get("do", body)
        first = next(i for i, cmd in enumerate(order) if cmd.split()[0] == body["cmd"].split()[3])
        for dep in body["deps"]:
            dep = str(dep).split("/${")[0]
            maker = [made_at[p] for p in made_at if dep == p or dep.startswith(p + "/") or p.startswith(dep + "/")]
            assert all(i < first for i in maker if order[i].split()[0] != order[first].split()[0]), f"{name} reads {dep} before it is made"
