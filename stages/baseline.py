"""Stage baseline: one of the methods DM2 is compared with, trained from the concept's
name only (as they are in the paper), into `artifacts/methods/{method}/`.

    python -m stages baseline esd_x     # esd_x | esd_u | uce | learnable_prompts | sld

- ESD-x / ESD-u (Gandikota et al. 2023): LoRA on the cross-attention / the other layers,
  pulled to the original model's negatively guided prediction for the concept's name;
- learnable prompts (Bui et al. 2024): ESD-style removal with a learnable prompt in
  cross-attention that absorbs the concept during training and is dropped after;
- UCE (Gandikota et al. 2024): closed-form edit of the cross-attention keys and values;
- SLD (Schramowski et al. 2023): no training; sampling-time guidance away from the concept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from diffusers import StableDiffusionPipeline

from dm2.core.config import load_params, parse_section, require
from dm2.core.devices import resolve_device
from dm2.core.io import write_json
from dm2.core.params import ConceptParams, ModelsParams
from dm2.erasure.esd import esd
from dm2.erasure.learnable_prompts import learnable_prompts
from dm2.erasure.lora import save_lora
from dm2.erasure.methods import method_dir, write_method_info, write_sld_info
from dm2.erasure.params import METHODS, BaselinesParams
from dm2.erasure.uce import uce
from dm2.models.diffusion import load_pipeline

BASELINES = tuple(m for m in METHODS if m != "dm2")


def train_baseline(pipe: StableDiffusionPipeline, method: str, concept: str, p: BaselinesParams, out_dir: Path) -> dict:
    """Train `method` to erase the prompt `concept` and write its folder; returns its log."""
    require(method in BASELINES, "method", f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    start = time.time()
    if method == "sld":
        write_sld_info(out_dir, concept, p.sld)
        return {"seconds": 0.0}
    if method in ("esd_x", "esd_u"):
        log = esd(pipe, concept, replace(p.esd, variant=method[-1]))
    elif method == "uce":
        log = uce(pipe, concept, p.uce)
    else:
        log = learnable_prompts(pipe, concept, p.learnable_prompts)
    save_lora(pipe.unet, out_dir)
    write_method_info(out_dir, method, concept=concept)
    log = {"seconds": round(time.time() - start, 1), **log}
    write_json(log, out_dir / "log.json")
    return log


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m stages baseline METHOD  (one of {', '.join(BASELINES)})")
    method = sys.argv[1]
    require(method in BASELINES, "method", f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    params = load_params()
    models = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept")
    p = parse_section(BaselinesParams, params.get("baselines"), "baselines")
    pipe = load_pipeline(models.diffusion, resolve_device(params.get("device", "auto")))
    log = train_baseline(pipe, method, concept.name, p, method_dir(method))
    print(f"baseline {method}: {log['seconds']}s -> {method_dir(method)}")


if __name__ == "__main__":
    main()
