"""Stage world_check: is the shipped world good enough for erasure to be measurable?

Measures every head of both judges (shape; texture; the world judge's colour) and the
CLIP model on held-out rendered images, the judges on a held-out set of hard renders
(faint, small, blurred, noisy; never seen in training) with accuracy per class, per
difficulty and the confusion matrix; how often the VAE's round trip keeps each texture;
how often the diffusion model draws the shape and the texture a prompt asks for, by shape,
by synonym and by texture; and what it draws for the generic prompt "a photo" (DM2's
anchor: it should show no shape).

It is a gate: a world whose model draws an asked shape or texture in fewer than
`world_check.min_drawn` of its images, by either judge, fails the stage (after writing its
metrics) with one line naming it, so a world that cannot draw a concept never ships."""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from diffusers import StableDiffusionPipeline

from dm2.core.config import InputError, load_params, parse_section
from dm2.core.devices import resolve_device
from dm2.core.io import write_json
from dm2.core.params import ModelsParams
from dm2.core.paths import WORLD_DIR, WORLD_METRICS
from dm2.judges.registry import Judge, load_judges
from dm2.models.clip import load_clip, zero_shot
from dm2.models.diffusion import encode_prompts, generate, images_to_latents, latents_to_images, load_pipeline
from dm2.world.hard_renders import HARD_HELDOUT_SEED_OFFSET, HardCondition, render_hard
from dm2.world.params import WorldCheckParams, WorldParams
from dm2.world.render import EMPTY, TEMPLATES, TEXTURE_WORDS, Sample
from dm2.world.splits import world_split

ANCHOR = "a photo"
HEADS = ("shape", "colour", "texture")  # what a judge of the world may tell; each judge has some
TEXTURE_TEMPLATES = tuple(t for t in TEMPLATES if "{texture}" in t)  # the world's captions that name a texture


def shape_prompts(world: WorldParams) -> list[tuple[str, str, str]]:
    """(prompt, shape, word): "a photo of a {colour} {word}" for every synonym and colour."""
    return [
        (f"a photo of a {colour} {word}", shape, word)
        for shape, words in world.synonyms.items()
        for word in words
        for colour in world.colours
    ]


def texture_prompts(world: WorldParams) -> list[tuple[str, str]]:
    """(prompt, texture): per texture, every shape in each of the world's templates that
    name a texture, its words, colours and backgrounds taken in turn."""
    rows = []
    for texture in world.textures:
        words = TEXTURE_WORDS[texture]
        for i, (shape, template) in enumerate((s, t) for s in world.synonyms for t in TEXTURE_TEMPLATES):
            prompt = template.format(
                texture=words[i % len(words)],
                colour=world.colours[i % len(world.colours)],
                shape=shape,
                background=world.backgrounds[i % len(world.backgrounds)],
            )
            rows.append((prompt, texture))
    return rows


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


def said_by(judge: Judge, head: str, images: torch.Tensor) -> list[str]:
    """What one head of the judge calls each image."""
    classes = judge.classes[head]
    return [classes[i] for i in judge.probs(images)[head].argmax(-1).tolist()]


def judge_report(judge: Judge, head: str, images: torch.Tensor, samples: list[Sample], conditions: list[HardCondition] | None = None) -> dict:
    """Accuracy of one head of a judge: overall, per true class, the confusion matrix (true
    class -> counts of what the judge said) and, for hard renders, per difficulty bin.
    Images whose truth the head has no class for (the colour of an empty image) are left out."""
    classes = list(judge.classes[head])
    keep = [i for i, s in enumerate(samples) if getattr(s, head) in classes]
    truth = [getattr(samples[i], head) for i in keep]
    conditions = None if conditions is None else [conditions[i] for i in keep]
    said = said_by(judge, head, images[keep])
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


def rate_by(keys: list[str], said: list[str]) -> dict[str, float]:
    """Per key, the share of its images the judge called by it."""
    return accuracy_by(keys, torch.tensor([a == b for a, b in zip(keys, said)], dtype=torch.float32))


def texture_judges(judges: dict[str, Judge]) -> dict[str, Judge]:
    return {kind: j for kind, j in judges.items() if "texture" in j.classes}


