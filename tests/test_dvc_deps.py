"""dvc.yaml cannot drift from the code: every stage depends on each project file its
command runs, found by following imports (dm2/core/provenance.py; `python dev/dvc_deps.py`
rewrites the lists), and the data paths it declares are those of dm2/core/paths.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

import dm2.core.paths
from dm2.core.provenance import code_files, code_version

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
        assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them in deps; run `python dev/dvc_deps.py`"


def _declared_paths() -> set[str]:
    """Every data path dvc.yaml names (deps, outs, metrics, plots); a templated one
    (`artifacts/methods/${item}`) as its fixed folder."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    found = set()
    entries = [e for stage in _stages().values() for key in ("deps", "outs", "metrics", "plots") for e in stage.get(key, [])]
    for entry in [*entries, *doc.get("plots", [])]:
        path = entry if isinstance(entry, str) else next(iter(entry))
        if not path.startswith(("dm2/", "stages/")):
            found.add(path.split("${")[0].rstrip("/"))
    return found


def test_dvc_yaml_and_the_paths_module_name_the_same_paths():
    known = {str(v) for v in vars(dm2.core.paths).values() if isinstance(v, Path)} - {str(dm2.core.paths.SHARDS_DIR)}  # scratch, not an output
    declared = _declared_paths()
    # A declared path is one of dm2/core/paths.py, or a file its stage names inside one of its folders.
    stray = sorted(p for p in declared if p not in known and str(Path(p).parent) not in known)
    assert not stray, f"dvc.yaml names {stray}, which dm2/core/paths.py does not"
    unused = sorted(p for p in known if p not in declared and str(Path(p).parent) not in declared and not any(d.startswith(p + "/") for d in declared))
    assert not unused, f"dm2/core/paths.py names {unused}, which no dvc.yaml stage declares"


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


SHIPPED = ["train_diffusion", "train_clip", "train_judge", "world_check", "prompts", "evaluate_base", "attack_base"]
SHIPPED_EACH = ["baseline", "compare"]  # foreach groups: one stage per compared method


def test_shipped_stages_are_up_to_date():
    """The world's weights and prompts, the base model's side of the evaluation and the
    attacks, and the baselines with their measurements ship in git (cache: false): a fresh
    clone's `dvc repro` must find their stages up to date, or it retrains the world and
    re-measures what no DM2 setting changes. A code change under them that does not change
    what they compute is recorded with `dvc commit STAGE`."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for group in SHIPPED_EACH:
        for out in stages[group]["do"]["outs"]:
            assert isinstance(out, dict) and next(iter(out.values())).get("cache") is False, (
                f"dvc.yaml: {group}'s output {out} must be tracked by git (cache: false)"
            )
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["compare"]["methods"]
    shipped = SHIPPED + [f"{group}@{m}" for group in SHIPPED_EACH for m in methods]
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", *shipped], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout or "{}") == {}, f"dvc.lock is stale for: {done.stdout.strip()}"
