"""Benchmark: the cost of one Dark Miner loop at Stable Diffusion v1.4's scale.

1. Counted FLOPs (torch's FLOP counter, on the meta device: shapes only, no weights) of
   every step of a loop at SD v1.4's shapes (64x64 latents) and the paper's settings
   (1000 mining + 1000 circumventing epochs, 50 sampler steps, k = 3, one image each):
   per step, its ratio to a bare batch-1 UNet forward + backward, per loop against the
   minimum the method needs, and the UNet passes (images through the UNet) per loop.
2. Measured times of the same steps on the SD-shaped test bed's weights (`dm2.models.testbed`)
   on this machine's device (CPU: 32x32 latents; a GPU: 64x64), their ratio to a bare
   UNet forward + backward of batch 1, peak memory, and one loop at the paper's settings
   projected from them.

    python benchmarks/sd_loop.py [--testbed artifacts/sd_testbed] [--latent-size 32]
                                 [--precision fp32|bf16] [--repeats 3] [--skip-times]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402

from dm2.core.devices import resolve_device  # noqa: E402
from dm2.core.precision import model_precision  # noqa: E402
from dm2.erasure.dark_miner_steps import circumvent_losses, circumvent_states, mining_loss  # noqa: E402
from dm2.erasure.lora import add_lora  # noqa: E402
from dm2.models.clip import load_clip  # noqa: E402
from dm2.models.diffusion import encode_prompts, free_embedding_states, latents_to_images, load_pipeline, sample  # noqa: E402
from dm2.models.testbed import CLIP_FILE, CLIP_NAME, SD_LATENT_SIZE, sd14_components, write_testbed  # noqa: E402
from dm2.models.tokenizer import build_clip_tokenizer  # noqa: E402
from dm2.models.world_sd import world_scheduler  # noqa: E402

# The paper's settings (Appendix A): per loop 1000 mining epochs on k = 3 pool images,
# one verification image x_c against one reference x_r, one image x per circumvented c,
# 1000 circumventing epochs at batch 1; 50 sampler steps (the paper does not state them).
PAPER = dict(mine_epochs=1000, k=3, circumvent_epochs=1000, images=1, sampler_steps=50, tokens=32, rank=8)


class Steps:
    """One loop's steps on `pipe` (LoRA rank 8 on to_v), each a callable doing one step."""

    def __init__(self, pipe: StableDiffusionPipeline, latent_size: int) -> None:
        self.pipe, self.unet = pipe, pipe.unet
        self.lora = add_lora(pipe.unet, PAPER["rank"], seed=0)
        dev = pipe.unet.device
        self.g = torch.Generator().manual_seed(0)
        shape = (4, latent_size, latent_size)
        self.pool = torch.randn(PAPER["k"], *shape).to(dev)
        self.x = torch.randn(PAPER["images"], *shape).to(dev)
        width = pipe.text_encoder.config.hidden_size
        self.c = torch.randn(1, PAPER["tokens"], width).to(dev).requires_grad_(True)
        self.anchor = encode_prompts(pipe, ["a photo"])
        self.uncond = encode_prompts(pipe, [""])
        self.encode = lambda c: free_embedding_states(pipe, c)
        self.scheduler = world_scheduler()  # SD v1's schedule, as DDIM

    def bare(self) -> None:
        """A bare UNet forward + backward at batch 1 (gradients to the LoRA)."""
        x_t = self.x[:1]
        t = torch.tensor([500], device=x_t.device)
        self.unet(x_t, t, encoder_hidden_states=self.anchor).sample.square().mean().backward()

    def mine(self) -> None:
        mining_loss(self.unet, self.scheduler, self.pool, self.c, self.encode, self.g).backward()

    def circumvent(self, frozen_on_c: bool) -> None:
        states = circumvent_states(self.c.detach(), self.anchor, self.encode)
        l_c, l_p = circumvent_losses(self.unet, self.scheduler, self.x, states, self.g, frozen_on_c=frozen_on_c)
        (l_c + l_p).backward()

    def sampler_step(self, batched: bool) -> None:
        """One classifier-free-guided step for one image: cond + uncond, one call or two."""
        sample(self.unet, self.scheduler, self.anchor, self.uncond, self.x[:1], 1, 5.0, batch_branches=batched)

    def decode(self) -> None:
        with torch.no_grad():
            latents_to_images(self.pipe.vae, self.x[:1])


