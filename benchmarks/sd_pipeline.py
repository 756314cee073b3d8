"""Benchmark: the whole pipeline on the SD-v1.4-shaped test bed (`dm2.models.testbed`), stage by
stage, with budgets cut to a few steps. Prints per stage: exit status, wall time and peak
resident memory (the stage's process alone). The shipped world's outputs are never
touched: the stages run in a scratch copy of the repository with the test bed's preset
applied to its params.yaml.

    python benchmarks/sd_pipeline.py                        # test bed in artifacts/sd_testbed
    python benchmarks/sd_pipeline.py --testbed DIR --work DIR --latent-size 32
    python benchmarks/sd_pipeline.py --until erase          # pool and erase only

The test bed (about 3 GB) is written first if DIR has none. On 2 cores, about 15 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.models.testbed import write_testbed  # noqa: E402
from dm2.presets import apply_preset  # noqa: E402

# The concept stages in the pipeline's order, as `python -m stages` arguments; one baseline
# (UCE, closed form) and its comparison stand for the five.
STAGES = [
    ["pool"], ["erase"], ["evaluate", "base"], ["evaluate"], ["attack", "base"], ["attack"],
    ["baseline", "uce"], ["compare", "uce"], ["report"],
]  # fmt: skip
COPIED = ["dm2", "stages", "data", "artifacts/world", "params.yaml"]


@dataclass
class StageRun:
    stage: str
    returncode: int
    seconds: float
    peak_gib: float
    tail: str  # the last lines of its output, when it failed


def scratch_copy(work: Path, preset: Path) -> None:
    """The files the stages read, copied under `work`, its params.yaml with `preset` applied."""
    for name in COPIED:
        src, dst = ROOT / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    params = work / "params.yaml"
    params.write_text(apply_preset(params.read_text(), yaml.safe_load(preset.read_text()), str(preset)))


def run_stage(args: list[str], work: Path) -> StageRun:
    """One stage in its own process; its peak memory from the kernel's accounting of that process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(work)}
    log = tempfile.TemporaryFile(mode="w+")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "stages", *args], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - start
    code = os.waitstatus_to_exitcode(status)
    log.seek(0)
    tail = "\n".join(log.read().splitlines()[-15:]) if code else ""
    return StageRun(" ".join(args), code, seconds, usage.ru_maxrss / 2**20, tail)  # ru_maxrss: KiB on Linux


def prepare(testbed: Path, work: Path, latent_size: int = 32) -> None:
    """Write the test bed if `testbed` has none and copy the repository to `work`."""
    if not (testbed / "preset.yaml").is_file():
        write_testbed(testbed, latent_size)
    scratch_copy(work, testbed / "preset.yaml")


def run_pipeline(work: Path, stages: list[list[str]] = STAGES, on_stage=None) -> list[StageRun]:
    """Run `stages` in order in the prepared `work`; stops at the first failure."""
    runs = []
    for args in stages:
        runs.append(run_stage(args, work))
        if on_stage is not None:
            on_stage(runs[-1])
        if runs[-1].returncode:
            break
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", type=Path, default=ROOT / "artifacts/sd_testbed")
    parser.add_argument("--work", type=Path, default=None, help="scratch copy of the repository (default: a temporary folder)")
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--until", default="report", help="the last stage to run, e.g. erase (default: report, all)")
    args = parser.parse_args()
    names = [" ".join(stage) for stage in STAGES]
    if args.until not in names:
        raise SystemExit(f"--until: {args.until!r} is not one of {names}")
    work = args.work or Path(tempfile.mkdtemp(prefix="dm2_sd_"))
    print(f"test bed {args.testbed.resolve()}, scratch copy {work}")
    print(f"{'stage':16s} {'status':>6s} {'wall s':>8s} {'peak GiB':>9s}")
    prepare(args.testbed.resolve(), work, args.latent_size)
    show = lambda r: print(f"{r.stage:16s} {r.returncode:6d} {r.seconds:8.1f} {r.peak_gib:9.2f}", flush=True)  # noqa: E731
    runs = run_pipeline(work, STAGES[: names.index(args.until) + 1], on_stage=show)
    if runs[-1].returncode:
        raise SystemExit(f"{runs[-1].stage} failed:\n{runs[-1].tail}")
    print(f"{'total':16s} {'':6s} {sum(r.seconds for r in runs):8.1f} {max(r.peak_gib for r in runs):9.2f}")


if __name__ == "__main__":
    main()
