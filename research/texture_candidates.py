"""Which texture design can the world's VAE carry? (issue "A world that can draw styles")

The shipped world renders stripes and dots with a 4 px period (2 px bands); its VAE
(8 x 8 x 4 latents) gives them back plain. This study measures, before any world is
retrained, how well a VAE keeps each texture through its round trip for a few candidate
designs: the texture period (4, 8 px) and the latent grid (8 x 8 as today, 16 x 16), each VAE
trained on the same budget with the shipped recipe's loss, and the shipped VAE itself as
the starting point (the study ran on the 4 px world, so its "shipped VAE" is that world's).
Retention is judged by the world's texture judge that learns nothing
(`dm2.judges.pattern`: the colour pattern inside the segmented foreground), checked first
on clean renders of each period.

    python research/texture_candidates.py OUT --steps 300 --train 4000 --heldout 300
    python research/texture_candidates.py OUT --summary    # OUT/summary.md from OUT/results.json
    python research/texture_candidates.py OUT --sampling   # seconds per sampled image, per latent grid

Writes OUT/results.json (per candidate: retention per texture, judge accuracy on the clean
renders, training seconds) as it goes, so a killed run keeps its finished candidates, and
each candidate's held-out renders and reconstructions (OUT/NAME_heldout.npz) to look at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.core.io import write_json  # noqa: E402
from dm2.judges.pattern import PatternJudge  # noqa: E402
from dm2.models.diffusion import load_pipeline  # noqa: E402
from dm2.models.world_sd import world_text_encoder, world_unet, world_vae  # noqa: E402
from dm2.training.world_models import train_vae  # noqa: E402
from dm2.world.params import VaeParams  # noqa: E402
from dm2.world.render import TEXTURES, WorldSpec, sample_world  # noqa: E402

CANDIDATES = {  # name: (texture period in px, latent side)
    "p4_latent8": (4, 8),
    "p8_latent8": (8, 8),
    "p4_latent16": (4, 16),
    "p8_latent16": (8, 16),
}
DOWNSAMPLINGS = {8: 3, 16: 2}  # latent side: the world VAE's downsamplings (3: the shipped design)


def texture_accuracy(images: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Per texture, % of uint8 images the non-learned texture judge calls by their label."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    probs = PatternJudge(with_empty=False).probs(x)["texture"]
    said = [TEXTURES[i] for i in probs.argmax(-1).tolist()]
    return {t: 100.0 * float(np.mean([s == t for s, lab in zip(said, labels) if lab == t])) for t in TEXTURES}


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = torch.cat([vae.decode(vae.encode(x[i : i + 100]).latent_dist.mean).sample for i in range(0, len(x), 100)])
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sampling_seconds(images: int = 32, steps: int = 25, rounds: int = 3) -> dict[str, float]:
    """Seconds per image of DDIM sampling (`steps` steps, classifier-free guidance: two UNet
    passes a step) and the VAE's decoding, for each latent grid, with the shipped designs at
    random weights (the cost does not depend on them); the grids alternate `rounds` times and
    the fastest round counts, so drift on a shared machine hits both alike."""
    torch.manual_seed(0)
    unet, states = world_unet(), torch.randn(2 * images, 77, world_text_encoder().config.hidden_size)
    t = torch.tensor([500] * (2 * images))
    best: dict[str, float] = {}
    for _ in range(rounds):
        for side, downsamplings in DOWNSAMPLINGS.items():
            vae = world_vae(downsamplings)
            latents = torch.randn(2 * images, 4, side, side)
            start = time.perf_counter()
            for _ in range(steps):
                unet(latents, t, encoder_hidden_states=states)
            vae.decode(latents[:images])
            seconds = (time.perf_counter() - start) / images
            best[f"latent{side}"] = min(best.get(f"latent{side}", float("inf")), seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--sampling", action="store_true", help="time sampling per latent grid; writes results.json's `sampling`")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if a.summary:
        return write_summary(results, a.out / "summary.md")
    if a.sampling:
        results["sampling"] = sampling_seconds()
        write_json(results, path)
        return write_summary(results, a.out / "summary.md")
    spec = WorldSpec()  # every shape, colour, background and texture; no empty images
    periods = sorted({4, *(CANDIDATES[c][0] for c in a.candidates)})
    heldout = {period: sample_world(replace(spec, texture_period=period), a.heldout, seed=20_000) for period in periods}
    for period, (held, samples) in heldout.items():
        results.setdefault("judge_on_clean_renders", {})[f"p{period}"] = texture_accuracy(held, [s.texture for s in samples])
    held4, samples4 = heldout[4]
    shipped = load_pipeline(str(ROOT / "artifacts" / "world" / "sd")).vae
    results["shipped_vae_p4"] = {"retention": texture_accuracy(round_trip(shipped, held4), [s.texture for s in samples4])}
    write_json(results, path)
    for name in a.candidates:
        period, side = CANDIDATES[name]
        train_images, _ = sample_world(replace(spec, texture_period=period), a.train, seed=0)
        held, samples = heldout[period]
        start = time.perf_counter()
        images = torch.from_numpy(train_images).permute(0, 3, 1, 2).float() / 255.0
        vae_p = VaeParams(steps=a.steps, batch_size=48, lr=0.002, kl_weight=1e-4)  # the shipped recipe's
        vae = train_vae(images, vae_p, 0, partial(world_vae, DOWNSAMPLINGS[side]))[0]
        seconds = time.perf_counter() - start
        recon = round_trip(vae, held)
        np.savez_compressed(a.out / f"{name}_heldout.npz", renders=held, reconstructions=recon, textures=np.array([s.texture for s in samples]))
        results[name] = {
            "period": period,
            "latent": side,
            "steps": a.steps,
            "train_images": a.train,
            "retention": texture_accuracy(recon, [s.texture for s in samples]),
            "mse": float(np.mean((recon.astype(np.float32) - held.astype(np.float32)) ** 2)),
            "seconds": round(seconds, 1),
        }
        write_json(results, path)
        print(name, results[name], flush=True)
    write_summary(results, a.out / "summary.md")


def write_summary(results: dict, path: Path) -> None:
    lines = ["| design | period px | latents | VAE steps | retention plain / striped / dotted % | pixel MSE | training s |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    if "shipped_vae_p4" in results:
        r = results["shipped_vae_p4"]["retention"]
        lines.append(f"| shipped VAE | 4 | 8 x 8 | 1000 | {r['plain']:.1f} / {r['striped']:.1f} / {r['dotted']:.1f} | | |")
    for name in CANDIDATES:
        if name in results:
            c, r = results[name], results[name]["retention"]
            lines.append(f"| {name} | {c['period']} | {c['latent']} x {c['latent']} | {c['steps']} | {r['plain']:.1f} / {r['striped']:.1f} / {r['dotted']:.1f} | {c['mse']:.1f} | {c['seconds']:.0f} |")
    if "sampling" in results:
        cost = results["sampling"]
        lines += ["", "Seconds per sampled image (25 DDIM steps with guidance, and decoding; this CPU, one run): " + "; ".join(f"{k}: {v:.3f}" for k, v in cost.items()) + f" ({cost['latent16'] / cost['latent8']:.1f} x for 16 x 16)"]
    judge = results.get("judge_on_clean_renders", {})
    lines += ["", "The texture judge on clean renders (plain / striped / dotted %): " + "; ".join(f"{k}: {v['plain']:.1f} / {v['striped']:.1f} / {v['dotted']:.1f}" for k, v in judge.items())]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
