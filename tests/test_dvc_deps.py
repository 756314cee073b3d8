"""dvc.yaml's code deps cannot go stale: every stage depends on each project file its
command runs, found by following imports (dm2/provenance.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dm2.provenance import code_files, code_version

ROOT = Path(__file__).resolve().parents[1]


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def test_every_stage_runs_through_the_params_check():
    for name, stage in _stages().items():
        assert re.fullmatch(r"python -m stages \w+( \S+)?", stage["cmd"]), f"{name}: {stage['cmd']}"


def test_deps_cover_every_module_a_stage_imports():
    for name, stage in _stages().items():
        module = stage["cmd"].split()[3]
        needed = set(code_files(f"stages.{module}")) | set(code_files("stages.__main__"))
        missing = sorted(needed - set(stage["deps"]))
        assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them in deps"


def test_code_files_follow_imports_inside_functions(tmp_path):
    (tmp_path / "dm2").mkdir()
    (tmp_path / "dm2" / "__init__.py").write_text("")
    (tmp_path / "dm2" / "a.py").write_text("def f():\n    from dm2.b import g\n    return g()\n")
    (tmp_path / "dm2" / "b.py").write_text("import torch\nfrom dm2 import c\n")
    (tmp_path / "dm2" / "c.py").write_text("")
    (tmp_path / "dm2" / "unused.py").write_text("")
    assert code_files("dm2.a", tmp_path) == ["dm2/__init__.py", "dm2/a.py", "dm2/b.py", "dm2/c.py"]
    before = code_version("dm2.a", tmp_path)
    (tmp_path / "dm2" / "unused.py").write_text("x = 1\n")
    assert code_version("dm2.a", tmp_path) == before  # not run by dm2.a
    (tmp_path / "dm2" / "c.py").write_text("# a comment\n")
    assert code_version("dm2.a", tmp_path) != before


def test_no_stage_imports_another_stage():
    for path in sorted((ROOT / "stages").glob("*.py")):
        reached = [f for f in code_files(f"stages.{path.stem}") if f.startswith("stages/")]
        assert reached == [f"stages/{path.name}"], f"{path.name} imports {reached}"
