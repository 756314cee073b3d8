"""Compare the outputs of two checkouts run with the same params and thread count: every
file under the given paths, byte for byte, except what records time or code identity
(JSON `seconds` keys, the `fingerprint` / `code` keys that name the code version, and the
same in safetensors metadata), which is compared with those keys left out.

    python tools/same_outputs.py OLD_CHECKOUT NEW_CHECKOUT artifacts/methods/dm2 metrics ...

Prints one line per file (same / differs / only in one) and exits 1 if any differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

VOLATILE = {"seconds", "fingerprint", "code"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
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
            return {k: _json_text(v) for k, v in ma.items() if k not in VOLATILE} == {k: _json_text(v) for k, v in mb.items() if k not in VOLATILE}
    return False


def main() -> None:
    old, new, *paths = (Path(p) for p in sys.argv[1:])
    bad = 0
    for rel in paths:
        files = sorted({f.relative_to(root) for root in (old, new) for f in (root / rel).rglob("*") if f.is_file()} | ({rel} if (old / rel).is_file() else set()))
        for f in files:
            a, b = old / f, new / f
            verdict = "only in one" if not (a.is_file() and b.is_file()) else ("same" if same(a, b) else "differs")
            bad += verdict != "same"
            print(f"{verdict:12s} {f}  {hashlib.md5(b.read_bytes()).hexdigest()[:8] if b.is_file() else ''}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
