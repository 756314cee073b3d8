"""DM2 settings on the erasure / robustness / preservation trade-off, one run per setting
and seed: erase (in memory, no checkpoint), then a reduced evaluation (Ratio, other-shape
accuracy, CLIP score and FD by both judges) and chosen attacks at full strength (the
`attacks` params as they are: restarts, budgets). The base model is measured the same way
once. Every figure lands in `OUT/results.json` as it finishes, so a killed sweep keeps
what it measured; a setting already there is not run again.

    python research/dm2_tradeoff.py OUT --setting strong mine.epochs=200 verify.tau=0.1 \\
        --setting defaults --seeds 0 1 2 --attacks cce

`--all KEY=VALUE ...` changes params for every run, the base included (e.g. cut budgets
for a smoke run). `--from EARLIER_OUT` measures a run again from the LoRA an earlier sweep
saved (its loops and erase time are copied), e.g. with more attacks or restarts. The
attacks start from stage `attack_base`'s inputs (Ring-A-Bell's search included) when
they were made with the same `attacks` params; otherwise the base-side inputs are made
here (Ring-A-Bell's search only when that attack is asked for).

A setting is a name followed by dotted params overrides (YAML values). The evaluation is
`evaluate`'s protocol with fewer images (`--images-per-prompt`, `--heldout`), so its
figures compare with each other and with the base here, not with the stage's.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm2.attacks.common import searchable  # noqa: E402
from dm2.attacks.sweep import INPUTS_FILE, attack_settings, base_inputs, load_inputs, prepare_attacks, search_texts_for, sweep_attack  # noqa: E402
from dm2.core.config import ParamsError, load_params, parse_section  # noqa: E402
from dm2.core.grid import image_grid  # noqa: E402
from dm2.core.io import load_tensors, save_tensors, write_json  # noqa: E402
from dm2.core.paths import ATTACK_BASE_DIR, COMPARE_METRICS_DIR, EVAL_METRICS, POOL_FILE, PROMPTS_DIR  # noqa: E402
from dm2.erasure.dark_miner import DarkMiner, DM2Settings, EraseState  # noqa: E402
from dm2.erasure.lora import LORA_FILE, load_lora_into, save_lora  # noqa: E402
from dm2.erasure.params import CircumventParams, EraseParams, MineParams, VerifyParams  # noqa: E402
from dm2.judges.registry import Judge, judge_concept, load_judges  # noqa: E402
from dm2.measure.evaluation import load_eval_set, measure  # noqa: E402
from dm2.measure.params import EvaluateParams  # noqa: E402
from dm2.models.clip import load_clip  # noqa: E402
from dm2.models.diffusion import load_pipeline  # noqa: E402
from dm2.world.params import WorldParams  # noqa: E402
from dm2.world.prompts import read_prompts  # noqa: E402


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


def attack_inputs(pipe, judge: Judge, params: dict, attacks: list[str]):
    """The base-side attack inputs: `attack_base`'s when made with these `attacks` params,
    else made here (Ring-A-Bell's search, the long part, only if that attack is asked)."""
    _, concept, p, key = attack_settings(params)
    try:
        return load_inputs(ATTACK_BASE_DIR / INPUTS_FILE, key)
    except (FileNotFoundError, ParamsError) as err:
        print(f"not using attack_base's inputs: {err}", flush=True)
    prompts = read_prompts(PROMPTS_DIR / f"{concept.name}.csv")
    if "ring_a_bell" in attacks:
        return prepare_attacks(pipe, judge, concept.name, prompts, p, search_texts_for(p, PROMPTS_DIR))
    allowed = searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings, search_texts_for(p, PROMPTS_DIR))
    return base_inputs(pipe, judge, concept.name, prompts, p, allowed)


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
        curves, images = sweep_attack(name, pipe, judges, concept.name, inputs, p, folder / "attacks")
        row["asr"][name] = {j: curves[j]["best"] for j in judges} | {"budgets": curves["budgets"]}
        row.setdefault("agreement", {})[name] = keep_images(images, judges, concept.name, folder / "attacks" / name)
        row["attack_seconds"][name] = round(time.time() - start, 1)
    return row


def keep_images(images: torch.Tensor, judges: dict[str, Judge], concept: str, folder: Path) -> dict[str, int]:
    """Restart 0's last attack images, kept (`images.safetensors`) and drawn grouped by the
    two judges' verdicts (`agreement.png`: a row each for both, only the first, only the
    second, neither), so that where the judges disagree can be looked at. Returns the
    count in each group."""
    (first, j1), (second, j2) = judges.items()
    a, b = judge_concept(j1, images, concept)[1], judge_concept(j2, images, concept)[1]
    groups = {"both": a & b, f"{first} only": a & ~b, f"{second} only": ~a & b, "neither": ~a & ~b}
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"images": images.contiguous(), f"is_concept_{first}": a, f"is_concept_{second}": b}, folder / "images.safetensors")
    shown = {name: images[mask] for name, mask in groups.items() if mask.any()}
    width = max(len(v) for v in shown.values())
    rows = [torch.cat([v, torch.ones(width - len(v), *v.shape[1:])]) for v in shown.values()]  # white fills short rows
    image_grid(rows, [f"{name} ({len(v)})" for name, v in shown.items()]).save(folder / "agreement.png")
    return {name: int(mask.sum()) for name, mask in groups.items()}


