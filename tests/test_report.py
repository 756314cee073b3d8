"""The comparison report: Table 1 cells and row order, Appendix D arithmetic, the Fig. 4
PNG, missing values, the per-method image grid."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dm2.report import MISSING, budget_markdown, method_grid, radar_chart, radar_ratios, table_markdown

ROWS = {
    "DM2": {
        "ratio": 4.5, "ratio_synonym_prompts": 5.54, "score": 0.741, "clip_score": 27.0, "fd": 25.0,
        "other_shapes_accuracy": 86.0, "asr": {"cce": 62.5, "p4d": 4.1666, "unlearndiff": 8.3333, "ring_a_bell": 4.1666},
    },
    "base": {
        "ratio": 89.2, "ratio_synonym_prompts": 87.3, "score": 0.9667, "clip_score": 30.0, "fd": 20.0,
        "other_shapes_accuracy": 89.0, "asr": {"cce": 80.0, "p4d": 100.0, "unlearndiff": 50.0, "ring_a_bell": 25.0},
    },
    "ESD-x": {"ratio": 40.0, "score": 0.5, "clip_score": 29.0, "fd": 22.0, "asr": {"cce": 90.0, "p4d": None}},
}


def cells(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()]


def test_table_cells_and_row_order():
    table = cells(table_markdown(ROWS))
    header, rule, *body = table
    assert header[:7] == ["Model", "Ratio ↓", "Ratio syn. ↓", "Score ↓", "CLIP ↑", "FD ↓", "Other acc. ↑"]
    assert header[7:] == ["ASR CCE ↓", "ASR P4D ↓", "ASR UnlearnDiff ↓", "ASR Ring-A-Bell ↓", "ASR mean ↓"]
    assert len(rule) == len(header)
    assert [row[0] for row in body] == ["base", "DM2", "ESD-x"]  # base first, then the methods as given
    col = {name: i for i, name in enumerate(header)}
    base, dm2, _ = body
    assert base[col["Ratio ↓"]] == "89.2" and base[col["Score ↓"]] == "0.967" and base[col["FD ↓"]] == "20.00"
    assert dm2[col["Ratio syn. ↓"]] == "5.5" and dm2[col["CLIP ↑"]] == "27.00" and dm2[col["ASR P4D ↓"]] == "4.2"
    assert base[col["ASR mean ↓"]] == "63.8"  # (80 + 100 + 50 + 25) / 4 = 63.75
    assert dm2[col["ASR mean ↓"]] == f"{(62.5 + 4.1666 + 8.3333 + 4.1666) / 4:.1f}"


def test_missing_values_render_as_dash():
    esd = cells(table_markdown(ROWS))[-1]
    header = cells(table_markdown(ROWS))[0]
    row = dict(zip(header, esd))
    assert row["Ratio ↓"] == "40.0" and row["ASR CCE ↓"] == "90.0"
    for missing in ("Ratio syn. ↓", "Other acc. ↑", "ASR P4D ↓", "ASR UnlearnDiff ↓", "ASR Ring-A-Bell ↓", "ASR mean ↓"):
        assert row[missing] == MISSING, missing
    assert cells(table_markdown({"base": {"ratio": float("nan")}}))[-1][1] == MISSING


def test_budget_table_rows_and_cells():
    """One row per attack and model, base first; each judge's best restart per budget and
    the primary judge's any-restart figure at the largest budget; a missing judge is a dash."""
    curve = {"budgets": [10, 20], "world": {"best": [50.0, 62.5], "any_restart": [60.0, 75.0]}, "geometric": {"best": [25.0, 37.5]}}
    sweeps = {"DM2": {"cce": curve, "p4d": {"budgets": [5], "world": {"best": [4.1666], "any_restart": [8.3333]}}},
              "base": {"cce": {**curve, "world": {"best": [100.0, 100.0], "any_restart": [100.0, 100.0]}}}}
    header, rule, *body = cells(budget_markdown(sweeps, ("world", "geometric")))
    assert header == ["Attack", "Model", "world, best restart per budget", "geometric", "world, any restart at the largest"]
    assert len(rule) == len(header)
    assert [row[:2] for row in body] == [["CCE", "base"], ["CCE", "DM2"], ["P4D", "DM2"]]
    assert body[1][2:] == ["10: 50.0, 20: 62.5", "10: 25.0, 20: 37.5", "75.0"]
    assert body[2][2:] == ["5: 4.2", MISSING, "8.3"]


def test_radar_ratios_hand_case():
    rows = {
        "base": {"ratio": 80.0, "score": 0.5, "clip_score": 30.0, "fd": 20.0, "asr": {"cce": 100.0, "p4d": 0.0}},
        "M": {"ratio": 20.0, "score": 0.6, "clip_score": 27.0, "fd": 25.0, "asr": {"cce": 40.0, "p4d": 10.0}},
    }
    r = radar_ratios(rows)
    assert list(r) == ["M"]
    assert r["M"] == pytest.approx({
        "Ratio": (80 - 20) / 80,  # relative decline
        "Score": (0.5 - 0.6) / 0.5,  # worse than base: negative
        "CLIP": 27 / 30,  # sanitised / original
        "FD": 20 / 25,  # original / sanitised
        "ASR CCE": 0.6,
    })  # P4D: base 0 has no relative decline; the other attacks are missing
    with pytest.raises(ValueError, match="base"):
        radar_ratios({"M": rows["M"]})


def test_radar_chart_writes_png(tmp_path):
    path = tmp_path / "plots" / "radar.png"
    axes = radar_chart(radar_ratios(ROWS), path)
    assert axes == ["Ratio", "Score", "CLIP", "FD", "ASR CCE"]  # only the metrics every method has
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
        assert len(set(img.convert("L").getdata())) > 10  # something was drawn
    with pytest.raises(ValueError, match="no methods"):
        radar_chart({}, tmp_path / "empty.png")


def test_method_grid_rows_base_first():
    red, blue = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    grid = method_grid({"DM2": blue, "base": red}, scale=1)
    # The labels sit left of the images: the last column shows base (red) above DM2 (blue).
    assert grid.getpixel((grid.width - 1, 0)) == (255, 0, 0)
    assert grid.getpixel((grid.width - 1, grid.height - 1)) == (0, 0, 255)
