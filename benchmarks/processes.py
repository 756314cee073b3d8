"""Benchmark: on a 2-core CPU, one process at 2 threads against two 1-thread processes side
by side, for the kernels the attack and evaluation stages spend their time in: CCE's
textual-inversion steps (UNet forward + backward, batch 8), image generation (batches of 64,
25 steps) and Ring-A-Bell's fitness (the text encoder on 24 x 62 sequences). Prints each
kernel's seconds both ways and the ratio of work done per second.

    python benchmarks/processes.py            # about 4 minutes on 2 cores; run it alone
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"cce": 200, "generate": 4, "text_encoder": 20}  # units of work per process


def kernel(name: str, n: int) -> float:
    """Seconds for `n` units of one kernel on the shipped world (in this process), after the
    imports and the model loading, which are left out of the figures."""
    import torch

    sys.path.insert(0, str(ROOT))
    from dm2.attacks.cce import invert_concept
    from dm2.attacks.common import fixed_sequences, states
    from dm2.attacks.params import AttacksParams
    from dm2.core.config import load_params, parse_section
    from dm2.models.diffusion import encode_prompts, generate, load_pipeline

    pipe = load_pipeline(str(ROOT / "artifacts/world/sd"))
    p = parse_section(AttacksParams, load_params(ROOT / "params.yaml")["attacks"], "attacks")
    g = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    start = time.time()
    if name == "cce":
        invert_concept(pipe, torch.randn(24, 4, size, size, generator=g), replace(p.cce, budgets=[n]), 0)
    elif name == "generate":
        cond = encode_prompts(pipe, ["a red circle"] * 64)
        for i in range(n):
            generate(pipe, cond, i, 25, 5.0)
    else:
        ids = fixed_sequences(pipe.tokenizer, torch.randint(1000, 2000, (24 * 62, 8), generator=g))
        with torch.no_grad():
            for _ in range(n):
                states(pipe.text_encoder, ids)
    return time.time() - start


def timed(name: str, n: int, threads: int, copies: int) -> float:
    """The slowest kernel time of `copies` processes at `threads` threads each, started
    together (their loading overlaps, so the kernels run side by side)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--kernel", name, str(n)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(copies)]
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"{name}: a benchmark process failed")
    return max(float(out.split()[-1]) for out in outs)


def main() -> None:
    if sys.argv[1:2] == ["--kernel"]:
        print(kernel(sys.argv[2], int(sys.argv[3])))
        return
    for name, n in KERNELS.items():
        one = timed(name, n, threads=2, copies=1)
        two = timed(name, n, threads=1, copies=2)
        print(f"{name:13s} one process x 2 threads {one:6.1f} s | two processes x 1 thread {two:6.1f} s (twice the work) | ratio {2 * one / two:.2f}x", flush=True)


if __name__ == "__main__":
    main()
