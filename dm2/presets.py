"""Presets are overlays: a YAML file holding only the params that differ from params.yaml's
(the world's) defaults, applied in place with `python -m dm2.presets PRESET`. Comments
and the order of params.yaml are kept; the sections that make the shipped world (`world`,
`world_check`, `train_*`) can never be named by a preset, so applying one never retrains
the world. The result is checked like any params.yaml before it is written."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from dm2.core.config import ParamsError, load_params, parse_section
from dm2.params import SECTIONS, check_params

# What the shipped world is made and measured with: a preset leaves them alone.
WORLD_SECTIONS = ("world", "world_check", "train_vae", "train_unet", "train_clip", "train_judge")


def _apply(target: Any, overlay: dict, where: str) -> None:
    for key, value in overlay.items():
        name = f"{where}.{key}" if where else key
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _apply(target[key], value, name)
        else:
            target[key] = value


def apply_preset(params_text: str, overlay: dict, preset_name: str = "preset") -> str:
    """params.yaml's text with `overlay` applied (mappings merged key by key, any other value
    replaced whole), comments kept. Refuses an overlay that names a world section."""
    if not isinstance(overlay, dict):
        raise ParamsError(f"{preset_name}: expected a mapping of params sections")
    touched = [k for k in overlay if k in WORLD_SECTIONS or k.startswith("train_")]
    if touched:
        raise ParamsError(f"{preset_name}: {touched[0]}: a preset may not change the shipped world's sections {list(WORLD_SECTIONS)}")
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # keep long lines as they are
    data = rt.load(params_text)
    _apply(data, overlay, "")
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2):
        raise SystemExit("usage: python -m dm2.presets PRESET.yaml [PARAMS.yaml]")
    preset, params_path = Path(argv[0]), Path(argv[1] if len(argv) > 1 else "params.yaml")
    try:
        overlay = load_params(preset)
        text = apply_preset(params_path.read_text(), overlay, str(preset))
        merged = yaml.safe_load(text)
        for name, cls in SECTIONS.items():  # keys and types: refused before anything is written
            parse_section(cls, merged[name], name)
    except ParamsError as e:
        raise SystemExit(str(e) if str(e).startswith(str(preset)) else f"{preset}: {e}") from None
    params_path.write_text(text)
    print(f"{params_path}: {preset} applied ({', '.join(overlay)}); `dvc status` shows the stages it changes")
    try:  # files the preset's models and concept need, which the user brings (docs/real-models.md)
        check_params(merged, params_path.parent)
    except ParamsError as e:
        print(f"still to provide before `dvc repro`: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
