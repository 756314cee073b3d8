"""How much the preservation figures move with the sampling seed alone: CLIP score and FD
on `evaluate`'s held-out captions, for the base model and erased ones (LoRA folders), at
several `evaluate.seed` values. The base's spread is the resolution of a CLIP-drop or
FD-rise figure; the erased models' rises, paired with the base on each seed, say whether
a measured cost holds on other images.

    python tools/eval_spread.py OUT.json --seeds 0 1 2 3 --lora seed0=artifacts/methods/dm2 seed2=DIR ...

Each (model, seed) lands in OUT.json as it finishes and is not made again when the tool
is run again; `--heldout N` measures on the first N captions (default: `evaluate.n_heldout`).
Seed s makes its images as the stage does with `evaluate.seed` s (held-out images from s + 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dm2.clip import clip_score, load_clip  # noqa: E402
from dm2.config import load_params, parse_section  # noqa: E402
from dm2.diffusion import encode_prompts, generate, load_pipeline  # noqa: E402
from dm2.evaluation import EvalSet, load_eval_set  # noqa: E402
from dm2.judge import load_judges  # noqa: E402
from dm2.lora import load_lora_into  # noqa: E402
from dm2.metrics import frechet_distance  # noqa: E402
from dm2.params import ConceptParams, EvaluateParams, ModelsParams, WorldParams  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--lora", nargs="*", default=[], metavar="NAME=DIR", help="erased models: a name and the folder of its LoRA")
    parser.add_argument("--heldout", type=int, help="held-out captions measured (default: evaluate.n_heldout)")
    args = parser.parse_args()
    models = {"base": None}
    for item in args.lora:
        name, sep, folder = item.partition("=")
        if not sep or name == "base" or not (Path(folder) / "pytorch_lora_weights.safetensors").is_file():
            raise SystemExit(f"--lora {item}: give NAME=DIR, DIR holding pytorch_lora_weights.safetensors, NAME not 'base'")
        models[name] = folder
    params = load_params()
    p = parse_section(EvaluateParams, params["evaluate"], "evaluate")
    if args.heldout:
        p = replace(p, n_heldout=args.heldout)
    m = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept").name
    judge = next(iter(load_judges(m).values()))  # the primary judge: FD is in its feature space
    data = load_eval_set(concept, parse_section(WorldParams, params["world"], "world"), p, judge)
    clip = load_clip(m.clip_name, m.clip_pretrained, "cpu")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name, folder in models.items():
        todo = [s for s in args.seeds if str(s) not in results.get(name, {})]
        if not todo:
            continue
        pipe = load_pipeline(m.diffusion, "cpu")
        if folder:
            load_lora_into(pipe, folder)
        for seed in todo:
            results.setdefault(name, {})[str(seed)] = heldout_figures(pipe, clip, data, p, seed)
            args.out.write_text(json.dumps(results, indent=1))
            print(name, seed, results[name][str(seed)], flush=True)
    summary = spread(results)
    args.out.with_suffix(".md").write_text(markdown(summary, results) + "\n")
    print(markdown(summary, results))


if __name__ == "__main__":
    main()
