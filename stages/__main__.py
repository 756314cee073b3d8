"""Entry point of every stage: `python -m stages STAGE [ARG]` (the `cmd` of each dvc.yaml stage).

It checks the whole params.yaml first (every section, then the checks across sections),
before torch or diffusers are imported, so a bad value is a one-line error in about a
second instead of after the models load. Then it runs the stage's `main()`.
"""

from __future__ import annotations

import importlib
import os
import sys

from dm2.core.config import InputError, ParamsError, load_params
from dm2.params import check_params

STAGES = (
    "train_diffusion",
    "train_clip",
    "train_judge",
    "world_check",
    "prompts",
    "pool",
    "erase",
    "baseline",
    "evaluate",
    "attack",
    "compare",
    "report",
)
# Stages whose image generation (pool, evaluate) or attack restarts (attack, compare) are
# spread over the processes of `accelerate launch` (`dm2.core.sharding`); the others run in one.
MULTI_PROCESS = ("pool", "evaluate", "attack", "compare")
# Stages that, on a CPU, run as the `cpu_processes` param's number of one-thread processes
# (`dm2.core.sharding.launch`), unless already launched: two one-thread processes get more done
# on 2 cores than one at 2 threads, and one thread per process gives the same figures on
# any CPU. `pool` makes one batch and gains nothing.
CPU_LAUNCHED = ("evaluate", "attack", "compare")
# Stages whose diffusion-model passes run at the `precision` param (`dm2.core.precision`); the
# world's own training and check always run in float32.
AT_PRECISION = ("pool", "erase", "baseline", "evaluate", "attack", "compare")
# The `models` files the world's training stages write: checked by what reads them, not before.
MADE_BY = {"train_diffusion": ("diffusion",), "train_clip": ("clip_pretrained",), "train_judge": ("judge_path",)}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m stages STAGE [ARG]; stages: {', '.join(STAGES)}")
    try:
        params = check_params(load_params(), made=MADE_BY.get(argv[0], ()))
    except ParamsError as e:
        raise SystemExit(f"params.yaml: {e}") from None
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    if processes > 1 and argv[0] not in MULTI_PROCESS:
        raise SystemExit(f"{argv[0]}: runs in one process, not {processes}; of the stages only {', '.join(MULTI_PROCESS)} spread over processes")
    from dm2.core.devices import resolve_device

    device = resolve_device(params["device"])
    if device.type == "cpu" and argv[0] in CPU_LAUNCHED and "WORLD_SIZE" not in os.environ:
        n = params["cpu_processes"]
        if n > 1:
            from dm2.core.sharding import launch

            print(f"{argv[0]}: {n} one-thread CPU processes (cpu_processes)", flush=True)
            raise SystemExit(launch([sys.executable, "-m", "stages", *argv], n))
        import torch

        torch.set_num_threads(1)  # as each launched process runs: the same figures either way
    stage = importlib.import_module(f"stages.{argv[0]}")
    sys.argv = [stage.__file__, *argv[1:]]  # the stage reads its argument as when run alone
    from dm2.core.precision import model_precision

    precision = params["precision"] if argv[0] in AT_PRECISION else "fp32"
    try:
        with model_precision(precision, device):
            stage.main()
    except (ParamsError, InputError, FileNotFoundError) as e:  # bad input: one line naming it; bugs keep their traceback
        raise SystemExit(f"{argv[0]}: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
