"""Stage compare: one more erased model measured exactly as the `evaluate` and `attack`
stages measure the `method` param's, for the comparison table (paper Table 1).

    python -m stages.compare esd_x     # any method with a folder under artifacts/methods

Same prompts, seeds, judge and attack settings; only the erased side is measured here,
the base model's figures come from `metrics/eval.json` and `metrics/attacks.json`.
Writes `metrics/compare/{method}.json` (the evaluation metrics plus `asr` per attack) and
`artifacts/compare/{method}/` (attack files, and the concept images of the grid).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dm2.attacks import world_words
from dm2.clip import ClipModel, load_clip
from dm2.concept import ConceptParams
from dm2.config import load_params, parse_section
from dm2.diffusion import load_pipeline
from dm2.io import save_tensors, write_json
from dm2.judge import Judge, load_judge
from dm2.methods import apply_method, check_method, method_dir
from dm2.models import ModelsParams, resolve_device
from dm2.prompts import read_prompts
from dm2.training import WorldParams
from stages.attack import PROMPTS_DIR, AttacksParams, attack_model, prepare_attacks, search_texts_for
from stages.evaluate import EvalSet, EvaluateParams, load_eval_set, measure

METRICS_DIR = Path("metrics/compare")
OUT_DIR = Path("artifacts/compare")
IMAGES = "concept_images.safetensors"


def compare_method(
    pipe: StableDiffusionPipeline,
    erased_dir: Path,
    judge: Judge,
    clip: ClipModel,
    data: EvalSet,
    concept: str,
    ep: EvaluateParams,
    prompts: list[str],
    ap: AttacksParams,
    out_dir: Path,
    search_texts: list[str] | None = None,
) -> tuple[dict, torch.Tensor]:
    """Evaluation metrics and ASR per attack of the erased model in `erased_dir`; `pipe`
    arrives as the base model (the attacks' inputs are made from it). Returns (metrics,
    the concept images of the grid)."""
    start = time.time()
    inputs = prepare_attacks(pipe, judge, concept, prompts, ap, search_texts)
    guide = apply_method(pipe, erased_dir)
    metrics, concept_images, _ = measure(pipe, judge, clip, data, concept, ep, guide)
    metrics["asr"], _, _ = attack_model(pipe, judge, concept, inputs, ap, out_dir / "attacks", guide)
    metrics["seconds"] = round(time.time() - start, 1)
    return metrics, concept_images


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m stages.compare METHOD")
    method = sys.argv[1]
    check_method(method)
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    models = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept")
    ep = parse_section(EvaluateParams, params["evaluate"], "evaluate")
    ap = parse_section(AttacksParams, params.get("attacks"), "attacks")
    ap = replace(ap, ring_a_bell=world_words(ap.ring_a_bell, concept.name, world.synonyms))
    device = resolve_device(params.get("device", "auto"))
    judge = load_judge(models.judge, models.judge_path)
    data = load_eval_set(concept.name, world, ep, judge, device)
    prompts = read_prompts(PROMPTS_DIR / f"{concept.name}.csv")
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    pipe = load_pipeline(models.diffusion, device)
    metrics, images = compare_method(
        pipe, method_dir(method), judge, clip, data, concept.name, ep, prompts, ap, OUT_DIR / method, search_texts_for(ap)
    )
    write_json(metrics, METRICS_DIR / f"{method}.json")
    save_tensors({method: images}, OUT_DIR / method / IMAGES)
    print(f"compare {method}: ratio {metrics['ratio']:.1f}%, ASR {metrics['asr']} ({metrics['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
