"""Hold two versions of the code to the same outputs.

Compare two checkouts run with the same params and thread count: every file under the
given paths, byte for byte, except what records time or code identity (JSON `seconds`
keys and `*_seconds` ones, the `fingerprint` / `code` keys that name the code version, and
the same in safetensors metadata), which is compared with those keys left out.

    python dev/same_outputs.py compare OLD_CHECKOUT NEW_CHECKOUT artifacts/methods/dm2 metrics ...

Or run every stage of dvc.yaml, the shipped ones included (the world's training, the
baselines, compare), on the tiny budgets of dev/tiny_params.yaml in a copy of each
checkout, one thread, each stage's declared outputs removed first as `dvc repro` does, and
compare every output dvc.yaml declares:

    python dev/same_outputs.py tiny OLD_CHECKOUT NEW_CHECKOUT

Prints one line per file (same / differs / only in one) and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

VOLATILE = {"seconds", "fingerprint", "code"}


def _volatile(key: str) -> bool:
    """Keys that record time (`seconds`, `vae_seconds`) or the code's identity."""
    return key in VOLATILE or key.endswith("_seconds")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _json_text(value: str) -> Any:
    try:
        return _strip(json.loads(value))
    except json.JSONDecodeError:
        return value


def same(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix == ".json":
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    if a.suffix == ".safetensors":
        with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
            if set(fa.keys()) != set(fb.keys()) or not all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()):
                return False
            ma, mb = fa.metadata() or {}, fb.metadata() or {}
            return {k: _json_text(v) for k, v in ma.items() if not _volatile(k)} == {k: _json_text(v) for k, v in mb.items() if not _volatile(k)}
    return False


def compare(old: Path, new: Path, paths: list[Path]) -> int:
    """Print a verdict per file under `paths` in both trees; the number that are not the same."""
    bad = 0
    for rel in paths:
        files = sorted({f.relative_to(root) for root in (old, new) for f in (root / rel).rglob("*") if f.is_file()} | ({rel} if (old / rel).is_file() or (new / rel).is_file() else set()))
        for f in files:
            a, b = old / f, new / f
            verdict = "only in one" if not (a.is_file() and b.is_file()) else ("same" if same(a, b) else "differs")
            bad += verdict != "same"
            print(f"{verdict:12s} {f}  {hashlib.md5(b.read_bytes()).hexdigest()[:8] if b.is_file() else ''}")
    return bad


TINY = Path(__file__).with_name("tiny_params.yaml")


def _merge(base: dict, over: dict) -> dict:
    return {k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v for k, v in {**base, **over}.items()}


def tiny_copy(checkout: Path, dest: Path) -> Path:
    """The checkout's files (tracked and untracked, not ignored), with tiny params."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=checkout, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        src = checkout / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(_merge(params, yaml.safe_load(TINY.read_text())), sort_keys=False))
    return dest


def stage_outputs(root: Path) -> dict[str, list[str]]:
    """Per stage command (`train_clip`, `baseline esd_x`), the outputs dvc.yaml declares for it,
    in dvc.yaml's order (which runs every stage after those it reads from)."""
    outs: dict[str, list[str]] = {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    for body in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        items = body.get("foreach", [None])
        if isinstance(items, str):  # `${compare.methods}`: a list from params.yaml
            value = params
            for key in items.strip("${}").split("."):
                value = value[key]
            items = value
        body = body.get("do", body)
        for item in items:
            command = " ".join(body["cmd"].split()[3:]).replace("${item}", str(item))
            paths = [next(iter(e)) if isinstance(e, dict) else e for key in ("outs", "metrics", "plots") for e in body.get(key, [])]
            outs[command] = [p.replace("${item}", str(item)) for p in paths]
    return outs


def run_stages(root: Path) -> None:
    """Each stage as `dvc repro` runs it: its declared outputs removed first, then its command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    for stage, outs in stage_outputs(root).items():
        for rel in outs:
            path = root / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", "stages", *stage.split()], cwd=root, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{root}: stage {stage!r} failed:\n{done.stderr[-3000:]}")
        print(f"{root.name}: {stage} done", flush=True)


def tiny(old: Path, new: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        copies = [tiny_copy(old, Path(tmp) / "old"), tiny_copy(new, Path(tmp) / "new")]
        with ThreadPoolExecutor(2) as pool:  # the two checkouts side by side, one thread each
            list(pool.map(run_stages, copies))
        declared = {Path(p) for paths in stage_outputs(copies[1]).values() for p in paths}
        return compare(*copies, sorted(declared))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare", help="compare the outputs two checkouts already hold")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("paths", type=Path, nargs="+")
    t = sub.add_parser("tiny", help="run every stage on tiny budgets in a copy of each checkout, then compare")
    t.add_argument("old", type=Path)
    t.add_argument("new", type=Path)
    a = parser.parse_args()
    bad = compare(a.old, a.new, a.paths) if a.mode == "compare" else tiny(a.old.resolve(), a.new.resolve())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
