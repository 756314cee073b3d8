"""Stage attack: Attack Success Rate of the four attacks against the base and the erased model.

Every attack searches its adversarial prompts against the base model, then against the
erased model of the `method` param (base + its LoRA; for SLD the base UNet, sampled with
SLD's guidance); one image per prompt is generated and judged; ASR = % judged as the
concept. Ring-A-Bell reads only the text encoder, which no method changes, so its prompts
are searched once and used on every model. The images the attacks start from (P4D's and
UnlearnDiff's x0, CCE's inversion set) are the base model's, from the concept's normal
prompts, as in the paper.

Per model and attack, `artifacts/attacks/{model}/{attack}/` holds prompts.csv (prompt,
judge score and verdict, token ids where the prompt is discrete), embeddings.safetensors
(what was learned) and log.json (the objective per step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline

from dm2.attacks import (
    AttackResult,
    CCEParams,
    P4DParams,
    RingABellParams,
    UnlearnDiffParams,
    cce_attack,
    p4d_attack,
    ring_a_bell_attack,
    searchable,
    unlearndiff_attack,
    world_words,
)
from dm2.concept import ConceptParams
from dm2.config import load_params, parse_section, require
from dm2.diffusion import Guide, encode_prompts, generate, generate_latents, initial_noise, latents_to_images, load_pipeline
from dm2.grid import image_grid
from dm2.io import save_tensors, write_json
from dm2.judge import Judge, judge_concept, load_judge
from dm2.methods import INFO_FILE, apply_method, check_method, method_dir, method_label
from dm2.metrics import attack_success_rate
from dm2.models import ModelsParams, resolve_device
from dm2.prompts import read_prompts, write_prompts
from dm2.training import WorldParams

PROMPTS_DIR = Path("data/prompts")
OUT_DIR = Path("artifacts/attacks")
METRICS = Path("metrics/attacks.json")
PLOT = Path("plots/attack_ring_a_bell.json")
GRIDS = Path("plots/attacks")
ATTACKS = ("cce", "p4d", "unlearndiff", "ring_a_bell")
MODELS = ("base", "erased")
SEARCH_SPACES = ("vocabulary", "prompts")


@dataclass
class AttacksParams:
    n_prompts: int  # normal prompts attacked, from the top of the CSV; paper: 100 (P4D, UnlearnDiff)
    steps: int  # sampler steps for every image here
    guidance: float
    seed: int
    batch_size: int  # prompts optimised together (memory, not results, on a real model)
    # Tokens P4D, UnlearnDiff and Ring-A-Bell may use: "vocabulary" (paper: all of CLIP's) or
    # "prompts": those of every prompt in data/prompts, the only words the world's text
    # encoder learned (the rest of its vocabulary is untrained random embeddings).
    search_space: str
    cce: CCEParams
    p4d: P4DParams
    unlearndiff: UnlearnDiffParams
    ring_a_bell: RingABellParams
    # P4D and UnlearnDiff attack "ideal" prompts: normal prompts whose base image (same
    # starting noise) the judge calls the concept; all attacks then share that prompt set.
    ideal_prompts: bool = True

    def validate(self, name: str) -> None:
        for key in ("n_prompts", "steps", "batch_size"):
            require(getattr(self, key) > 0, f"{name}.{key}", f"must be positive, got {getattr(self, key)}")
        require(self.search_space in SEARCH_SPACES, f"{name}.search_space", f"{self.search_space!r} is not one of {list(SEARCH_SPACES)}")


def judge_and_save(
    pipe: StableDiffusionPipeline,
    judge: Judge,
    concept: str,
    result: AttackResult,
    p: AttacksParams,
    out_dir: Path,
    guide: Guide | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """One image per adversarial prompt, judged; writes the attack's files. Returns (ASR,
    images). `noise`: each prompt's starting latents (default: drawn from `p.seed`)."""
    images = generate(pipe, result.cond, p.seed, p.steps, p.guidance, guide=guide, noise=noise)
    scores, is_concept = judge_concept(judge, images, concept)
    columns = {**result.columns, "score": [round(s, 6) for s in scores.tolist()], "is_concept": is_concept.bool().tolist()}
    write_prompts(result.prompts, out_dir / "prompts.csv", columns)
    save_tensors(result.tensors, out_dir / "embeddings.safetensors")
    write_json(result.log, out_dir / "log.json")
    return attack_success_rate(is_concept), images


