"""Where DM2 stands: full-strength attack ASR against preservation for every DM2 setting
measured with `research/dm2_tradeoff.py` (any number of its results files), beside the
baselines of `metrics/compare` and the retrained reference (`research/retrained.py`).

    python research/tradeoff_map.py OUT.png OUT.md RESULTS.json [RESULTS.json ...] \
        [--retrained research/results/retrained_results.json] [--highlight SETTING] [--label SETTING=NAME ...]

Per setting, the mean over its seeds of the ASR at the largest budget (best of the
restarts) against preservation: the CLIP score drop and the other-shape accuracy drop
(against its own file's base, measured the same way), with bars from the best to the worst
seed. One column per judge (`world` and the second one, whose verdicts give both the ASR
and the accuracy of that column); rows: CCE and UnlearnDiff against the CLIP drop, CCE
against the accuracy drop. Baselines carry their full-protocol figures, one run each.
Settings that ran neither attack on every seed are left out. The markdown table holds the
same figures, mean (worst seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ATTACKS = {"cce": ("CCE", 30.0), "unlearndiff": ("UnlearnDiff", 20.0)}  # name, the goal (ASR %)
PRESERVATION = {"clip": ("CLIP score drop", 1.5), "acc": ("other-shape accuracy drop, points", 3.0)}  # axis, the goal
PANELS = [("cce", "clip"), ("unlearndiff", "clip"), ("cce", "acc")]


def setting_points(results: dict, source: str) -> list[dict]:
    """One point per setting of a `dm2_tradeoff.py` / `retrained.py` results dict: the
    mean, best and worst seed of each attack's last-budget ASR per judge, CLIP drop and
    other-shape accuracy drop by each judge."""
    base = results["base"]["eval"]
    seeds: dict[str, list[dict]] = {}
    for run, r in results.items():
        if "/" in run and isinstance(r, dict) and "eval" in r:
            seeds.setdefault(run.split("/")[0], []).append(r)
    points = []
    for name, runs in seeds.items():
        clip = [base["clip_score"] - r["eval"]["clip_score"] for r in runs]
        acc = {"world": [base["other_shapes_accuracy"] - r["eval"]["other_shapes_accuracy"] for r in runs]}
        if all("second_judge" in r["eval"] for r in [results["base"], *runs]):
            second = base["second_judge"]
            acc[second["judge"]] = [second["other_shapes_accuracy"] - r["eval"]["second_judge"]["other_shapes_accuracy"] for r in runs]
        asr = {}
        for attack in ATTACKS:
            ran = [r["asr"][attack] for r in runs if attack in r.get("asr", {})]
            if len(ran) == len(runs):  # only settings every seed of which ran the attack
                judges = [j for j in ran[0] if j != "budgets"]
                asr[attack] = {j: [a[j][-1] for a in ran] for j in judges}
        if asr:
            points.append({"name": name, "source": source, "seeds": len(runs), "clip_drop": clip, "acc_drop": acc, "asr": asr})
    return points


def baseline_points(compare_dir: Path, eval_metrics: Path) -> list[dict]:
    """The baselines' full-protocol figures (one run each) in `setting_points`' form."""
    base = json.loads(eval_metrics.read_text())["base"]
    points = []
    for path in sorted(compare_dir.glob("*.json")):
        m = json.loads(path.read_text())
        asr = {a: {j: [m["asr_sweep"][a][j]["best"][-1]] for j in m["asr_sweep"][a] if j != "budgets"} for a in ATTACKS if a in m["asr_sweep"]}
        second = base["second_judge"]
        acc = {"world": [base["other_shapes_accuracy"] - m["other_shapes_accuracy"]],
               second["judge"]: [second["other_shapes_accuracy"] - m["second_judge"]["other_shapes_accuracy"]]}  # fmt: skip
        points.append({
            "name": path.stem, "source": "metrics/compare", "seeds": 1, "clip_drop": [base["clip_score"] - m["clip_score"]],
            "acc_drop": acc, "asr": asr,
        })  # fmt: skip
    return points


def _stat(values: list[float], digits: int = 1) -> str:
    return f"{statistics.mean(values):.{digits}f} ({max(values):.{digits}f})"


def markdown(points: list[dict], judges: list[str]) -> str:
    head = "| setting | from | seeds | CLIP drop | " + " | ".join(
        [f"other-shape acc. drop {j}" for j in judges] + [f"{ATTACKS[a][0]} {j}" for a in ATTACKS for j in judges]
    )
    lines = [head + " |", "| --- " * (4 + (1 + len(ATTACKS)) * len(judges)) + "|"]
    for p in sorted(points, key=lambda p: statistics.mean(p["clip_drop"])):
        acc = [_stat(p["acc_drop"][j]) if j in p["acc_drop"] else "-" for j in judges]
        cells = [_stat(p["asr"][a][j]) if a in p["asr"] and j in p["asr"][a] else "-" for a in ATTACKS for j in judges]
        lines.append(f"| {p['name']} | {p['source']} | {p['seeds']} | {_stat(p['clip_drop'], 2)} | " + " | ".join(acc + cells) + " |")
    return "\n".join(lines)


def plot(points: list[dict], judges: list[str], highlight: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), len(judges), figsize=(6 * len(judges), 4.6 * len(PANELS)), squeeze=False)
    for row, (attack, axis) in enumerate(PANELS):
        label, goal = ATTACKS[attack]
        x_label, x_goal = PRESERVATION[axis]
        for col, judge in enumerate(judges):
            ax = axes[row][col]
            for p in points:
                values = p["asr"].get(attack, {}).get(judge)
                xs = p["clip_drop"] if axis == "clip" else p["acc_drop"].get(judge)
                if not values or not xs:
                    continue
                x, y = statistics.mean(xs), statistics.mean(values)
                kind = "baseline" if p["source"] == "metrics/compare" else "retrained" if p["name"] == "retrained" else "dm2"
                style = {"baseline": ("s", "tab:gray"), "retrained": ("*", "black"), "dm2": ("o", "tab:blue")}[kind]
                marker, colour = style if p["name"] != highlight else ("D", "tab:red")
                ax.errorbar(
                    x, y, xerr=[[x - min(xs)], [max(xs) - x]], yerr=[[y - min(values)], [max(values) - y]],
                    fmt=marker, color=colour, ms=8 if kind != "dm2" or p["name"] == highlight else 5, elinewidth=0.6, capsize=2,
                )  # fmt: skip
                ax.annotate(p["name"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.axhline(goal, ls="--", color="tab:green", lw=0.8)
            ax.axvline(x_goal, ls="--", color="tab:green", lw=0.8)
            # most settings are within 2-3 points, the baselines and deep LoRAs far out
            ax.set_xscale("symlog", linthresh=2 if axis == "clip" else 4)
            ticks = [-2, -1, 0, 1, 1.5, 2, 5, 10, 20, 30] if axis == "clip" else [-2, 0, 2, 3, 4, 10, 20, 40]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.set_ylim(-5, 105)
            ax.set_xlabel(f"{x_label} (symlog)")
            ax.set_ylabel(f"{label} ASR %, {judge} judge (best restart)")
    fig.suptitle(
        "DM2 settings (blue; red: the defaults), baselines (gray), the model retrained without the concept (star);\n"
        "mean over seeds, bars from best to worst seed; dashed: the goals"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path)
    parser.add_argument("md", type=Path)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--retrained", type=Path)
    parser.add_argument("--highlight", default="", help="the setting drawn in red (after --label)")
    parser.add_argument("--label", nargs="*", default=[], metavar="SETTING=NAME", help="names to show instead of the settings'")
    parser.add_argument("--compare", type=Path, default=Path("metrics/compare"))
    parser.add_argument("--eval", type=Path, default=Path("metrics/eval.json"))
    args = parser.parse_args()
    for path in [*args.results, *filter(None, [args.retrained]), args.eval]:
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    points = [p for path in args.results for p in setting_points(json.loads(path.read_text()), path.name)]
    if args.retrained:
        points += setting_points(json.loads(args.retrained.read_text()), args.retrained.name)
    points += baseline_points(args.compare, args.eval)
    labels = dict(item.split("=", 1) for item in args.label)
    for p in points:
        p["name"] = labels.get(p["name"], p["name"])
    second = json.loads(args.eval.read_text())["base"]["second_judge"]["judge"]
    judges = ["world", second]
    plot(points, judges, args.highlight, args.png)
    args.md.write_text(markdown(points, judges) + "\n")
    print(markdown(points, judges))


if __name__ == "__main__":
    main()
