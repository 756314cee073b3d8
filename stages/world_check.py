"""Stage world_check: is the shipped world good enough for erasure to be measurable?

Measures both judges and the CLIP model on held-out rendered images, both judges on a
held-out set of hard renders (faint, small, blurred, noisy; never seen in training) with
accuracy per class, per difficulty and the confusion matrix, how often the diffusion model
draws the shape a prompt asks for, by shape and by synonym, and what it draws for the
generic prompt "a photo" (DM2's anchor: it should show no shape)."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from dm2.core.config import load_params, parse_section
from dm2.core.devices import resolve_device
from dm2.core.io import write_json
from dm2.core.params import ModelsParams
from dm2.core.paths import WORLD_DIR, WORLD_METRICS
from dm2.judges.registry import Judge, load_judges
from dm2.models.clip import load_clip, zero_shot
from dm2.models.diffusion import encode_prompts, generate, load_pipeline
from dm2.world.hard_renders import HARD_HELDOUT_SEED_OFFSET, HardCondition, render_hard
from dm2.world.params import WorldCheckParams, WorldParams
from dm2.world.splits import world_split

ANCHOR = "a photo"


def shape_prompts(world: WorldParams) -> list[tuple[str, str, str]]:
    """(prompt, shape, word): "a photo of a {colour} {word}" for every synonym and colour."""
    return [
        (f"a photo of a {colour} {word}", shape, word)
        for shape, words in world.synonyms.items()
        for word in words
        for colour in world.colours
    ]


def accuracy_by(keys: list[str], correct: torch.Tensor) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for key, ok in zip(keys, correct.tolist()):
        groups[key].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


# Difficulty bins of the hard set: each is "hard" along one axis, whatever the others.
HARD_BINS = {
    "faint (contrast < 0.4)": lambda c: c.contrast < 0.4,
    "small (< 10 px across)": lambda c: 0 < c.diameter < 10,
    "blurred (sigma > 1)": lambda c: c.blur > 1.0,
    "noisy (std > 0.05)": lambda c: c.noise > 0.05,
}


def judge_report(judge: Judge, images: torch.Tensor, truth: list[str], conditions: list[HardCondition] | None = None) -> dict:
    """Shape accuracy of one judge: overall, per true class, the confusion matrix (true
    class -> counts of what the judge said) and, for hard renders, per difficulty bin."""
    classes = list(judge.classes["shape"])
    said = [classes[i] for i in judge.probs(images)["shape"].argmax(-1).tolist()]
    correct = torch.tensor([a == b for a, b in zip(said, truth)], dtype=torch.float32)
    report = {
        "accuracy": correct.mean().item(),
        "accuracy_by_class": accuracy_by(truth, correct),
        "confusion": {t: {c: sum(1 for a, b in zip(truth, said) if a == t and b == c) for c in classes} for t in sorted(set(truth))},
    }
    if conditions is not None:
        report["accuracy_by_difficulty"] = {
            name: correct[[i for i, c in enumerate(conditions) if hard(c)]].mean().item() for name, hard in HARD_BINS.items()
        }
    return report


def check_world(world: WorldParams, models: ModelsParams, p: WorldCheckParams, device: torch.device) -> dict:
    judges = load_judges(models)
    judge = judges[models.judge]
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    pipe = load_pipeline(models.diffusion, device)
    shapes = list(world.synonyms)
    classes = list(judge.classes["shape"])

    images, samples = world_split(world, "heldout")
    hard, hard_samples, conditions = render_hard(world.spec(), p.hard_images, world.seed + HARD_HELDOUT_SEED_OFFSET, p.hard)
    judges_report = {
        kind: {
            "clean_heldout": judge_report(j, images, [s.shape for s in samples]),
            "hard_heldout": judge_report(j, hard, [s.shape for s in hard_samples], conditions),
        }
        for kind, j in judges.items()
    }
    drawn = [i for i, s in enumerate(samples) if s.shape in shapes]  # CLIP is asked to name shapes only
    clip_pred = zero_shot(clip, images[drawn], [f"a photo of a {s}" for s in shapes])
    clip_acc = (clip_pred == torch.tensor([shapes.index(samples[i].shape) for i in drawn])).float().mean().item()

    start = time.time()
    prompts = [row for row in shape_prompts(world) for _ in range(p.images_per_prompt)]
    cond = encode_prompts(pipe, [row[0] for row in prompts])
    generated = generate(pipe, cond, p.seed, p.steps, p.guidance)
    asked = torch.tensor([classes.index(row[1]) for row in prompts])
    correct = (judge.probs(generated)["shape"].argmax(-1) == asked).float()
    generated_by_judge = {
        kind: (j.probs(generated)["shape"].argmax(-1) == torch.tensor([list(j.classes["shape"]).index(row[1]) for row in prompts]))
        .float().mean().item()
        for kind, j in judges.items()
    }  # fmt: skip
    by_word = accuracy_by([row[2] for row in prompts], correct)
    n_anchor = p.images_per_prompt * len(shapes) * 2
    anchor = generate(pipe, encode_prompts(pipe, [ANCHOR] * n_anchor), p.seed, p.steps, p.guidance)
    anchor_shapes = [classes[i] for i in judge.probs(anchor)["shape"].argmax(-1).tolist()]
    return {
        "judges": judges_report,
        "generated_shape_accuracy_by_judge": generated_by_judge,
        "judge_shape_accuracy": judges_report[models.judge]["clean_heldout"]["accuracy"],
        "clip_zero_shot_shape_accuracy": clip_acc,
        "generated_images": len(prompts),
        "sampler_steps": p.steps,
        "generated_shape_accuracy": correct.mean().item(),
        "generated_accuracy_by_shape": accuracy_by([row[1] for row in prompts], correct),
        "generated_accuracy_by_word": by_word,
        "worst_word_accuracy": min(by_word.values()),
        # what the anchor draws, judged: on SD it would show no concept
        "anchor_judged_as": {c: anchor_shapes.count(c) / n_anchor for c in classes},
        "anchor_judged_as_by_judge": {
            kind: {c: (j.probs(anchor)["shape"].argmax(-1) == i).float().mean().item() for i, c in enumerate(j.classes["shape"])}
            for kind, j in judges.items()
        },
        "generation_seconds": round(time.time() - start, 1),
        "shipped_weights_mb": round(sum(f.stat().st_size for f in WORLD_DIR.rglob("*") if f.is_file()) / 2**20, 2),
    }


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    models = parse_section(ModelsParams, params["models"], "models")
    p = parse_section(WorldCheckParams, params["world_check"], "world_check")
    metrics = check_world(world, models, p, resolve_device(params.get("device", "auto")))
    write_json(metrics, WORLD_METRICS)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
