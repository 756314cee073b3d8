"""Benchmark: `precision: bf16` against fp32 on the shipped world, side by side in one run.

Times the units the pipeline's cost is made of, interleaved (fp32, bf16, fp32, ...) so both
see the same machine: sampling a batch of 64 images (evaluate, attack images), an attack
step (text encoder and UNet forward and backward to the prompt, P4D / UnlearnDiff / CCE),
a Ring-A-Bell generation (text encoder on 48 x 64 sequences) and a DM2 mining step. Then
the agreement: the same prompts and seeds sampled at both precisions, judged by both judges.

    python benchmarks/precision.py [--images 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.attacks.common import states  # noqa: E402
from dm2.core.precision import model_precision  # noqa: E402
from dm2.erasure.dark_miner_steps import mining_loss  # noqa: E402
from dm2.judges.registry import judge_concept, load_judge  # noqa: E402
from dm2.models.diffusion import encode_prompts, encode_token_embeddings, free_embedding_states, generate, generate_latents, load_pipeline, noised
from dm2.world.prompts import read_prompts  # noqa: E402

CPU = torch.device("cpu")


def units(pipe) -> dict:
    """name -> a function doing one unit of work."""
    prompts = read_prompts(ROOT / "data/prompts/circle.csv")
    cond64 = encode_prompts(pipe, prompts[:64])
    ids = pipe.tokenizer(prompts[:24], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x0 = generate_latents(pipe, cond64[:24], 0, 5, 5.0)
    ring_ids = pipe.tokenizer(prompts[:48] * 64, padding="max_length", max_length=77, return_tensors="pt").input_ids
    pool = x0[:3]
    c = pipe.text_encoder.get_input_embeddings()(ids[:1, 1:33]).detach()

    def attack_step() -> None:
        embeds = pipe.text_encoder.get_input_embeddings()(ids).detach().requires_grad_(True)
        x_t, noise, t = noised(pipe.scheduler, x0, torch.Generator().manual_seed(0))
        pred = pipe.unet(x_t, t, encoder_hidden_states=encode_token_embeddings(pipe.text_encoder, embeds)).sample
        (pred.float() - noise).pow(2).mean().backward()

    def mining_step() -> None:
        leaf = c.clone().requires_grad_(True)
        mining_loss(pipe.unet, pipe.scheduler, pool, leaf, lambda e: free_embedding_states(pipe, e), torch.Generator().manual_seed(0)).backward()

    return {
        "sample 64 images, 25 steps": lambda: generate_latents(pipe, cond64, 0, 25, 5.0),
        "attack step (24 prompts, fwd+bwd)": attack_step,
        "ring-a-bell generation (3,072 seqs)": lambda: states(pipe.text_encoder, ring_ids),
        "mining step (k = 3, fwd+bwd)": mining_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = load_pipeline(str(ROOT / "artifacts/world/sd"))
    for p in pipe.unet.parameters():
        p.requires_grad_(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    times: dict[str, dict[str, list[float]]] = {}
    for name, fn in units(pipe).items():
        times[name] = {"fp32": [], "bf16": []}
        for mode in ("fp32", "bf16"):  # warm-up
            with model_precision(mode, CPU):
                fn()
        for _ in range(args.repeats):
            for mode in ("fp32", "bf16"):
                with model_precision(mode, CPU):
                    start = time.perf_counter()
                    fn()
                    times[name][mode].append(time.perf_counter() - start)
        a, b = (statistics.median(times[name][m]) for m in ("fp32", "bf16"))
        print(f"{name:40s} fp32 {a:7.3f} s  bf16 {b:7.3f} s  speed-up {a / b:4.2f}x")

    # Agreement: the evaluation's concept prompts, one image each, same seeds.
    prompts = read_prompts(ROOT / "data/prompts/circle.csv")[: args.images]
    judges = {"world": load_judge("world", str(ROOT / "artifacts/world/judge.safetensors")), "geometric": load_judge("geometric", "")}
    out = {}
    for mode in ("fp32", "bf16"):
        with model_precision(mode, CPU):
            out[mode] = generate(pipe, encode_prompts(pipe, prompts), 0, 25, 5.0)
    diff = (out["bf16"] - out["fp32"]).abs()
    print(f"{len(prompts)} images: pixel |bf16 - fp32| mean {diff.mean():.4f}, 99th percentile {diff.flatten().quantile(0.99):.4f}, max {diff.max():.4f}")
    for name, judge in judges.items():
        verdict = {m: judge_concept(judge, imgs, "circle")[1].bool() for m, imgs in out.items()}
        same = (verdict["fp32"] == verdict["bf16"]).float().mean() * 100
        print(
            f"{name:9s} judge: Ratio fp32 {verdict['fp32'].float().mean() * 100:5.1f} %, bf16 {verdict['bf16'].float().mean() * 100:5.1f} %; "
            f"same verdict on {same:.1f} % of images"
        )


if __name__ == "__main__":
    main()