def summary(results: dict, compare_dir: Path, eval_metrics: Path) -> tuple[str, list[dict]]:
    """A markdown table of every run (drops against this protocol's base) and the points
    of the trade-off plot: each DM2 run, plus the baselines' full-protocol figures from
    `compare_dir` (their other-shape accuracy uses the same 100 prompts and seeds)."""
    base = results["base"]["eval"]
    rows = ["| run | loops (circumvented) | Ratio world / geom. | other-shape acc. drop world / geom. | CLIP drop | FD rise % | "
            + "CCE ASR world / geom. per budget |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    points = []
    for run, r in results.items():
        e = r["eval"]
        drop = (base["other_shapes_accuracy"] - e["other_shapes_accuracy"], base["second_judge"]["other_shapes_accuracy"] - e["second_judge"]["other_shapes_accuracy"])
        loops = f"{len(r['loops'])} ({sum(x['circumvented'] for x in r['loops'])})" if "loops" in r else "-"
        cce = r["asr"].get("cce")
        curve = " / ".join(f"{w:.0f}-{g:.0f}" for w, g in zip(cce["world"], cce["geometric"])) if cce else "-"
        rows.append(
            f"| {run} | {loops} | {e['ratio']:.1f} / {e['second_judge']['ratio']:.1f} | {drop[0]:.1f} / {drop[1]:.1f} | "
            f"{base['clip_score'] - e['clip_score']:.2f} | {100 * (e['fd'] / base['fd'] - 1):.1f} | {curve} |"
        )
        if cce and run != "base":
            points.append({"name": run, "cce": cce["world"][-1], "acc_drop": drop[0], "clip_drop": base["clip_score"] - e["clip_score"], "dm2": True})
    if eval_metrics.is_file():
        full_base = json.loads(eval_metrics.read_text())["base"]
        for path in sorted(compare_dir.glob("*.json")):
            m = json.loads(path.read_text())
            points.append({"name": path.stem, "cce": m["asr"]["cce"], "acc_drop": full_base["other_shapes_accuracy"] - m["other_shapes_accuracy"],
                           "clip_drop": full_base["clip_score"] - m["clip_score"], "dm2": False})  # fmt: skip
    return "\n".join(rows), points


def over_seeds(results: dict) -> str:
    """Per setting, over its seeds: mean and worst (the highest Ratio / drop / ASR, the
    fewest loops) of loops, Ratio, other-shape accuracy drop, CLIP drop and FD rise by both
    judges; then, per setting and attack, ASR at the largest budget (best restart) by both
    judges, over the seeds that ran that attack."""
    base = results["base"]["eval"]
    settings: dict[str, list[dict]] = {}
    for run, r in sorted(results.items()):
        if "/" in run:
            settings.setdefault(run.split("/")[0], []).append(r | {"seed": run.split("/")[1]})

    def stat(values: list[float], worst=max) -> str:
        return f"{sum(values) / len(values):.1f} ({worst(values):.1f})"

    rows = ["| setting | seeds | loops mean (fewest) | Ratio world mean (worst) | Ratio geom. mean (worst) | other-shape acc. drop world | "
            "other-shape acc. drop geom. | CLIP drop | FD rise % |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, runs in settings.items():
        evals = [r["eval"] for r in runs]
        rows.append(
            f"| {name} | {len(runs)} | {stat([len(r['loops']) for r in runs], min)} | {stat([e['ratio'] for e in evals])} | "
            f"{stat([e['second_judge']['ratio'] for e in evals])} | "
            f"{stat([base['other_shapes_accuracy'] - e['other_shapes_accuracy'] for e in evals])} | "
            f"{stat([base['second_judge']['other_shapes_accuracy'] - e['second_judge']['other_shapes_accuracy'] for e in evals])} | "
            f"{stat([base['clip_score'] - e['clip_score'] for e in evals])} | {stat([100 * (e['fd'] / base['fd'] - 1) for e in evals])} |"
        )
    rows += ["", "| setting | attack | seeds | ASR world mean (worst) | ASR geom. mean (worst) | per seed, world / geom. |", "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in settings.items():
        for attack in dict.fromkeys(a for r in runs for a in r["asr"]):
            ran = [r for r in runs if attack in r["asr"]]
            second = runs[0]["eval"]["second_judge"]["judge"]  # results.json sorts keys: put the primary judge first
            judges = [j for j in ran[0]["asr"][attack] if j not in ("budgets", second)] + [second]
            last = {j: [r["asr"][attack][j][-1] for r in ran] for j in judges}
            per_seed = ", ".join(f"{r['seed']} " + " / ".join(f"{last[j][i]:.1f}" for j in judges) for i, r in enumerate(ran))
            rows.append(f"| {name} | {attack} | {len(ran)} | " + " | ".join(stat(last[j]) for j in judges) + f" | {per_seed} |")
    return "\n".join(rows)


def plot(points: list[dict], path: Path) -> None:
    """CCE ASR (world judge, best restart, largest budget) against each preservation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "acc_drop", "other-shape accuracy drop (points, world judge)"), (axes[1], "clip_drop", "CLIP score drop")):
        for pt in points:
            ax.scatter(pt[key], pt["cce"], marker="o" if pt["dm2"] else "s", color="tab:blue" if pt["dm2"] else "tab:gray")
            ax.annotate(pt["name"], (pt[key], pt["cce"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("CCE ASR % (world judge)")
        ax.set_ylim(-5, 105)
    fig.suptitle("Erasure robustness against preservation: DM2 settings (circles) and baselines (squares)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--setting", nargs="+", action="append", default=[], metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--attacks", nargs="*", default=["cce"])
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--all", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run, the base included")
    parser.add_argument("--base-attacks", action="store_true", help="attack the base model too (stage attack_base has its figures)")
    parser.add_argument("--from", dest="earlier", type=Path, help="an earlier OUT: measure its runs again from their saved LoRAs")
    parser.add_argument("--summary", action="store_true", help="only write OUT/summary.md and OUT/tradeoff.png from the results so far")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.summary:
        table, points = summary(results, COMPARE_METRICS_DIR, EVAL_METRICS)
        table += "\n\n" + over_seeds(results)
        (args.out / "summary.md").write_text(table + "\n")
        plot(points, args.out / "tradeoff.png")
        print(table)
        return

    params = with_overrides(load_params(), args.all)
    threads = torch.get_num_threads()  # erase pins its own; the rest runs at the default
    models, concept, _, _ = attack_settings(params)
    eval_p = replace(
        parse_section(EvaluateParams, params["evaluate"], "evaluate"), images_per_prompt=args.images_per_prompt, n_heldout=args.heldout
    )
    pipe = load_pipeline(models.diffusion)
    judge = next(iter(load_judges(models).values()))
    inputs = attack_inputs(pipe, judge, params, args.attacks)
    if "base" not in results:
        results["base"] = measure_model(pipe, params, eval_p, args.attacks if args.base_attacks else [], inputs, args.out / "base")
        write_json(results, results_path)
    earlier = json.loads((args.earlier / "results.json").read_text()) if args.earlier else {}
    pool = load_tensors(POOL_FILE)
    for name, *overrides in args.setting:
        for seed in args.seeds:
            run = f"{name}/seed{seed}"
            if run in results:
                continue
            run_params = with_overrides(params, [*overrides, f"erase.seed={seed}"])
            settings = dm2_settings(run_params)
            pipe = load_pipeline(models.diffusion)
            folder = args.out / name / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            if args.earlier:
                if run not in earlier:
                    raise SystemExit(f"{args.earlier / 'results.json'}: no run {run!r} to measure again")
                if earlier[run]["overrides"] != overrides:
                    raise SystemExit(f"{run}: overrides {overrides} differ from {args.earlier}'s {earlier[run]['overrides']}")
                load_lora_into(pipe, args.earlier / name / f"seed{seed}")
                shutil.copy(args.earlier / name / f"seed{seed}" / LORA_FILE, folder)
                erased = {k: earlier[run][k] for k in ("loops", "stop", "erase_seconds")}
            else:
                torch.set_num_threads(settings.erase.cpu_threads)
                start = time.time()
                miner = DarkMiner(pipe, load_clip(models.clip_name, models.clip_pretrained), pool["latents"], pool["images"], settings, concept.prompt)
                state = miner.run(EraseState(run))
                erased = {"loops": [{k: r[k] for k in ("s", "s_after", "circumvented")} for r in state.log], "stop": state.stop,
                          "erase_seconds": round(time.time() - start, 1)}  # fmt: skip
                torch.set_num_threads(threads)
                save_lora(pipe.unet, folder)
            row = measure_model(pipe, run_params, eval_p, args.attacks, inputs, folder)
            row.update(overrides=overrides, **erased)
            results[run] = row
            write_json(results, results_path)
            print(run, json.dumps({k: row[k] for k in ("asr", "erase_seconds")}), flush=True)


if __name__ == "__main__":
    main()
