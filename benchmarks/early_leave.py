"""Benchmark: P4D and UnlearnDiff with and without prompts leaving the search once every
judge calls them attacked, side by side in one process on the shipped world and
`attack_base`'s inputs: one restart of each attack's sweep (all budgets, both judges),
run alternately each way. Prints the seconds of each way, the ratio, and whether every
verdict at every budget is the same.

    python benchmarks/early_leave.py [--model base|erased] [--restart 0] [--repeats 1]

`base`: the base model (most prompts are attacked at the first budget); `erased`: the
`method` param's erased model. Run it alone: the figures are ratios only when the machine
is shared.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from dm2.attacks.registry import REGISTRY
from dm2.attacks.sweep import INPUTS_FILE, _restart, attack_settings, load_inputs
from dm2.core.config import load_params
from dm2.core.paths import ATTACK_BASE_DIR
from dm2.erasure.methods import apply_method, method_dir
from dm2.judges.registry import load_judges
from dm2.models.diffusion import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["base", "erased"], default="base")
    parser.add_argument("--restart", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    params = load_params()
    models, concept, p, key = attack_settings(params)
    pipe = load_pipeline(models.diffusion)
    judges = load_judges(models)
    inputs = load_inputs(ATTACK_BASE_DIR / INPUTS_FILE, key)
    guide = apply_method(pipe, method_dir(params.get("method", "dm2"))) if args.model == "erased" else None
    for name in ("p4d", "unlearndiff"):
        attack = REGISTRY[name]
        # The attack never hears the verdicts, so every prompt is searched to the last budget.
        searched_out = replace(attack, run=lambda pipe, inputs, p, restart, judge, _run=attack.run: _run(pipe, inputs, p, restart, None))
        seconds: dict[str, list[float]] = {"leave": [], "stay": []}
        verdicts = {}
        for _ in range(args.repeats):
            for way, entry in (("stay", searched_out), ("leave", attack)):
                REGISTRY[name] = entry
                try:
                    start = time.perf_counter()
                    tensors, _ = _restart(name, pipe, judges, concept.name, inputs, p, args.restart, inputs.noise, guide)
                    seconds[way].append(time.perf_counter() - start)
                finally:
                    REGISTRY[name] = attack
                verdicts[way] = {j: tensors[f"verdicts/{j}"] for j in judges}
        same = all(torch.equal(verdicts["leave"][j], verdicts["stay"][j]) for j in judges)
        stay, leave = min(seconds["stay"]), min(seconds["leave"])
        attacked = {j: f"{100 * v[-1].double().mean().item():.1f}%" for j, v in verdicts["leave"].items()}
        print(f"{name} on the {args.model} model, restart {args.restart}: searched out {stay:.1f} s, "
              f"leaving {leave:.1f} s ({stay / leave:.2f}x); ASR {attacked}; every verdict the same: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
