"""Stage evaluate: the base model and the erased model side by side, same prompts and seeds.

- erasure: Ratio (% judged as the concept) and Score on the concept's normal prompts,
  also split into prompts that say the concept's name and prompts that only use synonyms;
- preservation: judge accuracy on prompts of the other shapes, CLIP score and Frechet
  distance (judge features vs rendered references) on held-out world captions of the
  other shapes; for real models (`evaluate.coco`) on COCO-2017 val captions, FID in the
  FID Inception network's features against the COCO images;
- image grids: base row vs erased row, same seeds.

The base model's side is measured once (`python -m stages evaluate base`, stage
evaluate_base) and reused for every erased model while its settings stay the same.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dm2.core.config import load_params, parse_section, require
from dm2.core.devices import resolve_device
from dm2.core.grid import image_grid
from dm2.core.io import fingerprint, load_tensors, read_json, read_metadata, save_tensors, write_json
from dm2.core.params import ConceptParams, ModelsParams
from dm2.core.paths import CONCEPT_IMAGES, EVAL_BASE_DIR, EVAL_DIR, EVAL_GRIDS, EVAL_METRICS, SHARDS_DIR
from dm2.core.sharding import clear_shards, process_state
from dm2.erasure.methods import apply_method, method_dir, method_label
from dm2.erasure.params import check_method
from dm2.judges.registry import Judge, load_judges
from dm2.measure.evaluation import EvalSet, load_eval_set, measure
from dm2.measure.params import EvaluateParams
from dm2.models.clip import ClipModel, load_clip
from dm2.models.diffusion import load_pipeline
from dm2.world.params import WorldParams

# The base model is measured once (stage evaluate_base), not again for every erased model.
BASE_METRICS = "metrics.json"  # in EVAL_BASE_DIR
BASE_IMAGES = "grid_rows.safetensors"


def evaluate_base(
    pipe: StableDiffusionPipeline, judge: Judge, clip: ClipModel, data: EvalSet, concept: str, p: EvaluateParams,
    second: tuple[str, Judge] | None = None,
    shards: Path | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The base model's metrics and grid rows; the erased models are compared against them.
    `shards`: where finished image batches are kept (`dm2.measure.evaluation.measure`)."""
    metrics, concept_row, other_row = measure(pipe, judge, clip, data, concept, p, second=second, shards=shards)
    return metrics, {"concept": concept_row, "other": other_row}


def evaluate(
    pipe: StableDiffusionPipeline,
    erased_dir: Path,
    judge: Judge,
    clip: ClipModel,
    data: EvalSet,
    concept: str,
    p: EvaluateParams,
    base: tuple[dict, dict[str, torch.Tensor]],
    second: tuple[str, Judge] | None = None,
    shards: Path | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The pipeline made into the erased model of the method folder `erased_dir`
    (`dm2.erasure.methods.apply_method`), measured beside `base` (`evaluate_base` on the same set)."""
    start = time.time()
    base_metrics, base_rows = base
    guide = apply_method(pipe, erased_dir)
    erased, erased_concept, erased_other = measure(pipe, judge, clip, data, concept, p, guide, second, shards)
    metrics = {"base": base_metrics, "erased": erased, "seconds": round(time.time() - start, 1)}
    grids = {"concept": torch.stack([base_rows["concept"], erased_concept]), "other": torch.stack([base_rows["other"], erased_other])}
    return metrics, grids


def save_base(base: tuple[dict[str, float], dict[str, torch.Tensor]], seconds: float, key: str, folder: Path) -> None:
    metrics, rows = base
    save_tensors(rows, folder / BASE_IMAGES, {"fingerprint": key})
    write_json({"base": metrics, "seconds": round(seconds, 1), "fingerprint": key}, folder / BASE_METRICS)


def load_base(key: str, folder: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The base model's results `save_base` wrote into `folder` with the same settings."""
    metrics_path, images_path = folder / BASE_METRICS, folder / BASE_IMAGES
    for path in (metrics_path, images_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `dvc repro evaluate_base` first")
    saved = read_json(metrics_path)
    fresh = saved.get("fingerprint") == key and read_metadata(images_path).get("fingerprint") == key
    require(fresh, str(folder), "made with other settings; run `dvc repro evaluate_base` first")
    return saved["base"], load_tensors(images_path)


def main() -> None:
    """`python -m stages evaluate base`: the base model, once (stage evaluate_base);
    `python -m stages evaluate`: the `method` param's erased model beside it."""
    which = sys.argv[1] if len(sys.argv) > 1 else "erased"
    require(which in ("base", "erased"), "stages.evaluate", f"unknown argument {which!r}; use `base` or none")
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    models = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept")
    p = parse_section(EvaluateParams, params["evaluate"], "evaluate")
    method = params.get("method", "dm2")
    check_method(method)
    key = fingerprint(concept.name, world, models, p)  # what the base results depend on
    base = None if which == "base" else load_base(key, EVAL_BASE_DIR)
    device = resolve_device(params.get("device", "auto"))
    judges = load_judges(models)  # before any work: a missing judge fails at once
    judge, second = judges[models.judge], (models.second_judge, judges[models.second_judge])
    data = load_eval_set(concept.name, world, p, judge, device)
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    pipe = load_pipeline(models.diffusion, device)
    # Image batches are kept as they finish (a killed run redoes only the rest) and spread
    # over the processes of `accelerate launch`; only the main process writes the outputs.
    state, shards = process_state(), SHARDS_DIR / f"evaluate_{which}"
    if base is None:
        start = time.time()
        base = evaluate_base(pipe, judge, clip, data, concept.name, p, second, shards)
        seconds = time.time() - start
        state.wait_for_everyone()  # every process has read the shards back
        if state.is_main_process:
            save_base(base, seconds, key, EVAL_BASE_DIR)
            clear_shards(shards)
            print({"base": base[0], "seconds": round(seconds, 1)})
        return
    metrics, grids = evaluate(pipe, method_dir(method), judge, clip, data, concept.name, p, base, second, shards)
    state.wait_for_everyone()
    if not state.is_main_process:
        return
    clear_shards(shards)
    write_json(metrics, EVAL_METRICS)
    save_tensors({"base": grids["concept"][0], method: grids["concept"][1]}, EVAL_DIR / CONCEPT_IMAGES)
    EVAL_GRIDS.mkdir(parents=True, exist_ok=True)
    for name, rows in grids.items():
        image_grid(list(rows), ["base", method_label(method_dir(method))]).save(EVAL_GRIDS / f"{name}.png")
    print({k: v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
