"""Stage train_judge: train the world's judge (shape, colour and texture classifier) on
rendered images, augmented so that it also judges the diffusion model's samples well, and
on hard renders (faint, small, blurred, noisy: `dm2.hard_renders`), so that a method that
fades or shrinks the concept instead of removing it is still caught."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dm2.augment import augment
from dm2.config import load_params, parse_section
from dm2.hard_renders import (
    HARD_HELDOUT_SEED_OFFSET,
    HARD_TRAIN_SEED_OFFSET,
    render_hard,
)
from dm2.io import write_json
from dm2.judge import WorldJudge, save_world_judge
from dm2.params import JudgeTrainParams, WorldParams
from dm2.paths import TRAIN_JUDGE_METRICS, WORLD_JUDGE
from dm2.training import train_loop, world_split
from dm2.world import Sample

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


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    p = parse_section(JudgeTrainParams, params["train_judge"], "train_judge")
    judge, metrics = train_world_judge(world, p)
    save_world_judge(judge, WORLD_JUDGE)
    write_json(metrics, TRAIN_JUDGE_METRICS)
    print(metrics)


if __name__ == "__main__":
    main()
