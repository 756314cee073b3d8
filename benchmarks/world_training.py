"""Benchmark: projected wall time of training the shapes world on this machine.

Times a few optimisation steps of each world-training stage at the batch sizes in
params.yaml and multiplies by the configured step counts, plus rendering the training
images (fixed costs of each stage other than rendering are left out). Prints one line per model and the total, in minutes.

    python benchmarks/world_training.py [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm2.core.config import load_params, parse_section  # noqa: E402
from dm2.training.world_models import train_text_unet, train_vae, train_world_clip, train_world_judge
from dm2.world.params import ClipTrainParams, JudgeTrainParams, UnetParams, VaeParams, WorldParams
from dm2.world.splits import world_split


def seconds_per_step(run, steps: int) -> float:
    """Difference of a short and a long run, so fixed costs (building the model, the
    VAE's final pass over all latents, held-out metrics) cancel out."""
    timings = []
    for n in (2, 2 + steps):
        start = time.perf_counter()
        run(n)
        timings.append(time.perf_counter() - start)
    return (timings[1] - timings[0]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    args = parser.parse_args()
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    vae_p = parse_section(VaeParams, params["train_vae"], "train_vae")
    unet_p = parse_section(UnetParams, params["train_unet"], "train_unet")
    clip_p = parse_section(ClipTrainParams, params["train_clip"], "train_clip")
    judge_p = parse_section(JudgeTrainParams, params["train_judge"], "train_judge")

    start = time.perf_counter()
    images, samples = world_split(world, "train")
    render = time.perf_counter() - start
    small = WorldParams(**{**world.__dict__, "train_images": 512, "heldout_images": 64})
    latents = torch.randn(len(images), 4, 8, 8)
    captions = [s.caption for s in samples]

    def with_steps(p, n):
        return type(p)(**{**p.__dict__, "steps": n})

    rows = {
        "vae": (seconds_per_step(lambda n: train_vae(images, with_steps(vae_p, n), 0), args.steps), vae_p.steps),
        "unet+text": (seconds_per_step(lambda n: train_text_unet(latents, captions, with_steps(unet_p, n), 0), args.steps), unet_p.steps),
        "clip": (seconds_per_step(lambda n: train_world_clip(small, with_steps(clip_p, n)), args.steps), clip_p.steps),
        "judge": (seconds_per_step(lambda n: train_world_judge(small, with_steps(judge_p, n)), args.steps), judge_p.steps),
    }
    total = 3 * render  # the diffusion, CLIP and judge stages each render the training split
    print(f"threads: {torch.get_num_threads()}, rendering {len(images)} images: {render:.1f} s (x3 stages)")
    for name, (per_step, steps) in rows.items():
        total += per_step * steps
        print(f"{name:10s} {per_step * 1000:7.1f} ms/step x {steps:5d} steps = {per_step * steps / 60:5.1f} min")
    print(f"total (projected): {total / 60:.1f} min")


if __name__ == "__main__":
    main()
