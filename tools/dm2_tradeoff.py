"""DM2 settings on the erasure / robustness / preservation trade-off, one run per setting
and seed: erase (in memory, no checkpoint), then a reduced evaluation (Ratio, other-shape
accuracy, CLIP score and FD by both judges) and chosen attacks at full strength (the
`attacks` params as they are: restarts, budgets). The base model is measured the same way
once. Every figure lands in `OUT/results.json` as it finishes, so a killed sweep keeps
what it measured; a setting already there is not run again.

    python tools/dm2_tradeoff.py OUT --setting strong mine.epochs=200 verify.tau=0.1 \\
        --setting defaults --seeds 0 1 2 --attacks cce

`--all KEY=VALUE ...` changes params for every run, the base included (e.g. cut budgets
for a smoke run).

A setting is a name followed by dotted params overrides (YAML values). The evaluation is
`evaluate`'s protocol with fewer images (`--images-per-prompt`, `--heldout`), so its
figures compare with each other and with the base here, not with the stage's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm2.attacks.sweep import attack_settings, base_inputs, search_texts_for, sweep_attack  # noqa: E402
from dm2.attacks.common import searchable  # noqa: E402
from dm2.clip import load_clip  # noqa: E402
from dm2.config import load_params, parse_section  # noqa: E402
from dm2.diffusion import load_pipeline  # noqa: E402
from dm2.erasure import DarkMiner, DM2Settings, EraseState  # noqa: E402
from dm2.evaluation import load_eval_set, measure  # noqa: E402
from dm2.io import load_tensors, write_json  # noqa: E402
from dm2.judge import load_judges  # noqa: E402
from dm2.lora import save_lora  # noqa: E402
from dm2.params import CircumventParams, EraseParams, EvaluateParams, MineParams, VerifyParams, WorldParams  # noqa: E402
from dm2.paths import POOL_FILE, PROMPTS_DIR  # noqa: E402
from dm2.prompts import read_prompts  # noqa: E402


def with_overrides(params: dict, overrides: list[str]) -> dict:
    """`params` with each `a.b.c=value` set (value read as YAML); unknown sections fail."""
    out = copy.deepcopy(params)
    for item in overrides:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = out
        for part in path:
            if part not in node:
                raise SystemExit(f"{key}: no section {part!r} in params.yaml")
            node = node[part]
        node[last] = yaml.safe_load(value)
    return out


def dm2_settings(params: dict) -> DM2Settings:
    return DM2Settings(
        parse_section(EraseParams, params["erase"], "erase"),
        parse_section(MineParams, params["mine"], "mine"),
        parse_section(VerifyParams, params["verify"], "verify"),
        parse_section(CircumventParams, params["circumvent"], "circumvent"),
    )


def measure_model(pipe, params: dict, eval_p: EvaluateParams, attacks: list[str], inputs, folder: Path) -> dict:
    """The reduced evaluation and the chosen attacks on `pipe` as it is."""
    models, concept, p, _ = attack_settings(params)
    world = parse_section(WorldParams, params["world"], "world")
    judges = load_judges(models)
    (first, judge), second = judges.items()
    clip = load_clip(models.clip_name, models.clip_pretrained)
    data = load_eval_set(concept.name, world, eval_p, judge)
    start = time.time()
    metrics, _, _ = measure(pipe, judge, clip, data, concept.name, eval_p, second=second)
    row = {"eval": metrics, "eval_seconds": round(time.time() - start, 1), "asr": {}, "attack_seconds": {}}
    for name in attacks:
        start = time.time()
        curves, _ = sweep_attack(name, pipe, judges, concept.name, inputs, p, folder / "attacks")
        row["asr"][name] = {j: curves[j]["best"] for j in judges} | {"budgets": curves["budgets"]}
        row["attack_seconds"][name] = round(time.time() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--setting", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--attacks", nargs="*", default=["cce"])
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--all", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run, the base included")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    params = with_overrides(load_params(), args.all)
    threads = torch.get_num_threads()  # erase pins its own; the rest runs at the default
    models, concept, p, _ = attack_settings(params)
    eval_p = replace(
        parse_section(EvaluateParams, params["evaluate"], "evaluate"), images_per_prompt=args.images_per_prompt, n_heldout=args.heldout
    )
    pipe = load_pipeline(models.diffusion)
    judge = next(iter(load_judges(models).values()))
    allowed = searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings, search_texts_for(p, PROMPTS_DIR))
    inputs = base_inputs(pipe, judge, concept.name, read_prompts(PROMPTS_DIR / f"{concept.name}.csv"), p, allowed)
    if "base" not in results:
        results["base"] = measure_model(pipe, params, eval_p, args.attacks, inputs, args.out / "base")
        write_json(results, results_path)
    pool = load_tensors(POOL_FILE)
    for name, *overrides in args.setting:
        for seed in args.seeds:
            run = f"{name}/seed{seed}"
            if run in results:
                continue
            run_params = with_overrides(params, [*overrides, f"erase.seed={seed}"])
            settings = dm2_settings(run_params)
            pipe = load_pipeline(models.diffusion)
            torch.set_num_threads(settings.erase.cpu_threads)
            start = time.time()
            miner = DarkMiner(pipe, load_clip(models.clip_name, models.clip_pretrained), pool["latents"], pool["images"], settings, concept.prompt)
            state = miner.run(EraseState(run))
            erase_seconds = round(time.time() - start, 1)
            torch.set_num_threads(threads)
            folder = args.out / name / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            save_lora(pipe.unet, folder)
            row = measure_model(pipe, run_params, eval_p, args.attacks, inputs, folder)
            row.update(overrides=overrides, loops=[{k: r[k] for k in ("s", "s_after", "circumvented")} for r in state.log],
                       stop=state.stop, erase_seconds=erase_seconds)  # fmt: skip
            results[run] = row
            write_json(results, results_path)
            print(run, json.dumps({k: row[k] for k in ("asr", "erase_seconds")}), flush=True)


if __name__ == "__main__":
    main()
