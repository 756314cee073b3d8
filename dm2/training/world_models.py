"""How the shipped world's three models are trained (stages train_diffusion, train_clip
and train_judge call these; benchmarks/world_training.py times them).

- diffusion: the VAE first, then the text encoder and UNet together on its latents;
- CLIP: contrastive, on augmented image-caption pairs, checked by held-out zero-shot shape;
- judge: shape, colour and texture heads on augmented renders plus hard renders (faint,
  small, blurred, noisy: `dm2.world.hard_renders`), so that a method that fades or shrinks the
  concept instead of removing it is still caught.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline

from dm2.judges.world import WorldJudge
from dm2.models.clip import WORLD_CLIP, ClipModel, create_world_clip, model_preprocess, preprocess, zero_shot
from dm2.models.tokenizer import build_clip_tokenizer
from dm2.models.world_sd import assemble_pipeline, world_scheduler, world_text_encoder, world_unet, world_vae
from dm2.training.loop import train_loop
from dm2.world.augment import augment
from dm2.world.hard_renders import HARD_HELDOUT_SEED_OFFSET, HARD_TRAIN_SEED_OFFSET, render_hard
from dm2.world.params import ClipTrainParams, JudgeTrainParams, UnetParams, VaeParams, WorldParams
from dm2.world.render import Sample
from dm2.world.splits import world_split

# ---------------------------------------------------------------- diffusion


def train_vae(images: torch.Tensor, p: VaeParams, seed: int, make_vae: Callable[[], AutoencoderKL] = world_vae):
    """The world's VAE (or another design, `make_vae`) trained on `images` in [0, 1]; with the
    latents of every image, scaled to unit variance as SD's are."""
    torch.manual_seed(seed)
    vae = make_vae()
    vae.train()
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        return F.mse_loss(recon, x) + p.kl_weight * posterior.kl().mean() / x[0].numel()

    losses = train_loop(list(vae.parameters()), loss_fn, len(images), p, seed, "vae")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 512] * 2 - 1).latent_dist.mean for i in range(0, len(images), 512)])
    # SD scales latents to unit variance; compute the factor for this VAE.
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, latents * vae.config.scaling_factor, losses


