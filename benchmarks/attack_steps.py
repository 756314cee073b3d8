"""Benchmark: the attacks' optimisation steps of this checkout against another checkout's
code, side by side on the shipped world and `attack_base`'s inputs: P4D on 24 prompts
(the PEZ search UnlearnDiff shares) and CCE's textual inversion. Runs alternate between
the two checkouts (`--repeats` rounds, each in a fresh process, loading left out), then
prints the median seconds per step of each, the ratio, and whether the found tokens and
embeddings are the same bit for bit (or how far apart).

    python benchmarks/attack_steps.py OTHER_CHECKOUT [--repeats 2] [--steps 20]

OTHER_CHECKOUT: e.g. `git worktree add /tmp/old fa5b8ee~1`. Both run this checkout's
artifacts. Run it alone: the figures are ratios only when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(steps: int, out: Path) -> None:
    """In a process whose `dm2` is the checkout under test: seconds per P4D iteration and
    per CCE step, and the tokens / embeddings found, written to `out`."""
    import torch
    from safetensors.torch import save_file

    from dm2.attacks.cce import invert_concept
    from dm2.attacks.p4d import p4d_attack
    from dm2.attacks.sweep import attack_settings, load_inputs
    from dm2.core.config import load_params
    from dm2.core.paths import ATTACK_BASE_DIR
    from dm2.models.diffusion import load_pipeline

    models, _, p, key = attack_settings(load_params())
    pipe = load_pipeline(models.diffusion)
    inputs = load_inputs(ATTACK_BASE_DIR / "inputs.safetensors", key)
    n = min(24, len(inputs.prompts))
    start = time.perf_counter()
    p4d = p4d_attack(pipe, inputs.prompts[:n], inputs.x0[:n], replace(p.p4d, budgets=[steps]), p.seed, n, inputs.allowed, restart=1)
    p4d_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    _, _, snapshots, _ = invert_concept(pipe, inputs.concept_latents, replace(p.cce, budgets=[5 * steps]), p.seed, restart=1)
    cce_s = (time.perf_counter() - start) / (5 * steps)
    save_file({"p4d": p4d[-1].tensors["ids"].contiguous(), "cce": snapshots[-1].contiguous()}, out)
    out.with_suffix(".json").write_text(json.dumps({"p4d": p4d_s, "cce": cce_s}))


def run(checkout: Path, steps: int, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, __file__, "--measure", str(out), "--steps", str(steps)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", nargs="?", type=Path, help="the checkout to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="P4D iterations (CCE steps: 5x)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.steps, args.measure)
        return
    if args.other is None or not (args.other / "dm2").is_dir():
        parser.error(f"OTHER_CHECKOUT: {args.other} has no dm2 package")
    import torch
    from safetensors.torch import load_file

    checkouts = {"this": ROOT, "other": args.other.resolve()}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, checkout in checkouts.items():
                times[name].append(run(checkout, args.steps, Path(tmp) / f"{name}{r}.safetensors"))
        found = {name: load_file(Path(tmp) / f"{name}0.safetensors") for name in checkouts}
    for step in ("p4d", "cce"):
        this, other = (statistics.median(t[step] for t in times[name]) for name in checkouts)
        a, b = found["this"][step], found["other"][step]
        same = "same bit for bit" if torch.equal(a, b) else f"differ: {int((a != b).sum())} of {a.numel()} values, by up to {(a.double() - b.double()).abs().max():.2g}"
        print(f"{step}: {this:.3f} s/step here, {other:.3f} s/step there, ratio {other / this:.2f}x; results {same}")


if __name__ == "__main__":
    main()
