"""Stage report: the comparison of the paper's Table 1 / Fig. 4 from the metrics files.

Rows: the base model and the `method` param's erased model (`metrics/eval.json`,
`metrics/attacks.json`), then every method of `compare.methods`
(`metrics/compare/{method}.json`). Writes `reports/table.md`, `reports/radar.png`
(Appendix D's normalised metrics and their average) and `reports/grid.png` (the first
concept images of every model, same prompts and seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dm2.core.config import load_params, parse_section, require
from dm2.core.io import load_tensors, read_json
from dm2.core.paths import ATTACK_METRICS, COMPARE_DIR, COMPARE_METRICS_DIR, CONCEPT_IMAGES, EVAL_DIR, EVAL_METRICS, REPORTS_DIR
from dm2.erasure.params import LABELS, check_method
from dm2.measure.params import CompareParams
from dm2.report import (
    BASE,
    DISAGREEMENT,
    SECOND_METRICS,
    budget_chart,
    budget_markdown,
    judge_disagreements,
    method_grid,
    radar_chart,
    radar_ratios,
    table_markdown,
)


def measured_methods(method: str, others: list[str], compare_dir: Path) -> tuple[list[str], list[str]]:
    """The methods of `others` whose compare metrics were made by this protocol (both
    judges, budget sweeps), and those missing or made by an earlier one: the report leaves
    the latter out and names them, rather than mixing figures of two protocols."""
    current, stale = [], []
    for m in others:
        if m == method:
            continue
        path = compare_dir / f"{m}.json"
        (current if path.is_file() and "asr_sweep" in read_json(path) else stale).append(m)
    return current, stale


def collect_rows(method: str, others: list[str], eval_metrics: dict, attack_metrics: dict, compare_dir: Path) -> dict[str, dict[str, Any]]:
    """Report rows keyed by label, base first: metrics with `asr` per attack, and the second
    judge's figures under `second_judge`."""
    second = attack_metrics["second_judge"]
    rows = {}
    for label, model in ((BASE, "base"), (LABELS[method], "erased")):
        by_second = {**eval_metrics[model].get("second_judge", {}), "asr": second[model]}
        rows[label] = {**eval_metrics[model], "asr": attack_metrics[model], "second_judge": by_second}
    for m in others:
        if m != method:
            rows[LABELS[m]] = read_json(compare_dir / f"{m}.json")
    return rows


def collect_images(method: str, others: list[str], eval_images: Path, compare_dir: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Concept images keyed by label, base first, and the methods of `others` whose images
    are not here (a clone without their `compare` outputs): the grid leaves those out."""
    main = load_tensors(eval_images)
    images, missing = {BASE: main["base"], LABELS[method]: main[method]}, []
    for m in others:
        if m == method:
            continue
        path = compare_dir / m / CONCEPT_IMAGES
        if path.is_file():
            images[LABELS[m]] = load_tensors(path)[m]
        else:
            missing.append(m)
    return images, missing


def collect_sweeps(method: str, others: list[str], attack_metrics: dict, compare_dir: Path) -> dict[str, dict]:
    """ASR-vs-budget sweeps keyed by label, base first."""
    sweeps = {BASE: attack_metrics["sweep"]["base"], LABELS[method]: attack_metrics["sweep"]["erased"]}
    for m in others:
        if m != method:
            sweeps[LABELS[m]] = read_json(compare_dir / f"{m}.json")["asr_sweep"]
    return sweeps


def write_report(
    rows: dict[str, dict[str, Any]],
    images: dict[str, torch.Tensor],
    sweeps: dict[str, dict],
    judges: tuple[str, str],
    out_dir: Path,
    stale: list[str] = (),
    no_images: list[str] = (),
) -> str:
    """table.md: Table 1 by the primary judge, the second judge's figures, ASR against
    budget, and every figure where the two judges disagree by more than 5 points; the radar, the grid and
    the ASR-vs-budget curves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = judge_disagreements(rows, judges)
    table = "\n".join([
        f"Judged by `{judges[0]}` (ASR: best of the restarts at the largest budget):", "", table_markdown(rows),
        f"The same images judged by `{judges[1]}`:", "", table_markdown(rows, SECOND_METRICS),
        "ASR against budget (every restart's curve is in the metrics files):", "", budget_markdown(sweeps, judges),
        f"Where the judges disagree by more than {DISAGREEMENT:.0f} points:", "",
        *([f"- {n}" for n in notes] or ["- nowhere"]), "",
        *([f"Not measured with this protocol, left out: {', '.join(LABELS[m] for m in stale)} (run `dvc repro` to measure them).", ""] if stale else []),
        *([f"The image grid leaves out {', '.join(LABELS[m] for m in no_images)}: their concept images are not in this checkout (`dvc repro compare@METHOD` makes them).", ""] if no_images else []),
    ])  # fmt: skip
    (out_dir / "table.md").write_text(table)
    radar_chart(radar_ratios(rows), out_dir / "radar.png")
    method_grid(images).save(out_dir / "grid.png")
    budget_chart(sweeps, judges, out_dir / "asr_budget.png")
    return table


def main() -> None:
    params = load_params()
    method = params.get("method", "dm2")
    check_method(method)
    compare = parse_section(CompareParams, params.get("compare"), "compare")
    require(EVAL_METRICS.is_file() and ATTACK_METRICS.is_file(), "report", f"{EVAL_METRICS} and {ATTACK_METRICS} are needed; run the evaluate and attack stages")
    attack_metrics = read_json(ATTACK_METRICS)
    others, stale = measured_methods(method, compare.methods, COMPARE_METRICS_DIR)
    rows = collect_rows(method, others, read_json(EVAL_METRICS), attack_metrics, COMPARE_METRICS_DIR)
    images, no_images = collect_images(method, others, EVAL_DIR / CONCEPT_IMAGES, COMPARE_DIR)
    sweeps = collect_sweeps(method, others, attack_metrics, COMPARE_METRICS_DIR)
    judges = (attack_metrics["judge"], attack_metrics["second_judge"]["judge"])
    print(write_report(rows, images, sweeps, judges, REPORTS_DIR, stale, no_images))


if __name__ == "__main__":
    main()