@dataclass
class AttackInputs:
    """What every attacked model shares, made from the base model before any method is
    applied: the attacked prompts, the base images P4D / UnlearnDiff start from, CCE's
    inversion set, and Ring-A-Bell's prompts (text encoder only, so valid for any UNet)."""

    prompts: list[str]
    x0: torch.Tensor
    noise: torch.Tensor  # the starting latents x0 was sampled from, one per attacked prompt
    concept_latents: torch.Tensor
    ring: AttackResult
    allowed: torch.Tensor
    seconds: dict[str, float]


def prepare_attacks(
    pipe: StableDiffusionPipeline, judge: Judge, concept: str, prompts: list[str], p: AttacksParams, search_texts: list[str] | None = None
) -> AttackInputs:
    """Run on the base pipeline; discrete searches use the tokens of `search_texts` (None:
    the whole vocabulary)."""
    require(len(prompts) >= p.n_prompts, "attacks.n_prompts", f"{p.n_prompts} asked, only {len(prompts)} normal prompts")
    require(len(prompts) >= p.cce.candidates, "attacks.cce.candidates", f"{p.cce.candidates} asked, only {len(prompts)} normal prompts")
    allowed = searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings, search_texts)
    start = time.time()
    # The base model's image for every normal prompt that may be used: P4D / UnlearnDiff start
    # from it (same prompt, same starting noise), CCE inverts the best-judged ones.
    pool = prompts if p.ideal_prompts else prompts[: max(p.n_prompts, p.cce.candidates)]
    noise = initial_noise(len(pool), pipe.unet, p.seed)
    latents = generate_latents(pipe, encode_prompts(pipe, pool), p.seed, p.steps, p.guidance, noise=noise)
    scores, is_concept = judge_concept(judge, latents_to_images(pipe.vae, latents), concept)
    if p.ideal_prompts:
        # As P4D and UnlearnDiff select their prompts: those whose base image shows the concept.
        keep = is_concept.bool().nonzero().squeeze(1)[: p.n_prompts]
        require(
            len(keep) == p.n_prompts, "attacks.n_prompts",
            f"{p.n_prompts} asked, only {len(keep)} of {len(pool)} normal prompts give a base image judged {concept!r}",
        )  # fmt: skip
    else:
        keep = torch.arange(p.n_prompts)
    attacked = [pool[i] for i in keep.tolist()]
    seconds = {"base_images": round(time.time() - start, 1)}
    ring = ring_a_bell_attack(pipe, attacked, p.ring_a_bell, p.seed, p.batch_size, allowed)
    seconds["ring_a_bell/search"] = round(time.time() - start - seconds["base_images"], 1)
    best = scores[: p.cce.candidates].argsort(descending=True)[: p.cce.images]
    return AttackInputs(attacked, latents[keep], noise[keep], latents[best], ring, allowed, seconds)