def train_text_unet(latents: torch.Tensor, captions: list[str], p: UnetParams, seed: int):
    torch.manual_seed(seed)
    text_encoder = world_text_encoder()
    unet = world_unet(tuple(p.channels))
    scheduler = world_scheduler()
    tokenizer = build_clip_tokenizer()
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(seed + 2)
    text_encoder.train()
    unet.train()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x0 = latents[idx]
        batch_ids = ids[idx].clone()
        drop = torch.rand(len(idx), generator=g) < p.caption_dropout  # unconditional for CFG
        batch_ids[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        states = text_encoder(batch_ids)[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        return F.mse_loss(pred, noise)

    params = list(text_encoder.parameters()) + list(unet.parameters())
    losses = train_loop(params, loss_fn, len(latents), p, seed, "unet+text")
    return text_encoder.eval(), unet.eval(), losses


def train_world_diffusion(world: WorldParams, vae_p: VaeParams, unet_p: UnetParams) -> tuple[StableDiffusionPipeline, dict]:
    start = time.time()
    images, samples = world_split(world, "train")
    vae, latents, vae_losses = train_vae(images, vae_p, world.seed)
    vae_seconds = time.time() - start
    text_encoder, unet, unet_losses = train_text_unet(latents, [s.caption for s in samples], unet_p, world.seed)
    pipe = assemble_pipeline(vae, text_encoder, unet)
    metrics = {
        "vae_final_loss": sum(vae_losses[-100:]) / len(vae_losses[-100:]),
        "unet_final_loss": sum(unet_losses[-100:]) / len(unet_losses[-100:]),
        "vae_seconds": round(vae_seconds, 1),
        "seconds": round(time.time() - start, 1),
    }
    return pipe, metrics


# ---------------------------------------------------------------- CLIP

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps the learnable temperature from collapsing


def contrastive_loss(model: open_clip.CLIP, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between images in [0, 1] and their captions' token ids, with
    CLIP's learnable temperature."""
    size, mean, std = model_preprocess(model)
    image_f = F.normalize(model.encode_image(preprocess(images, size, mean, std)), dim=-1)
    text_f = F.normalize(model.encode_text(ids), dim=-1)
    logits = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * image_f @ text_f.T
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def heldout_zero_shot(clip: ClipModel, world: WorldParams) -> dict[str, float]:
    """Held-out zero-shot shape accuracy with "a photo of a {shape}", and averaged over
    every synonym standing in for its shape (concepts are also reached by synonyms)."""
    images, samples = world_split(world, "heldout")
    spec = world.spec()
    keep = [i for i, s in enumerate(samples) if s.shape in spec.shapes]  # empty images have no shape to name
    images = images[keep]
    labels = torch.tensor([spec.shapes.index(samples[i].shape) for i in keep])
    pred = zero_shot(clip, images, [f"a photo of a {shape}" for shape in spec.shapes])
    n_words = max(len(words) for words in spec.synonyms.values())
    synonym_acc = []
    for k in range(n_words):
        prompts = [f"a photo of a {words[k % len(words)]}" for words in spec.synonyms.values()]
        synonym_acc.append((zero_shot(clip, images, prompts) == labels).float().mean().item())
    return {
        "heldout_zero_shot_shape_accuracy": (pred == labels).float().mean().item(),
        "heldout_zero_shot_synonym_accuracy": sum(synonym_acc) / len(synonym_acc),
    }


def train_world_clip(world: WorldParams, p: ClipTrainParams) -> tuple[open_clip.CLIP, dict]:
    start = time.time()
    torch.manual_seed(world.seed)
    images, samples = world_split(world, "train")
    model = create_world_clip().train()
    ids = open_clip.get_tokenizer(WORLD_CLIP)([s.caption for s in samples])
    g = torch.Generator().manual_seed(world.seed + 3)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(model, augment(images[idx], p.augment, g), ids[idx])

    losses = train_loop(list(model.parameters()), loss_fn, len(images), p, world.seed, "clip")
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
    # Round to float16 now, so the metrics describe exactly the weights that are shipped.
    model = model.half().float().eval().requires_grad_(False)
    seconds = time.time() - start
    metrics = {
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "logit_scale": float(model.logit_scale.exp()),
        "seconds": round(seconds, 1),
        **heldout_zero_shot(ClipModel(model, open_clip.get_tokenizer(WORLD_CLIP), torch.device("cpu")), world),
    }
    return model, metrics


# ---------------------------------------------------------------- judge

IGNORE = -100  # F.cross_entropy's ignore_index


def labels_of(judge: WorldJudge, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Class index per head; IGNORE where the head has no class for it (the colour and
    texture of an empty image)."""
    return {
        head: torch.tensor([names.index(getattr(s, head)) if getattr(s, head) in names else IGNORE for s in samples])
        for head, names in judge.classes.items()
    }


def judge_loss(judge: WorldJudge, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy of the shape, colour and texture heads."""
    _, logits = judge(images)
    # Summed per sample over the heads that have a label, so a batch of empty images only
    # trains the shape head.
    return sum(F.cross_entropy(logits[head], labels[head], ignore_index=IGNORE, reduction="sum") for head in logits) / len(images)


def heldout_accuracy(judge: WorldJudge, world: WorldParams, p: JudgeTrainParams) -> dict[str, float]:
    """Accuracy per head on clean held-out renders, on augmented ones (a proxy for
    generated images) and on held-out hard renders (world_check breaks these down)."""
    images, samples = world_split(world, "heldout")
    g = torch.Generator().manual_seed(world.seed + 5)
    hard, hard_samples, _ = render_hard(world.spec(), world.heldout_images, world.seed + HARD_HELDOUT_SEED_OFFSET, p.hard)
    metrics = {}
    for prefix, x, labelled in (
        ("heldout", images, samples),
        ("heldout_augmented", augment(images, p.augment, g), samples),
        ("heldout_hard", hard, hard_samples),
    ):
        labels = labels_of(judge, labelled)
        probs = judge.probs(x)
        for head, y in labels.items():
            known = y != IGNORE
            metrics[f"{prefix}_{head}_accuracy"] = (probs[head][known].argmax(-1) == y[known]).float().mean().item()
    return metrics


def train_world_judge(world: WorldParams, p: JudgeTrainParams) -> tuple[WorldJudge, dict]:
    start = time.time()
    torch.manual_seed(world.seed)
    images, samples = world_split(world, "train")
    spec = world.spec()
    if p.hard_images:
        hard, hard_samples, _ = render_hard(spec, p.hard_images, world.seed + HARD_TRAIN_SEED_OFFSET, p.hard)
        images, samples = torch.cat([images, hard]), samples + hard_samples
    judge = WorldJudge(list(spec.shape_classes), list(spec.colours), list(spec.textures), width=p.width).train()
    labels = labels_of(judge, samples)
    g = torch.Generator().manual_seed(world.seed + 4)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return judge_loss(judge, augment(images[idx], p.augment, g), {h: y[idx] for h, y in labels.items()})

    losses = train_loop(list(judge.parameters()), loss_fn, len(images), p, world.seed, "judge")
    # Round to float16 now, so the metrics describe exactly the weights that are shipped.
    judge = judge.half().float().eval().requires_grad_(False)
    seconds = time.time() - start
    metrics = {
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "seconds": round(seconds, 1),
        **heldout_accuracy(judge, world, p),
    }
    return judge, metrics
