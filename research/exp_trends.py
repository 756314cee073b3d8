"""The paper's ablation trends (Tables S3, S4, S6) from `dvc exp run`s of the pipeline.

Each run is the pipeline up to `evaluate` with one setting changed and an erase seed:

    dvc exp run --queue -S erase.seed=1 -S verify.tau=0.4 evaluate      # and so on
    dvc queue start -j 2
    dvc exp show --json > exps.json
    python research/exp_trends.py exps.json research/results/trends_pipeline_results.json

The baseline commit's own run (the workspace's `metrics/`) counts as the defaults' seed.
With several commits (`dvc exp show --json -n N`, experiments queued on older ones), the
newest commit's own run is the defaults' seed and the older ones give their experiments only.
Prints a markdown table per ablation, mean (worst seed), `world` / second judge; writes
every run's figures to the JSON file.

A run at one tau is, loop for loop, the run at another tau of the same seed and settings
when its loops' s(c) say so (every loop's randomness comes from the seed and the loop
index): every circumvented loop scored above both taus and the stopping one at or under
both. Such a (seed, tau) with no run of its own is filled by that run, marked `*` in the
seeds column; the runs' s(c) are read from their commits' `plots/erase_s.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

# ablation -> (the params.yaml key it changes, the paper's table)
ABLATIONS = {"tau (S3)": ("verify.tau", "S3"), "tokens (S4)": ("mine.tokens", "S4"), "LoRA on (S6)": ("erase.lora_targets", "S6")}
SEED = "erase.seed"
TAU = "verify.tau"


def _get(params: dict, dotted: str):
    for key in dotted.split("."):
        params = params[key]
    return params


def run_figures(name: str, params: dict, metrics: dict, scores: list[float]) -> dict:
    """One run's settings and figures from its params.yaml and metrics files, and its loops' s(c)."""
    ev, er = metrics["metrics/eval.json"], metrics["metrics/erase.json"]
    base, erased = ev["base"], ev["erased"]
    return {
        "name": name,
        "same_as": None,
        **{key: _get(params, key) for key in [SEED, *(k for k, _ in ABLATIONS.values())]},
        "loops": er["loops"],
        "circumvented": er["circumvented"],
        "last_s": er["last_s"],
        "stopped_by": er["stopped_by"],
        "scores": scores,
        "ratio": erased["ratio"],
        "ratio_second": erased["second_judge"]["ratio"],
        "acc_drop": base["other_shapes_accuracy"] - erased["other_shapes_accuracy"],
        "acc_drop_second": base["second_judge"]["other_shapes_accuracy"] - erased["second_judge"]["other_shapes_accuracy"],
        "clip_drop": base["clip_score"] - erased["clip_score"],
        "fd_rise": 100 * (erased["fd"] / base["fd"] - 1),
    }


def git_scores(rev: str) -> list[float]:
    """A run's loops' s(c), from its commit's `plots/erase_s.json`."""
    text = subprocess.run(["git", "show", f"{rev}:plots/erase_s.json"], capture_output=True, text=True, check=True).stdout
    return [row["s"] for row in json.loads(text)]


def collect(exp_show: list, scores: Callable[[str], list[float]] = git_scores) -> list[dict]:
    """Every finished run in `dvc exp show --json`'s output: the baseline commit's and its
    experiments' (queued, running or failed ones have no metrics and are left out)."""
    runs = []

    def add(entry: dict) -> None:
        data = entry["data"]
        metrics = {path: m.get("data") for path, m in (data.get("metrics") or {}).items()}
        if metrics.get("metrics/eval.json") and metrics.get("metrics/erase.json"):
            name = entry.get("name") or entry["rev"][:7]
            runs.append(run_figures(name, data["params"]["params.yaml"]["data"], metrics, scores(entry["rev"])))

    commits = [c for c in exp_show if c.get("rev") != "workspace"]
    for i, commit in enumerate(commits):
        if i == 0:  # the newest commit's own run; older ones (`-n N`) give their experiments only
            add(commit)
        for exp in commit.get("experiments") or []:
            add(exp["revs"][0])
    return runs


def same_loops(run: dict, tau: float) -> bool:
    """Whether `run` is, loop for loop, the run at `tau`: circumventing happens at s(c) > tau
    and the loop stops at s(c) <= tau, so every loop but a verification stop scored above
    tau and that stop at or under it."""
    scores = run["scores"]
    if run["stopped_by"] == "verification":
        return all(s > tau for s in scores[:-1]) and scores[-1] <= tau
    return all(s > tau for s in scores)