def attack_model(
    pipe: StableDiffusionPipeline,
    judge: Judge,
    concept: str,
    inputs: AttackInputs,
    p: AttacksParams,
    out_dir: Path,
    guide: Guide | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, float]]:
    """All four attacks against the model `pipe` is now (sampled with `guide` if the method
    steers sampling); files under `out_dir/{attack}`. Returns (ASR per attack, images per
    attack, seconds per attack)."""
    runs: dict[str, Callable[[], AttackResult]] = {
        "cce": lambda: cce_attack(pipe, inputs.concept_latents, p.n_prompts, p.cce, p.seed),
        "p4d": lambda: p4d_attack(pipe, inputs.prompts, inputs.x0, p.p4d, p.seed, p.batch_size, inputs.allowed),
        "unlearndiff": lambda: unlearndiff_attack(pipe, inputs.prompts, inputs.x0, p.unlearndiff, p.seed, p.batch_size, inputs.allowed),
        "ring_a_bell": lambda: inputs.ring,
    }
    asr, images, seconds = {}, {}, {}
    for name in ATTACKS:
        t0 = time.time()
        # Prompts derived from a normal prompt start from that prompt's base noise; CCE's do not.
        noise = None if name == "cce" else inputs.noise
        asr[name], images[name] = judge_and_save(pipe, judge, concept, runs[name](), p, out_dir / name, guide, noise)
        seconds[name] = round(time.time() - t0, 1)
        print(f"{name} vs {out_dir.name}: ASR {asr[name]:.1f}% ({seconds[name]:.0f}s)")
    return asr, images, seconds


def run_attacks(
    pipe: StableDiffusionPipeline,
    erased_dir: Path,
    judge: Judge,
    concept: str,
    prompts: list[str],
    p: AttacksParams,
    out_dir: Path,
    search_texts: list[str] | None = None,
) -> tuple[dict, dict[str, torch.Tensor], list[float]]:
    """All four attacks on the base model, then on the erased model of the method folder
    `erased_dir` (left applied to `pipe`). Returns (metrics, per attack its images as base /
    erased rows, Ring-A-Bell's mean best fitness per generation)."""
    info = Path(erased_dir) / INFO_FILE
    if not info.is_file():
        raise FileNotFoundError(f"{info}: erased model not found; run its erase / baseline stage first")
    start = time.time()
    inputs = prepare_attacks(pipe, judge, concept, prompts, p, search_texts)
    metrics: dict = {}
    seconds = dict(inputs.seconds)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in ATTACKS}
    for model in MODELS:
        guide = apply_method(pipe, erased_dir) if model == "erased" else None
        metrics[model], images, took = attack_model(pipe, judge, concept, inputs, p, out_dir / model, guide)
        seconds.update({f"{name}/{model}": s for name, s in took.items()})
        for name in ATTACKS:
            rows[name].append(images[name])
    seconds["total"] = round(time.time() - start, 1)
    metrics.update(n_prompts=p.n_prompts, seconds=seconds)
    fitness = [sum(values) / len(values) for values in inputs.ring.log["best_fitness"]]
    return metrics, {name: torch.stack(r) for name, r in rows.items()}, fitness


def search_texts_for(p: AttacksParams) -> list[str] | None:
    """The texts whose tokens the discrete searches may use (None: the whole vocabulary)."""
    return [q for path in sorted(PROMPTS_DIR.glob("*.csv")) for q in read_prompts(path)] if p.search_space == "prompts" else None


def main() -> None:
    params = load_params()
    models = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept")
    p = parse_section(AttacksParams, params.get("attacks"), "attacks")
    world = parse_section(WorldParams, params["world"], "world")
    p = replace(p, ring_a_bell=world_words(p.ring_a_bell, concept.name, world.synonyms))
    method = params.get("method", "dm2")
    check_method(method)
    device = resolve_device(params.get("device", "auto"))
    prompts = read_prompts(PROMPTS_DIR / f"{concept.name}.csv")
    search_texts = search_texts_for(p)
    judge = load_judge(models.judge, models.judge_path)
    pipe = load_pipeline(models.diffusion, device)
    metrics, grids, fitness = run_attacks(pipe, method_dir(method), judge, concept.name, prompts, p, OUT_DIR, search_texts)
    write_json(metrics, METRICS)
    write_json([{"generation": i, "best_fitness": f} for i, f in enumerate(fitness)], PLOT)
    GRIDS.mkdir(parents=True, exist_ok=True)
    for name, rows in grids.items():
        image_grid(list(rows), ["base", method_label(method_dir(method))]).save(GRIDS / f"{name}.png")
    print({model: metrics[model] for model in MODELS})


if __name__ == "__main__":
    main()
