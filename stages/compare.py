"""Stage compare: one more erased model measured exactly as the `evaluate` and `attack`
stages measure the `method` param's, for the comparison table (paper Table 1).

    python -m stages compare esd_x     # any method with a folder under artifacts/methods

Same prompts, seeds, judges and attack settings; only the erased side is measured here:
the base model's figures come from `metrics/eval.json` and `metrics/attacks.json`, and the
attacks start from the inputs stage `attack_base` made once. Writes
`metrics/compare/{method}.json` (the evaluation metrics, `asr` per attack by the primary
judge, `second_judge_asr`, `asr_sweep`) and `artifacts/compare/{method}/` (attack files,
and the concept images of the grid).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch
from diffusers import StableDiffusionPipeline

from dm2.attacks.common import AttackInputs
from dm2.attacks.params import AttacksParams
from dm2.attacks.sweep import INPUTS_FILE, attack_settings, load_inputs, sweep_model
from dm2.core.config import load_params, parse_section
from dm2.core.devices import resolve_device
from dm2.core.io import fingerprint, load_tensors, read_json, read_metadata, save_tensors, write_json
from dm2.core.paths import ATTACK_BASE_DIR, COMPARE_DIR, COMPARE_METRICS_DIR, CONCEPT_IMAGES, SHARDS_DIR
from dm2.core.provenance import code_version, weights_hash
from dm2.core.sharding import clear_shards, process_state
from dm2.erasure.methods import INFO_FILE, apply_method, method_dir
from dm2.erasure.params import check_method
from dm2.judges.registry import Judge, load_judges
from dm2.measure.evaluation import EvalSet, load_eval_set, measure
from dm2.measure.params import EvaluateParams
from dm2.models.clip import ClipModel, load_clip
from dm2.models.diffusion import load_pipeline
from dm2.world.params import WorldParams

EVAL_CHECKPOINT = "evaluation.safetensors"  # the evaluation half, kept while the attacks run


def compare_method(
    pipe: StableDiffusionPipeline,
    erased_dir: Path,
    judges: dict[str, Judge],
    clip: ClipModel,
    data: EvalSet,
    concept: str,
    ep: EvaluateParams,
    load_attack_inputs: Callable[[], AttackInputs],
    ap: AttacksParams,
    out_dir: Path,
    eval_key: str = "",
    shards: Path | None = None,
) -> tuple[dict, torch.Tensor]:
    """Evaluation metrics and ASR per attack of the erased model in `erased_dir`, by both
    judges (primary first in `judges`). The evaluation is kept in `out_dir` (keyed by
    `eval_key`) before the attacks run, so a run stopped during the attacks resumes after
    it. `shards`: where finished image batches and attack restarts are kept, spread over
    launched processes (`dm2.core.sharding`). Returns (metrics, the concept images of the grid)."""
    main_process = process_state().is_main_process
    start = time.time()
    (primary, judge), (second, second_judge) = judges.items()
    guide = apply_method(pipe, erased_dir)
    saved = out_dir / EVAL_CHECKPOINT
    if saved.is_file() and read_metadata(saved).get("fingerprint") == eval_key:
        metrics, concept_images = read_json(saved.with_suffix(".json")), load_tensors(saved)["concept_images"]
        print(f"{saved}: evaluation made with these settings, reused")
    else:
        evaluation_shards = None if shards is None else shards / "evaluation"
        metrics, concept_images, _ = measure(pipe, judge, clip, data, concept, ep, guide, (second, second_judge), evaluation_shards)
        if main_process:
            write_json(metrics, saved.with_suffix(".json"))
            save_tensors({"concept_images": concept_images}, saved, {"fingerprint": eval_key})  # written last: marks the pair done
    attack_shards = None if shards is None else shards / "attacks"
    attacks, _ = sweep_model(pipe, judges, concept, load_attack_inputs(), ap, out_dir / "attacks", guide, attack_shards)
    metrics["asr"] = attacks["asr"][primary]
    metrics["second_judge"]["asr"] = attacks["asr"][second]
    metrics["asr_sweep"] = attacks["sweep"]
    metrics["seconds"] = round(time.time() - start, 1)
    return metrics, concept_images


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m stages compare METHOD")
    method = sys.argv[1]
    check_method(method)
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    models, concept, ap, key = attack_settings(params)
    ep = parse_section(EvaluateParams, params["evaluate"], "evaluate")
    device = resolve_device(params.get("device", "auto"))
    judges = load_judges(models)
    data = load_eval_set(concept.name, world, ep, judges[models.judge], device)
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    pipe = load_pipeline(models.diffusion, device)
    # What the kept evaluation depends on: settings, the method's weights (method.json changes
    # with them), the base model's and CLIP's weights, and the code.
    made_by = {"diffusion": weights_hash(pipe.unet, pipe.vae, pipe.text_encoder), "clip": weights_hash(clip.model), "code": code_version("stages.compare")}
    eval_key = fingerprint(concept.name, world, models, ep, read_json(method_dir(method) / INFO_FILE), made_by)
    state, shards = process_state(), SHARDS_DIR / f"compare_{method}"
    # The attacks' inputs are read after the evaluation: under dvc, attack_base has made them.
    metrics, images = compare_method(
        pipe, method_dir(method), judges, clip, data, concept.name, ep, lambda: load_inputs(ATTACK_BASE_DIR / INPUTS_FILE, key), ap,
        COMPARE_DIR / method, eval_key, shards,
    )  # fmt: skip
    state.wait_for_everyone()  # every process has read the shards back
    if not state.is_main_process:  # the only writer
        return
    clear_shards(shards)
    write_json(metrics, COMPARE_METRICS_DIR / f"{method}.json")
    save_tensors({method: images}, COMPARE_DIR / method / CONCEPT_IMAGES)
    print(f"compare {method}: ratio {metrics['ratio']:.1f}%, ASR {metrics['asr']} ({metrics['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
