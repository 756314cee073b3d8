"""The comparison report: the Dark Miner paper's Table 1 as Markdown, its Fig. 4 (radar
of normalised metrics per method, bar of their average; Appendix D) and an image grid
with one row per method.

Input rows map a name ("base", "DM2", "ESD-x", ...) to metrics: ratio,
ratio_synonym_prompts, score, clip_score, fd, other_shapes_accuracy (the stages' names)
and asr: {cce, p4d, unlearndiff, ring_a_bell}; rates in %; and `second_judge`: the same
erasure and attack figures by the second judge. Any may be missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dm2.attacks.params import ATTACK_LABELS  # noqa: E402
from dm2.core.grid import image_grid  # noqa: E402

Rows = Mapping[str, Mapping[str, Any]]
BASE = "base"
MISSING = "–"


@dataclass(frozen=True)
class Metric:
    key: str  # metrics key; "asr.<attack>" for an attack, "asr.mean" for their mean
    label: str
    higher_is_better: bool
    decimals: int
    kind: str = "decline"  # radar transform (Appendix D): "decline", "ratio" (m / m_ori) or "inverse" (m_ori / m)


METRICS = [
    Metric("ratio", "Ratio", False, 1),
    Metric("ratio_synonym_prompts", "Ratio syn.", False, 1),
    Metric("score", "Score", False, 3),
    Metric("clip_score", "CLIP", True, 2, "ratio"),
    Metric("fd", "FD", False, 2, "inverse"),
    Metric("other_shapes_accuracy", "Other acc.", True, 1, "ratio"),
    *(Metric(f"asr.{k}", f"ASR {name}", False, 1) for k, name in ATTACK_LABELS.items()),
    Metric("asr.mean", "ASR mean", False, 1),
]
SECOND = "second_judge"
# What the second judge reports: erasure, other-shape accuracy and the attacks.
SECOND_METRICS = [
    Metric(f"{SECOND}.{m.key}", m.label, m.higher_is_better, m.decimals, m.kind)
    for m in METRICS
    if m.key in ("ratio", "ratio_synonym_prompts", "other_shapes_accuracy") or m.key.startswith("asr.")
]
DISAGREEMENT = 5.0  # points between the judges worth saying
# The paper's radar axes (Fig. 4): Ratio, Score, CLIP, FID and the four attacks.
RADAR = ["ratio", "score", "clip_score", "fd", *(f"asr.{k}" for k in ATTACK_LABELS)]


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """The value of `key` in one row, None when missing or not a finite number. The mean
    ASR needs all four attacks, so methods are averaged over the same attacks."""
    if key.endswith("asr.mean"):
        prefix = key[: -len("mean")]
        values = [metric_value(metrics, f"{prefix}{k}") for k in ATTACK_LABELS]
        return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def ordered(rows: Rows) -> list[str]:
    """The base model first, then the methods in the order given."""
    return sorted(rows, key=lambda name: name != BASE)


def table_markdown(rows: Rows, metrics: list[Metric] = METRICS) -> str:
    """Table 1 of the paper as a Markdown table: one row per model, base first."""
    header = ["Model", *(f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(metrics)]
    for name in ordered(rows):
        cells = [name]
        for m in metrics:
            v = metric_value(rows[name], m.key)
            cells.append(MISSING if v is None else f"{v:.{m.decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def judge_disagreements(rows: Rows, judges: tuple[str, str]) -> list[str]:
    """Every figure the two judges both report and differ on by more than DISAGREEMENT
    points, as "model: metric first vs second"."""
    notes = []
    for name in ordered(rows):
        for m in SECOND_METRICS:
            first, second = metric_value(rows[name], m.key[len(SECOND) + 1 :]), metric_value(rows[name], m.key)
            if first is not None and second is not None and abs(first - second) > DISAGREEMENT:
                notes.append(f"{name}: {m.label} {judges[0]} {first:.1f} vs {judges[1]} {second:.1f}")
    return notes


def budget_markdown(sweeps: Mapping[str, Mapping[str, Any]], judges: tuple[str, str]) -> str:
    """ASR against budget as a Markdown table, one row per attack and model: the best
    restart at each budget by each judge ("budget: ASR"), and the prompts that any restart
    attacked at the largest budget by the primary judge."""
    lines = [
        f"| Attack | Model | {judges[0]}, best restart per budget | {judges[1]} | {judges[0]}, any restart at the largest |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for attack, label in ATTACK_LABELS.items():
        for name in ordered(sweeps):
            curve = sweeps[name].get(attack)
            if curve is None:
                continue
            cells = [label, name]
            for judge in judges:
                best = curve.get(judge, {}).get("best")
                cells.append(MISSING if best is None else ", ".join(f"{b}: {v:.1f}" for b, v in zip(curve["budgets"], best)))
            any_restart = curve.get(judges[0], {}).get("any_restart")
            cells.append(MISSING if not any_restart else f"{any_restart[-1]:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_chart(sweeps: Mapping[str, Mapping[str, Any]], judges: tuple[str, str], path: str | Path) -> None:
    """ASR against attack budget, one panel per attack: the best restart's ASR per model
    (colour), by the primary judge (solid) and the second one (dashed)."""
    fig, axes = plt.subplots(1, len(ATTACK_LABELS), figsize=(4 * len(ATTACK_LABELS), 3.6), sharey=True)
    for ax, (attack, label) in zip(axes, ATTACK_LABELS.items()):
        for i, (name, sweep) in enumerate(sweeps.items()):
            if attack not in sweep:
                continue
            curve = sweep[attack]
            for judge, style in zip(judges, ("-", "--")):
                if judge in curve:
                    ax.plot(curve["budgets"], curve[judge]["best"], style, marker="o", ms=3, color=f"C{i % 10}",
                            label=f"{name} ({judge})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_title(label)
        ax.set_xlabel("budget (steps / iterations / generations)")
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("ASR % (best of restarts)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _normalised(m: Metric, ori: float, e: float) -> float | None:
    if m.kind == "ratio":
        return e / ori if ori else None
    if m.kind == "inverse":
        return ori / e if e else None
    return (ori - e) / ori if ori else None


def radar_ratios(rows: Rows, axes: list[str] = RADAR) -> dict[str, dict[str, float]]:
    """Appendix D: per method (every row but the base) and radar axis, the metric made
    "larger is better" against the base model: CLIP (and other-shape accuracy) as
    sanitised / original, FD as original / sanitised, erasure and attack metrics as the
    relative decline (m_ori - m_e) / m_ori. Axes missing on either side, or with a zero
    denominator, are left out."""
    if BASE not in rows:
        raise ValueError(f"radar_ratios: no {BASE!r} row to normalise against; rows: {list(rows)}")
    by_key = {m.key: m for m in METRICS}
    out: dict[str, dict[str, float]] = {}
    for name in ordered(rows)[1:]:
        out[name] = {}
        for key in axes:
            ori, e = metric_value(rows[BASE], key), metric_value(rows[name], key)
            value = None if ori is None or e is None else _normalised(by_key[key], ori, e)
            if value is not None:
                out[name][by_key[key].label] = value
    return out


def radar_chart(ratios: Mapping[str, Mapping[str, float]], path: str | Path) -> list[str]:
    """Fig. 4 as a PNG: a radar of `radar_ratios` over the axes every method has, and a
    bar of each method's average over them. Returns the axes drawn."""
    if not ratios:
        raise ValueError("radar_chart: no methods")
    axes = [label for label in dict.fromkeys(k for r in ratios.values() for k in r) if all(label in r for r in ratios.values())]
    if not axes:
        raise ValueError("radar_chart: the methods share no metric")
    values = {name: np.array([r[a] for a in axes]) for name, r in ratios.items()}
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    fig = plt.figure(figsize=(11, 5))
    radar = fig.add_subplot(1, 2, 1, projection="polar")
    bars = fig.add_subplot(1, 2, 2)
    for i, (name, v) in enumerate(values.items()):
        closed = np.append(angles, angles[0]), np.append(v, v[0])
        radar.plot(*closed, color=f"C{i % 10}", label=name)
        radar.fill(*closed, color=f"C{i % 10}", alpha=0.1)
    every = np.concatenate(list(values.values()))
    radar.set_ylim(min(0.0, every.min()), max(1.0, every.max()))  # a method worse than base dips below 0
    radar.set_xticks(angles, axes, fontsize=8)
    radar.legend(loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=8)  # beside the radar, clear of its labels
    averages = [float(v.mean()) for v in values.values()]
    bars.bar(list(values), averages, color=[f"C{i % 10}" for i in range(len(values))])
    bars.set_ylabel("average of the radar metrics (higher is better)")
    plt.setp(bars.get_xticklabels(), rotation=30, ha="right")
    for x, v in enumerate(averages):
        bars.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return axes


def method_grid(images: Mapping[str, torch.Tensor], scale: int = 4) -> Image.Image:
    """One row per method (N x 3 x H x W in [0, 1], same seeds), labelled with its name,
    base first."""
    names = ordered(images)
    return image_grid([images[n] for n in names], names, scale=scale)
