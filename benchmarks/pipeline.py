"""Benchmark: wall time of every concept stage of the pipeline (all that follows the
shipped world), each run alone with `dvc repro --force --single-item`, in the pipeline's
order. Prints seconds per stage and the sums the issues set budgets on:
`pool` + `erase`, `evaluate_base` + `evaluate`, `attack_base` + `attack`, and the whole comparison.

    python benchmarks/pipeline.py              # every concept stage (about 45 min on 2 cores)
    python benchmarks/pipeline.py pool erase   # some of them

Run it on an otherwise idle machine: the stages use every core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ["esd_x", "esd_u", "uce", "learnable_prompts", "sld"]


def concept_stages() -> list[str]:
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["compare"]["methods"]
    return [
        "pool", "erase", *(f"baseline@{m}" for m in BASELINES), "evaluate_base", "evaluate", "attack_base", "attack",
        *(f"compare@{m}" for m in methods), "report",
    ]  # fmt: skip


def run_stage(stage: str) -> float:
    if stage == "erase":
        # `erase` keeps a checkpoint (a persist output) and would resume from its last loop:
        # remove it so the stage runs every loop, as a fresh run does. It is written again.
        (ROOT / "artifacts/methods/dm2/checkpoint.safetensors").unlink(missing_ok=True)
    start = time.time()
    done = subprocess.run(
        ["dvc", "repro", "--force", "--single-item", stage], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{done.stderr[-2000:]}")
    return time.time() - start


def main() -> None:
    stages = sys.argv[1:] or concept_stages()
    seconds = {}
    for stage in stages:
        seconds[stage] = run_stage(stage)
        print(f"{stage:28s} {seconds[stage]:7.1f} s", flush=True)
    groups = {
        "pool + erase": ["pool", "erase"],
        "evaluate (base once, then the erased model)": ["evaluate_base", "evaluate"],
        "attack (base once, then the erased model)": ["attack_base", "attack"],
        "comparison (all of the above)": list(seconds),
    }
    for name, members in groups.items():
        if all(m in seconds for m in members):
            print(f"{name:28s} {sum(seconds[m] for m in members) / 60:7.1f} min")


if __name__ == "__main__":
    main()
