"""How much the preservation figures move with the sampling seed alone: CLIP score and FD
on `evaluate`'s held-out captions, for the base model and erased ones (LoRA folders), at
several `evaluate.seed` values. The base's spread is the resolution of a CLIP-drop or
FD-rise figure; the erased models' rises, paired with the base on each seed, say whether
a measured cost holds on other images.

    python research/eval_spread.py OUT.json --seeds 0 1 2 3 --lora seed0=artifacts/methods/dm2 seed2=DIR ...
    python research/eval_spread.py OUT.json --model retrained=DIR   # a whole pipeline folder, e.g. one retrained without the concept

Each (model, seed) lands in OUT.json as it finishes and is not made again when the tool
is run again; `--heldout N` measures on the first N captions (default: `evaluate.n_heldout`).
Seed s makes its images as the stage does with `evaluate.seed` s (held-out images from s + 2).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm2.core.config import load_params, parse_section  # noqa: E402
from dm2.core.params import ConceptParams, ModelsParams  # noqa: E402
from dm2.erasure.lora import load_lora_into  # noqa: E402
from dm2.judges.registry import load_judges  # noqa: E402
from dm2.measure.evaluation import EvalSet, load_eval_set  # noqa: E402
from dm2.measure.metrics import frechet_distance  # noqa: E402
from dm2.measure.params import EvaluateParams  # noqa: E402
from dm2.models.clip import clip_score, load_clip  # noqa: E402
from dm2.models.diffusion import encode_prompts, generate, load_pipeline  # noqa: E402
from dm2.world.params import WorldParams  # noqa: E402


def models_to_measure(base: str, loras: list[str], pipelines: list[str]) -> dict[str, tuple[str, str | None]]:
    """Name -> (pipeline folder, LoRA folder or None) for the base and each `--lora` / `--model`
    NAME=DIR, checked before any image is made."""
    models: dict[str, tuple[str, str | None]] = {"base": (base, None)}
    for option, items, needed in (("--lora", loras, "pytorch_lora_weights.safetensors"), ("--model", pipelines, "model_index.json")):
        for item in items:
            name, sep, folder = item.partition("=")
            if not sep or name in models or not (Path(folder) / needed).is_file():
                raise SystemExit(f"{option} {item}: give NAME=DIR, DIR holding {needed}, NAME not 'base' nor used twice")
            models[name] = (base, folder) if option == "--lora" else (folder, None)
    return models


def heldout_figures(pipe, clip, data: EvalSet, p: EvaluateParams, seed: int) -> dict[str, float]:
    """CLIP score and FD of `pipe` on the held-out captions, sampled as `evaluate` does at `evaluate.seed` = seed."""
    images = generate(pipe, encode_prompts(pipe, data.heldout_captions), seed + 2, p.steps, p.guidance)
    return {"clip_score": clip_score(clip, images, data.heldout_captions).mean().item(), "fd": frechet_distance(data.features(images), data.reference_features)}


def spread(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """Per model: CLIP score and FD over its seeds (mean, min, max); for an erased model also
    the CLIP drop and FD rise (%) against the base on the same seed, over the seeds both have."""
    out = {}
    base = results["base"]
    for model, by_seed in results.items():
        row: dict = {}
        for key in ("clip_score", "fd"):
            values = [r[key] for r in by_seed.values()]
            row[key] = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
        if model != "base":
            paired = [s for s in by_seed if s in base]
            drops = [base[s]["clip_score"] - by_seed[s]["clip_score"] for s in paired]
            rises = [100 * (by_seed[s]["fd"] / base[s]["fd"] - 1) for s in paired]
            if paired:
                row["clip_drop"] = {"mean": statistics.mean(drops), "min": min(drops), "max": max(drops)}
                row["fd_rise"] = {"mean": statistics.mean(rises), "min": min(rises), "max": max(rises)}
        row["seeds"] = sorted(by_seed, key=int)
        out[model] = row
    return out


def markdown(summary: dict[str, dict], results: dict) -> str:
    lines = ["| model | seeds | CLIP score mean (min-max) | FD mean (min-max) | CLIP drop per seed | FD rise % per seed |", "| --- " * 6 + "|"]
    base = results["base"]
    for model, row in summary.items():
        c, f = row["clip_score"], row["fd"]
        per = [s for s in row["seeds"] if s in base] if model != "base" else []
        drops = ", ".join(f"{base[s]['clip_score'] - results[model][s]['clip_score']:.2f}" for s in per) or "-"
        rises = ", ".join(f"{100 * (results[model][s]['fd'] / base[s]['fd'] - 1):+.1f}" for s in per) or "-"
        lines.append(
            f"| {model} | {', '.join(row['seeds'])} | {c['mean']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | "
            f"{f['mean']:.2f} ({f['min']:.2f}-{f['max']:.2f}) | {drops} | {rises} |"
        )
    return "\n".join(lines)


def by_setting(summary: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """The erased models grouped by setting (a model named `X_seedN` is erase seed N of setting
    X; any other name is a setting of its own): per figure, the mean over erase seeds of each
    seed's mean over draws, the worst seed's mean and the worst single draw."""
    groups: dict[str, list[dict]] = {}
    for model, row in summary.items():
        if "fd_rise" in row:
            groups.setdefault(re.sub(r"_seed\d+$", "", model), []).append(row)
    return {
        setting: {
            "erase_seeds": len(rows),
            **{
                key: {
                    "mean": statistics.mean(r[key]["mean"] for r in rows),
                    "worst_seed": max(r[key]["mean"] for r in rows),
                    "worst_draw": max(r[key]["max"] for r in rows),
                }
                for key in ("clip_drop", "fd_rise")
            },
        }
        for setting, rows in groups.items()
    }


def settings_markdown(settings: dict[str, dict]) -> str:
    lines = ["| setting | erase seeds | CLIP drop: mean, worst seed, worst draw | FD rise %: mean, worst seed, worst draw |", "| --- " * 4 + "|"]
    for setting, row in settings.items():
        c, f = row["clip_drop"], row["fd_rise"]
        lines.append(
            f"| {setting} | {row['erase_seeds']} | {c['mean']:.2f}, {c['worst_seed']:.2f}, {c['worst_draw']:.2f} | "
            f"{f['mean']:+.1f}, {f['worst_seed']:+.1f}, {f['worst_draw']:+.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--lora", nargs="*", default=[], metavar="NAME=DIR", help="erased models: a name and the folder of its LoRA")
    parser.add_argument("--model", nargs="*", default=[], metavar="NAME=DIR", help="other models: a name and a diffusers pipeline folder")
    parser.add_argument("--heldout", type=int, help="held-out captions measured (default: evaluate.n_heldout)")
    args = parser.parse_args()
    params = load_params()
    m = parse_section(ModelsParams, params["models"], "models")
    models = models_to_measure(m.diffusion, args.lora, args.model)
    p = parse_section(EvaluateParams, params["evaluate"], "evaluate")
    if args.heldout:
        p = replace(p, n_heldout=args.heldout)
    concept = parse_section(ConceptParams, params["concept"], "concept").name
    judge = next(iter(load_judges(m).values()))  # the primary judge: FD is in its feature space
    data = load_eval_set(concept, parse_section(WorldParams, params["world"], "world"), p, judge)
    clip = load_clip(m.clip_name, m.clip_pretrained, "cpu")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name, (pipeline, lora) in models.items():
        todo = [s for s in args.seeds if str(s) not in results.get(name, {})]
        if not todo:
            continue
        pipe = load_pipeline(pipeline, "cpu")
        if lora:
            load_lora_into(pipe, lora)
        for seed in todo:
            results.setdefault(name, {})[str(seed)] = heldout_figures(pipe, clip, data, p, seed)
            args.out.write_text(json.dumps(results, indent=1))
            print(name, seed, results[name][str(seed)], flush=True)
    summary = spread(results)
    text = markdown(summary, results) + "\n\nBy setting, over its erase seeds (each seed's mean over draws):\n\n" + settings_markdown(by_setting(summary))
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