def meta_pipeline() -> StableDiffusionPipeline:
    """SD v1.4's modules on the meta device: shapes without weights, for counting FLOPs."""
    with torch.device("meta"):
        parts = sd14_components(SD_LATENT_SIZE)
    for m in parts.values():
        m.requires_grad_(False)
    return StableDiffusionPipeline(
        **parts, tokenizer=build_clip_tokenizer(), scheduler=world_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


@contextmanager
def unet_images(unet: UNet2DConditionModel, counts: list[int]) -> Iterator[None]:
    """Counts the images (batch rows) that pass through `unet`'s forward."""
    handle = unet.register_forward_pre_hook(lambda _, args, kwargs: counts.append(args[0].shape[0]), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def count(fn: Callable[[], None], unet: UNet2DConditionModel) -> tuple[float, int]:
    """(TFLOP, UNet image-passes) of one call of `fn`."""
    passes: list[int] = []
    with FlopCounterMode(display=False) as fc, unet_images(unet, passes):
        fn()
    return fc.get_total_flops() / 1e12, sum(passes)


def clip_image_tflop() -> float:
    with torch.device("meta"):
        import open_clip

        model = open_clip.create_model(CLIP_NAME, pretrained=None, device="meta")
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.encode_image(torch.empty(1, 3, 224, 224))
    return fc.get_total_flops() / 1e12


def loop_costs(step: dict[str, float], on_gpu: bool = True) -> dict[str, float]:
    """One loop at the paper's settings from per-step costs (FLOPs, passes or seconds):
    as run before (the unused frozen pass, x_r remade for every s(c)), as run now (on CPU
    the unused pass stays, for bit-exact world results), and the least the method needs
    (no s(c) after circumventing: a diagnostic of this tool)."""
    n, m, e = PAPER["sampler_steps"], PAPER["mine_epochs"], PAPER["circumvent_epochs"]
    image = n * step["sampler_step"] + step["decode"] + step["clip_image"]  # one verification image, featurised
    x = n * step["sampler_step"]  # the image x circumventing trains on (latents only)
    minimum = m * step["mine"] + 2 * image + x + e * step["circumvent_gpu"]
    unused = e * (step["circumvent_cpu"] - step["circumvent_gpu"])
    now = minimum + image + (0 if on_gpu else unused)  # s(c) after: x_c again; its x_r is next loop's
    before = minimum + 2 * image + unused
    return {"before": before, "now": now, "minimum": minimum}


def flop_table() -> None:
    pipe = meta_pipeline()
    steps = Steps(pipe, SD_LATENT_SIZE)
    flops, passes = {}, {}
    fns = {
        "bare": steps.bare, "mine": steps.mine,
        "circumvent_cpu": lambda: steps.circumvent(True), "circumvent_gpu": lambda: steps.circumvent(False),
        "sampler_step": lambda: steps.sampler_step(True), "decode": steps.decode,
    }  # fmt: skip
    for name, fn in fns.items():
        flops[name], passes[name] = count(fn, pipe.unet)
    flops["clip_image"], passes["clip_image"] = clip_image_tflop(), 0
    bare = flops["bare"]
    print(f"Counted FLOPs at SD v1.4's shapes (64x64 latents, 77 text positions), LoRA rank {PAPER['rank']} on to_v")
    print(f"{'step':34s} {'TFLOP':>8s} {'x bare':>7s} {'UNet images':>11s}")
    labels = {
        "bare": "bare UNet forward + backward, b=1", "mine": "mining step (k=3)",
        "circumvent_cpu": "circumventing step, with unused pass", "circumvent_gpu": "circumventing step, GPU path",
        "sampler_step": "sampler step (cond + uncond)", "decode": "VAE decode, 1 image", "clip_image": "CLIP ViT-L/14 image, 1",
    }  # fmt: skip
    for name, label in labels.items():
        print(f"{label:34s} {flops[name]:8.3f} {flops[name] / bare:7.2f} {passes[name]:11d}")
    lf, lp = loop_costs(flops), loop_costs({k: float(v) for k, v in passes.items()})
    print("One loop at the paper's settings (1000 + 1000 epochs, 50 sampler steps):")
    for key in ("before", "now", "minimum"):
        print(f"  {key:8s} {lf[key] / 1e3:7.2f} PFLOP  {lp[key]:8.0f} UNet image-passes")


def timed(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_table(testbed: Path, latent_size: int, precision: str, repeats: int, device: torch.device) -> None:
    if not (testbed / "preset.yaml").is_file():
        write_testbed(testbed, latent_size)
    pipe = load_pipeline(str(testbed / "sd"), device)
    pipe.unet.register_to_config(sample_size=latent_size)
    clip = load_clip(CLIP_NAME, str(testbed / CLIP_FILE), str(device))
    steps = Steps(pipe, latent_size)
    fns = {
        "bare": steps.bare, "mine": steps.mine,
        "circumvent_cpu": lambda: steps.circumvent(True), "circumvent_gpu": lambda: steps.circumvent(False),
        "sampler_step": lambda: steps.sampler_step(True), "sampler_step_2calls": lambda: steps.sampler_step(False),
        "decode": steps.decode, "clip_image": lambda: clip.encode_images(torch.rand(1, 3, 8 * latent_size, 8 * latent_size)),
    }  # fmt: skip
    seconds = {}
    with model_precision(precision, device):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds[name] = timed(fn, repeats, device)
            print(f"  {name:22s} {seconds[name]:8.3f} s  {seconds[name] / seconds.get('bare', seconds[name]):6.2f} x bare"
                  f"  peak {peak_gib(device):6.2f} GiB", flush=True)  # fmt: skip
    loop = loop_costs(seconds, on_gpu=device.type == "cuda")
    print(f"One loop at the paper's settings projected from these steps ({device.type}, {latent_size}x{latent_size} latents, {precision}):")
    for key in ("before", "now", "minimum"):
        print(f"  {key:8s} {loop[key] / 60:8.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", type=Path, default=ROOT / "artifacts/sd_testbed")
    parser.add_argument("--latent-size", type=int, default=None, help="default: 64 on a GPU, 32 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-times", action="store_true", help="FLOP counts only (seconds)")
    args = parser.parse_args()
    flop_table()
    if not args.skip_times:
        device = resolve_device(args.device)
        size = args.latent_size or (SD_LATENT_SIZE if device.type == "cuda" else 32)
        print(f"Measured on the test bed ({device}, {size}x{size} latents, {args.precision}, median of {args.repeats}):")
        time_table(args.testbed.resolve(), size, args.precision, args.repeats, device)


if __name__ == "__main__":
    main()
