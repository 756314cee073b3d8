"""Benchmark: time to the first error for a bad param, through the stage entry point
(`python -m stages erase`, which checks params.yaml before heavy imports) and through the
stage module run directly (`python -m stages.erase`, which imports torch, diffusers and
the rest first), side by side, each in a scratch folder holding the bad params.yaml.

    python benchmarks/params_check.py          # 3 runs of each, on an otherwise idle machine
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A value both routes refuse (a per-section check): mine.lr must be positive.
BAD = ("  lr: 0.1 ", "  lr: -0.1 ")
ROUTES = {"entry point (python -m stages erase)": ["-m", "stages", "erase"], "module run directly (python -m stages.erase)": ["-m", "stages.erase"]}


def time_route(args: list[str], folder: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=folder, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode == 0 or "mine.lr" not in done.stderr:
        raise SystemExit(f"{args}: expected the mine.lr error, got:\n{done.stderr[-1000:]}")
    return seconds, done.stderr.strip().splitlines()[-1]


def main(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = (ROOT / "params.yaml").read_text()
        assert BAD[0] in text
        (folder / "params.yaml").write_text(text.replace(*BAD, 1))
        for name in ("artifacts", "data"):
            (folder / name).symlink_to(ROOT / name)
        times: dict[str, list[float]] = {name: [] for name in ROUTES}
        messages = {}
        for _ in range(repeats):  # interleaved, so both routes see the same machine load
            for name, args in ROUTES.items():
                seconds, messages[name] = time_route(args, folder)
                times[name].append(seconds)
        for name, values in times.items():
            print(f"{name:48s} median {statistics.median(values):5.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
        entry, direct = (statistics.median(v) for v in times.values())
        print(f"{'ratio (direct / entry point)':48s} {direct / entry:5.1f}x")
        for name, message in messages.items():
            print(f"{name}: {message}")


if __name__ == "__main__":
    main()
