"""Erasure methods behind one interface, so evaluation and attacks treat them alike.

Every method writes a folder `artifacts/methods/{name}/` holding `method.json` (what it
is, and the sha256 of its weights, so stages that depend on that one file rerun whenever
the weights change) and, for the weight-editing methods, a diffusers LoRA
(`pytorch_lora_weights.safetensors`). SLD edits no weights: its folder says which concept
to steer away from and how, and `apply_method` returns the sampling-time guide.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionPipeline

from dm2.core.config import parse_section, require
from dm2.core.io import read_json, write_json
from dm2.core.paths import METHODS_DIR
from dm2.erasure.lora import LORA_FILE, load_lora_into
from dm2.erasure.params import LABELS, SLDParams, check_method
from dm2.erasure.sld import safety_guidance
from dm2.models.diffusion import Guide

INFO_FILE = "method.json"


def method_dir(name: str) -> Path:
    check_method(name)
    return METHODS_DIR / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_method_info(out_dir: Path, name: str, **extra: Any) -> None:
    """`method.json` for a finished method folder; call after its weights are written."""
    info: dict[str, Any] = {"method": name, "label": LABELS[name], **extra}
    lora = out_dir / LORA_FILE
    if lora.is_file():
        info["lora_sha256"] = _sha256(lora)
    write_json(info, out_dir / INFO_FILE)


def write_sld_info(out_dir: Path, concept: str, p: SLDParams) -> None:
    write_method_info(out_dir, "sld", safety_concept=concept, sld=asdict(p))


def apply_method(pipe: StableDiffusionPipeline, out_dir: Path) -> Guide | None:
    """Turn `pipe` into the erased model of the method folder `out_dir`: its LoRA is
    loaded into the UNet; SLD instead returns the guide to sample with (else None)."""
    info_path = Path(out_dir) / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: not an erasure method's folder; run its stage first")
    info = read_json(info_path)
    check_method(info.get("method", ""), str(info_path))
    if "lora_sha256" in info:
        lora = Path(out_dir) / LORA_FILE
        require(lora.is_file() and _sha256(lora) == info["lora_sha256"], str(lora), "missing or not the file method.json describes")
        load_lora_into(pipe, out_dir)
    if info["method"] == "sld":
        return safety_guidance(pipe, info["safety_concept"], parse_section(SLDParams, info["sld"], f"{info_path}: sld"))
    return None


def method_label(out_dir: Path) -> str:
    return read_json(Path(out_dir) / INFO_FILE)["label"]