def vae_retention(pipe: StableDiffusionPipeline, judges: dict[str, Judge], images: torch.Tensor, samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per texture judge and texture, the share of held-out renders whose VAE round trip
    the judge still calls by their texture (renders with a shape only)."""
    keep = [i for i, s in enumerate(samples) if s.texture != EMPTY]
    shapes = images[keep]
    with torch.no_grad():
        back = torch.cat([latents_to_images(pipe.vae, images_to_latents(pipe.vae, shapes[i : i + 200])) for i in range(0, len(shapes), 200)])
    truth = [samples[i].texture for i in keep]
    return {kind: rate_by(truth, said_by(j, "texture", back)) for kind, j in texture_judges(judges).items()}


def gate(metrics: dict, min_drawn: float) -> None:
    """Fail, naming them, when the model draws any shape or texture in fewer than
    `min_drawn` of the images that ask for it, by any judge."""
    undrawn = [
        f"{what} in {rate:.1%} of its images by the {kind} judge"
        for group in ("generated_accuracy_by_shape_by_judge", "generated_texture_rate")
        for kind, rates in metrics[group].items()
        for what, rate in rates.items()
        if rate < min_drawn
    ]
    if undrawn:
        raise InputError(
            f"the world's model draws {'; '.join(undrawn)} (world_check.min_drawn: {min_drawn}); "
            f"nothing can be erased that it does not draw: retrain the world or leave that concept out ({WORLD_METRICS})"
        )


def check_world(world: WorldParams, models: ModelsParams, p: WorldCheckParams, device: torch.device) -> dict:
    judges = load_judges(models)
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    pipe = load_pipeline(models.diffusion, device)
    shapes = list(world.synonyms)

    images, samples = world_split(world, "heldout")
    hard, hard_samples, conditions = render_hard(world.spec(), p.hard_images, world.seed + HARD_HELDOUT_SEED_OFFSET, p.hard)
    judges_report = {
        kind: {
            head: {
                "clean_heldout": judge_report(j, head, images, samples),
                "hard_heldout": judge_report(j, head, hard, hard_samples, conditions),
            }
            for head in HEADS
            if head in j.classes
        }
        for kind, j in judges.items()
    }
    drawn = [i for i, s in enumerate(samples) if s.shape in shapes]  # CLIP is asked to name shapes only
    clip_pred = zero_shot(clip, images[drawn], [f"a photo of a {s}" for s in shapes])
    clip_acc = (clip_pred == torch.tensor([shapes.index(samples[i].shape) for i in drawn])).float().mean().item()

    start = time.time()
    prompts = [row for row in shape_prompts(world) for _ in range(p.images_per_prompt)]
    generated = generate(pipe, encode_prompts(pipe, [row[0] for row in prompts]), p.seed, p.steps, p.guidance)
    asked = [row[1] for row in prompts]
    said = {kind: said_by(j, "shape", generated) for kind, j in judges.items()}
    by_shape = {kind: rate_by(asked, s) for kind, s in said.items()}
    correct = torch.tensor([a == b for a, b in zip(asked, said[models.judge])], dtype=torch.float32)
    by_word = accuracy_by([row[2] for row in prompts], correct)
    textured = [row for row in texture_prompts(world) for _ in range(p.images_per_prompt)]
    textured_images = generate(pipe, encode_prompts(pipe, [row[0] for row in textured]), p.seed, p.steps, p.guidance)
    texture_rate = {kind: rate_by([row[1] for row in textured], said_by(j, "texture", textured_images)) for kind, j in texture_judges(judges).items()}
    n_anchor = p.images_per_prompt * len(shapes) * 2
    anchor = generate(pipe, encode_prompts(pipe, [ANCHOR] * n_anchor), p.seed, p.steps, p.guidance)
    anchor_said = {kind: said_by(j, "shape", anchor) for kind, j in judges.items()}
    anchor_by_judge = {kind: {c: anchor_said[kind].count(c) / n_anchor for c in j.classes["shape"]} for kind, j in judges.items()}
    return {
        "judges": judges_report,
        "judge_shape_accuracy": judges_report[models.judge]["shape"]["clean_heldout"]["accuracy"],
        "clip_zero_shot_shape_accuracy": clip_acc,
        "vae_texture_retention": vae_retention(pipe, judges, images, samples),
        "generated_images": len(prompts),
        "sampler_steps": p.steps,
        "generated_shape_accuracy": correct.mean().item(),
        "generated_shape_accuracy_by_judge": {kind: sum(a == b for a, b in zip(asked, s)) / len(prompts) for kind, s in said.items()},
        "generated_accuracy_by_shape": by_shape[models.judge],
        "generated_accuracy_by_shape_by_judge": by_shape,
        "generated_accuracy_by_word": by_word,
        "worst_word_accuracy": min(by_word.values()),
        "generated_texture_images": len(textured),
        "generated_texture_rate": texture_rate,
        # what the anchor draws, judged: on SD it would show no concept
        "anchor_judged_as": anchor_by_judge[models.judge],
        "anchor_judged_as_by_judge": anchor_by_judge,
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
    gate(metrics, p.min_drawn)


if __name__ == "__main__":
    main()