def with_stand_ins(runs: list[dict], defaults: dict) -> list[dict]:
    """`runs` plus, for each tau run and seed with no run at that tau, a measured run of the
    seed (tau aside, the defaults) whose loops are that tau's (`same_loops`)."""
    others = [k for k, _ in ABLATIONS.values() if k != TAU]
    tau_runs = [r for r in runs if all(r[k] == defaults[k] for k in others)]
    taus = sorted({r[TAU] for r in tau_runs})
    added = []
    for seed in sorted({r[SEED] for r in tau_runs}):
        mine = [r for r in tau_runs if r[SEED] == seed]
        for tau in taus:
            if any(r[TAU] == tau for r in mine):
                continue
            for r in mine:
                if same_loops(r, tau):
                    added.append(r | {TAU: tau, "same_as": r["name"], "name": f"{r['name']} as tau {tau}"})
                    break
    return runs + added


def _setting(run: dict, defaults: dict) -> tuple[str, object] | None:
    """(ablation, value) of a run that differs from the defaults in one ablation's key at
    most (seed aside); ("", None) for the defaults themselves."""
    changed = [(name, run[key]) for name, (key, _) in ABLATIONS.items() if run[key] != defaults[key]]
    if len(changed) > 1:
        return None
    return changed[0] if changed else ("", None)


def _stat(values: list[float], worst=max, digits: int = 1) -> str:
    return f"{statistics.mean(values):.{digits}f} ({worst(values):.{digits}f})"


def trend_rows(runs: list[dict], defaults: dict) -> list[dict]:
    """Per ablation and setting (the defaults in every ablation): the seeds' runs, summed up
    as mean (worst seed)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        setting = _setting(run, defaults)
        if setting is None:
            continue
        name, value = setting
        for ablation, (key, _) in ABLATIONS.items():
            if name in ("", ablation):
                label = _label(run[key]) + (" (default)" if name == "" else "")
                groups.setdefault((ablation, label), []).append(run)
    rows = []
    for (ablation, label), group in groups.items():
        group.sort(key=lambda r: r[SEED])
        seeds = [r[SEED] for r in group]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"{ablation} {label}: more than one run of erase seed(s) {seeds}")
        col = lambda k: [r[k] for r in group]  # noqa: E731
        rows.append({
            "ablation": ablation, "setting": label, "seeds": [f"{r[SEED]}*" if r["same_as"] else str(r[SEED]) for r in group],
            "loops": f"{statistics.mean(col('loops')):.1f} ({min(col('loops'))})",
            "ratio": _stat(col("ratio")), "ratio_second": _stat(col("ratio_second")),
            "acc_drop": f"{_stat(col('acc_drop'))} / {_stat(col('acc_drop_second'))}",
            "clip_drop": _stat(col("clip_drop"), digits=2), "fd_rise": _stat(col("fd_rise"), digits=0),
        })  # fmt: skip
    order = list(ABLATIONS)
    return sorted(rows, key=lambda r: (order.index(r["ablation"]), r["setting"].endswith("(default)"), r["setting"]))


def _label(value) -> str:
    return ", ".join(f"`{v}`" for v in value) if isinstance(value, list) else str(value)


def markdown(rows: list[dict]) -> str:
    head = "| ablation | setting | seeds | loops mean (fewest) | Ratio world | Ratio geom. | other-shape acc. drop world / geom. | CLIP drop | FD rise % |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seeds = ", ".join(r["seeds"])
        lines.append(
            f"| {r['ablation']} | {r['setting']} | {seeds} | {r['loops']} | {r['ratio']} | {r['ratio_second']} | {r['acc_drop']} | {r['clip_drop']} | {r['fd_rise']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_show", type=Path, metavar="EXP_SHOW.json", help="`dvc exp show --json`'s output")
    parser.add_argument("out", type=Path, metavar="OUT.json", help="every run's figures and the trend rows")
    args = parser.parse_args()
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())
    defaults = {key: _get(params, key) for key, _ in ABLATIONS.values()}
    runs = with_stand_ins(collect(json.loads(args.exp_show.read_text())), defaults)
    rows = trend_rows(runs, defaults)
    args.out.write_text(json.dumps({"runs": runs, "trends": rows}, indent=1) + "\n")
    print(markdown(rows))
    for r in runs:
        if r["same_as"]:
            print(f"* seed {r[SEED]} at tau {r[TAU]}: the run {r['same_as']} (s(c) {', '.join(f'{x:.3f}' for x in r['scores'])})")


if __name__ == "__main__":
    main()
