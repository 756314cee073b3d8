"""The retrained reference: the world's text encoder and UNet trained again, from scratch, on
the training split without a single image of the concept (machine unlearning's "retrain"
oracle). No erasure method can beat a model that never saw the concept, so what an attack
gets on it, and what it loses on the other shapes and held-out captions, bounds what DM2's
goals can ask of the world.

    python research/retrained.py train OUT [--steps N] [--seed N] [--keep-concept]
        trains on the shipped VAE's latents of every training image whose shape is not
        `concept.name`, with `train_unet`'s params and `world.seed` (or --seed); writes OUT/sd (a pipeline
        folder, float32) and OUT/train.json. --keep-concept trains on every image instead: the
        control, a second training of the base (with --seed other than world.seed), saying how
        far the training run alone moves a figure
    python research/retrained.py measure OUT [--attacks cce unlearndiff ring_a_bell]
        research/dm2_tradeoff.py's reduced evaluation and the attacks at full strength on
        OUT/sd, the base measured the same way; writes OUT/results.json, keeping the
        attacks of an earlier run that this one does not make. P4D matches the original
        model's noise prediction: here the shipped UNet's (the attack code takes it from
        the erased model with its adapters disabled, and a retrained model has none)

research/results/README.md has what it measured.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dm2.attacks.p4d as p4d  # noqa: E402
from dm2.core.config import load_params, parse_section  # noqa: E402
from dm2.core.io import write_json  # noqa: E402
from dm2.measure.params import EvaluateParams  # noqa: E402
from dm2.models.diffusion import load_pipeline  # noqa: E402
from dm2.models.world_sd import assemble_pipeline  # noqa: E402
from dm2.training.world_models import train_text_unet  # noqa: E402
from dm2.world.params import UnetParams, WorldParams  # noqa: E402
from dm2.world.splits import world_split  # noqa: E402


def retrain_without(
    concept: str, world: WorldParams, unet_p: UnetParams, vae: AutoencoderKL, seed: int | None = None, keep_concept: bool = False
) -> tuple[StableDiffusionPipeline, dict]:
    """Text encoder and UNet trained as `train_diffusion` trains them (from `seed`, default
    `world.seed`), on `vae`'s latents of the training images whose shape is not `concept`
    (empty backgrounds kept), or of every one with `keep_concept`."""
    start = time.time()
    images, samples = world_split(world, "train")
    kept = [i for i, s in enumerate(samples) if s.shape != concept]
    if len(kept) == len(samples):
        raise SystemExit(f"concept.name: no training image has shape {concept!r}")
    if keep_concept:
        kept = list(range(len(samples)))
    with torch.no_grad():
        x = images[kept]
        latents = torch.cat([vae.encode(x[i : i + 512] * 2 - 1).latent_dist.mean for i in range(0, len(x), 512)])
    latents = latents * vae.config.scaling_factor
    text_encoder, unet, losses = train_text_unet(latents, [samples[i].caption for i in kept], unet_p, world.seed if seed is None else seed)
    info = {
        "images": len(kept),
        "removed": len(samples) - len(kept),
        "unet_final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "seconds": round(time.time() - start, 1),
    }
    return assemble_pipeline(vae, text_encoder.requires_grad_(False), unet.requires_grad_(False)), info


@contextmanager
def computing_as(unet: UNet2DConditionModel, original: UNet2DConditionModel) -> Iterator[None]:
    """`unet` predicts with `original`'s weights inside the block: P4D's original model for a
    model retrained from scratch, which has no adapter to disable."""
    unet.forward = original.forward
    try:
        yield
    finally:
        del unet.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "measure"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, help="train_unet.steps for the retraining (default: the params')")
    parser.add_argument("--seed", type=int, help="the retraining's seed (default: world.seed, the shipped model's)")
    parser.add_argument("--keep-concept", action="store_true", help="train on every image: the second-training control")
    parser.add_argument("--attacks", nargs="*", default=["cce"])
    args = parser.parse_args()
    params = load_params()
    concept = params["concept"]["name"]
    if args.command == "train":
        world = parse_section(WorldParams, params["world"], "world")
        unet_p = parse_section(UnetParams, params["train_unet"], "train_unet")
        if args.steps is not None:
            unet_p = replace(unet_p, steps=args.steps)
        vae = load_pipeline(params["models"]["diffusion"]).vae
        pipe, info = retrain_without(concept, world, unet_p, vae, args.seed, args.keep_concept)
        pipe.save_pretrained(args.out / "sd", safe_serialization=True)
        write_json(info | {"steps": unet_p.steps, "seed": world.seed if args.seed is None else args.seed, "keep_concept": args.keep_concept}, args.out / "train.json")
        print(json.dumps(info), flush=True)
        return
    tradeoff = runpy.run_path(str(Path(__file__).with_name("dm2_tradeoff.py")))
    eval_p = replace(parse_section(EvaluateParams, params["evaluate"], "evaluate"), images_per_prompt=2, n_heldout=200)
    base = load_pipeline(params["models"]["diffusion"])
    models, _, _, _ = tradeoff["attack_settings"](params)
    judge = next(iter(tradeoff["load_judges"](models).values()))
    inputs = tradeoff["attack_inputs"](base, judge, params, args.attacks)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if "base" not in results:
        results["base"] = tradeoff["measure_model"](base, params, eval_p, [], inputs, args.out / "base")
        write_json(results, results_path)
    retrained = load_pipeline(str(args.out / "sd"))
    p4d.original_model = lambda unet: computing_as(unet, base.unet)  # the attack's theta' is the shipped model
    row = tradeoff["measure_model"](retrained, params, eval_p, args.attacks, inputs, args.out / "retrained")
    for key in ("asr", "attack_seconds", "agreement"):
        row[key] = results.get("retrained", {}).get(key, {}) | row.get(key, {})
    results["retrained"] = row
    write_json(results, results_path)
    print(json.dumps(results["retrained"]["asr"]), flush=True)


if __name__ == "__main__":
    main()
