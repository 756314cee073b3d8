"""What the evaluation measures on one model: the evaluation set (prompts, seeds, preservation
references), the judges' erasure and other-shape figures, CLIP score and Frechet distance.
Shared by the evaluate stages and compare (the paper's Section 4 protocol)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline

from dm2.core.paths import PROMPTS_DIR
from dm2.core.sharding import ShardStore, generation_key
from dm2.judges.registry import Judge, judge_concept
from dm2.measure.coco import coco_pairs, fid_network, inception_features, load_images
from dm2.measure.metrics import erasure_ratio_score, frechet_distance
from dm2.measure.params import EvaluateParams
from dm2.models.clip import ClipModel, clip_score
from dm2.models.diffusion import Guide, encode_prompts, generate
from dm2.world.params import WorldParams
from dm2.world.prompts import read_prompts
from dm2.world.render import EMPTY
from dm2.world.splits import world_split


@dataclass
class EvalSet:
    """Everything both models are measured on: prompts, seeds and references."""

    concept_prompts: list[str]
    says_name: list[bool]
    other_prompts: list[str]
    other_shapes: list[str]
    heldout_captions: list[str]
    reference_features: torch.Tensor  # of the held-out reference images, in the FD feature space
    features: Callable[[torch.Tensor], torch.Tensor]  # that space: the world judge's, or FID Inception's


def read_uses_name(path: Path, prompts: list[str]) -> list[bool]:
    """The `uses_name` column of a world prompts CSV; all False when absent (real prompts)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "uses_name" not in rows[0]:
        return [False] * len(prompts)
    return [row["uses_name"] == "True" for row in rows][: len(prompts)]


def load_eval_set(concept: str, world: WorldParams, p: EvaluateParams, judge: Judge, device: torch.device | str = "cpu") -> EvalSet:
    path = PROMPTS_DIR / f"{concept}.csv"
    prompts = read_prompts(path)[: p.n_prompts]
    others_path = PROMPTS_DIR / f"others_{concept}.csv"
    others = read_prompts(others_path)[: p.n_other]
    with others_path.open(newline="") as f:
        other_shapes = [row["shape"] for row in csv.DictReader(f)][: len(others)]
    uses_name = read_uses_name(path, prompts)
    if p.coco is not None:
        captions, files = coco_pairs(p.coco)
        features = inception_features(fid_network(p.coco.inception, device))
        # Reference features in chunks: 5,000 decoded COCO images would not fit in memory.
        reference = torch.cat([features(load_images(files[i : i + 100])) for i in range(0, len(files), 100)])
        return EvalSet(prompts, uses_name, others, other_shapes, captions, reference, features)
    # Preservation is measured where the concept is absent (as COCO is for nudity): held-out
    # captions of the other shapes, against their rendered images.
    images, samples = world_split(world, "heldout")
    keep = [i for i, s in enumerate(samples) if s.shape not in (concept, EMPTY)][: p.n_heldout]
    captions = [samples[i].caption for i in keep]
    return EvalSet(prompts, uses_name, others, other_shapes, captions, judge.features(images[keep]), judge.features)


def judged(
    judge: Judge, concept_images: torch.Tensor, named: torch.Tensor, other_images: torch.Tensor, other_shapes: list[str], concept: str, kind: str
) -> dict[str, float]:
    """Ratio and Score (all prompts, name prompts, synonym-only prompts) and other-shape
    accuracy, by one judge."""
    scores, is_concept = judge_concept(judge, concept_images, concept)
    ratio, score = erasure_ratio_score(is_concept, scores, kind)
    metrics = {"ratio": ratio, "score": score}
    if named.any():
        metrics["ratio_name_prompts"] = erasure_ratio_score(is_concept[named], scores[named], kind)[0]
    if (~named).any():
        metrics["ratio_synonym_prompts"] = erasure_ratio_score(is_concept[~named], scores[~named], kind)[0]
    classes = list(judge.classes["shape"])
    asked = torch.tensor([classes.index(s) for s in other_shapes])
    metrics["other_shapes_accuracy"] = 100 * (judge.probs(other_images)["shape"].argmax(-1) == asked).float().mean().item()
    return metrics


def measure(
    pipe: StableDiffusionPipeline,
    judge: Judge,
    clip: ClipModel,
    data: EvalSet,
    concept: str,
    p: EvaluateParams,
    guide: Guide | None = None,
    second: tuple[str, Judge] | None = None,
    shards: Path | None = None,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Metrics of one model (`pipe`, sampled with `guide` if the method steers sampling),
    plus its first concept and other-prompt images for the grids. `second`: (kind, judge)
    of the second judge, whose erasure and other-shape figures go under `second_judge`.
    `shards`: a folder where finished image batches are kept, which also spreads them
    over launched processes (`dm2.core.sharding`); None makes every image here."""

    def images_for(name: str, prompts: list[str], seed: int) -> torch.Tensor:
        cond = encode_prompts(pipe, prompts)
        store = None
        if shards is not None:
            key = generation_key(pipe.unet, cond, seed, p.steps, p.guidance, None if guide is None else guide.key())
            store = ShardStore(shards / name, key)
        return generate(pipe, cond, seed, p.steps, p.guidance, guide=guide, shards=store)

    repeated = [q for q in data.concept_prompts for _ in range(p.images_per_prompt)]
    concept_images = images_for("concept", repeated, p.seed)
    named = torch.tensor([u for u in data.says_name for _ in range(p.images_per_prompt)])
    other_images = images_for("other", data.other_prompts, p.seed + 1)
    metrics = judged(judge, concept_images, named, other_images, data.other_shapes, concept, p.kind)
    if second is not None:
        metrics["second_judge"] = {"judge": second[0], **judged(second[1], concept_images, named, other_images, data.other_shapes, concept, p.kind)}

    heldout = images_for("heldout", data.heldout_captions, p.seed + 2)
    metrics["clip_score"] = clip_score(clip, heldout, data.heldout_captions).mean().item()
    metrics["fd"] = frechet_distance(data.features(heldout), data.reference_features)
    step = max(1, p.images_per_prompt)
    return metrics, concept_images[::step][: p.grid_images], other_images[: p.grid_images]
