"""Stages attack_base and attack: Attack Success Rate of the four attacks at full strength.

    python -m stages attack base    # stage attack_base: the base model's side, once
    python -m stages attack         # stage attack: the `method` param's erased model

Every attack (CCE, P4D, UnlearnDiff, Ring-A-Bell) is swept over its budgets with
`attacks.restarts` restarts, on the base model and then on the erased model of the
`method` param (base + its LoRA; for SLD the base UNet, sampled with SLD's guidance); one
image per prompt, judged by both judges (`dm2.attacks.sweep` says how ASR is counted). The
headline ASR is the best restart at the largest budget. The inputs the attacks start from
(P4D's and UnlearnDiff's x0, CCE's inversion set, Ring-A-Bell's model-agnostic prompts)
are the base model's, made once by `attack_base` and shared with every `compare` stage.

Per model, attack and restart, `{out}/{attack}/restart{k}/` holds prompts.csv (the
prompts at the largest budget, or the tokens that attacked a prompt that left P4D's or
UnlearnDiff's search; each judge's score and best-so-far verdict, token ids where the prompt
is discrete), embeddings.safetensors and log.json (objective per step).
"""

from __future__ import annotations

import sys
import time

import torch

from dm2.attacks.params import ATTACKS
from dm2.attacks.sweep import (
    IMAGES_FILE,
    INPUTS_FILE,
    METRICS_FILE,
    attack_settings,
    budget_plot_rows,
    disagreements,
    load_inputs,
    prepare_attacks,
    save_inputs,
    search_texts_for,
    sweep_model,
)
from dm2.core.config import load_params, require
from dm2.core.devices import resolve_device
from dm2.core.grid import image_grid
from dm2.core.io import load_tensors, read_json, save_tensors, write_json
from dm2.core.paths import (
    ATTACK_BASE_DIR,
    ATTACK_BUDGET_PLOTS,
    ATTACK_FITNESS_PLOT,
    ATTACK_GRIDS,
    ATTACK_METRICS,
    ATTACKS_DIR,
    PROMPTS_DIR,
    SHARDS_DIR,
)
from dm2.core.sharding import clear_shards, process_state
from dm2.erasure.methods import apply_method, method_dir, method_label
from dm2.erasure.params import check_method
from dm2.judges.registry import load_judges
from dm2.models.diffusion import load_pipeline
from dm2.world.prompts import read_prompts


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "erased"
    require(which in ("base", "erased"), "stages.attack", f"unknown argument {which!r}; use `base` or none")
    params = load_params()
    models, concept, p, key = attack_settings(params)
    method = params.get("method", "dm2")
    check_method(method)
    device = resolve_device(params.get("device", "auto"))
    judges = load_judges(models)
    pipe = load_pipeline(models.diffusion, device)
    start = time.time()
    # Restarts are kept as they finish (a killed run redoes only the rest) and spread over
    # the processes of `accelerate launch`; only the main process writes the outputs.
    state, shards = process_state(), SHARDS_DIR / f"attack_{which}"
    if which == "base":
        prompts = read_prompts(PROMPTS_DIR / f"{concept.name}.csv")
        inputs = prepare_attacks(pipe, judges[models.judge], concept.name, prompts, p, search_texts_for(p, PROMPTS_DIR), shards)
        if state.is_main_process:
            save_inputs(inputs, ATTACK_BASE_DIR / INPUTS_FILE, key)
        metrics, images = sweep_model(pipe, judges, concept.name, inputs, p, ATTACK_BASE_DIR, shards=shards)
        metrics["seconds"].update(inputs.seconds, total=round(time.time() - start, 1))
        state.wait_for_everyone()  # every process has read the shards back
        if state.is_main_process:
            save_tensors(images, ATTACK_BASE_DIR / IMAGES_FILE)
            write_json({**metrics, "fingerprint": key}, ATTACK_BASE_DIR / METRICS_FILE)
            clear_shards(shards)
            print({"base": metrics["asr"], "seconds": metrics["seconds"]})
        return
    inputs = load_inputs(ATTACK_BASE_DIR / INPUTS_FILE, key)
    guide = apply_method(pipe, method_dir(method))
    erased, images = sweep_model(pipe, judges, concept.name, inputs, p, ATTACKS_DIR, guide, shards)
    state.wait_for_everyone()
    if not state.is_main_process:
        return
    clear_shards(shards)
    base = read_json(ATTACK_BASE_DIR / METRICS_FILE)  # attack_base writes the inputs first, its own sweep last
    erased["seconds"]["total"] = round(time.time() - start, 1)
    primary, second = models.judge, models.second_judge
    metrics = {
        "judge": primary,
        "base": base["asr"][primary],
        "erased": erased["asr"][primary],
        "second_judge": {"judge": second, "base": base["asr"][second], "erased": erased["asr"][second]},
        "disagreements": {"base": disagreements(base["asr"]), "erased": disagreements(erased["asr"])},
        "sweep": {"base": base["sweep"], "erased": erased["sweep"]},
        "n_prompts": p.n_prompts,
        "restarts": p.restarts,
        "seconds": {"base": base["seconds"], "erased": erased["seconds"]},
    }
    write_json(metrics, ATTACK_METRICS)
    for name, rows in budget_plot_rows(base, erased, [primary, second]).items():
        write_json(rows, ATTACK_BUDGET_PLOTS / f"{name}.json")
    fitness = inputs.ring[0][0].log["best_fitness"]
    write_json([{"generation": i, "best_fitness": sum(f) / len(f)} for i, f in enumerate(fitness)], ATTACK_FITNESS_PLOT)
    base_images = load_tensors(ATTACK_BASE_DIR / IMAGES_FILE)
    ATTACK_GRIDS.mkdir(parents=True, exist_ok=True)
    for name in ATTACKS:
        rows = torch.stack([base_images[name], images[name]])
        image_grid(list(rows), ["base", method_label(method_dir(method))]).save(ATTACK_GRIDS / f"{name}.png")
    print({"base": metrics["base"], "erased": metrics["erased"], "second_judge": metrics["second_judge"]})


if __name__ == "__main__":
    main()
