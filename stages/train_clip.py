"""Stage train_clip: train the world's tiny CLIP contrastively on rendered image-caption
pairs; it verifies erasure (zero-shot shape) and computes CLIP scores in the world."""

from __future__ import annotations

import math
import time

import open_clip
import torch
import torch.nn.functional as F

from dm2.augment import augment
from dm2.clip import (
    WORLD_CLIP,
    ClipModel,
    create_world_clip,
    model_preprocess,
    preprocess,
    save_world_clip,
    zero_shot,
)
from dm2.config import load_params, parse_section
from dm2.io import write_json
from dm2.params import ClipTrainParams, WorldParams
from dm2.paths import TRAIN_CLIP_METRICS, WORLD_CLIP
from dm2.training import train_loop, world_split

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


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    p = parse_section(ClipTrainParams, params["train_clip"], "train_clip")
    model, metrics = train_world_clip(world, p)
    save_world_clip(model, WORLD_CLIP)
    write_json(metrics, TRAIN_CLIP_METRICS)
    print(metrics)


if __name__ == "__main__":
    main()
