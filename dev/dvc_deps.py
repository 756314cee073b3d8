"""Rewrite the code deps of every dvc.yaml stage from the imports its command runs
(`dm2.core.provenance.code_files`), keeping the data deps as they are. Run after changing what a
stage imports; tests/test_dvc_deps.py fails until then.

    python dev/dvc_deps.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.core.provenance import code_files  # noqa: E402


def main() -> None:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 200
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = ROOT / "dvc.yaml"
    doc = yaml.load(path)
    for stage in doc["stages"].values():
        body = stage.get("do", stage)
        module = body["cmd"].split()[3]
        code = sorted(set(code_files(f"stages.{module}")) | set(code_files("stages.__main__")))
        data = [d for d in body["deps"] if not str(d).startswith(("dm2/", "stages/"))]
        body["deps"].clear()
        body["deps"].extend(code + data)
    yaml.dump(doc, path)


if __name__ == "__main__":
    main()
