"""Every file and folder the stages read and write, once. dvc.yaml declares the same paths
as the stages' deps and outs; tests/test_dvc_deps.py checks that each path it declares
is one of these and each of these is declared, so the two cannot drift apart. Inside an
output folder, the stage that writes it names its files."""

from __future__ import annotations

from pathlib import Path

# Data the pipeline makes.
PROMPTS_DIR = Path("data/prompts")  # {concept}.csv, others_{concept}.csv
POOL_DIR = Path("data/pool")
POOL_FILE = POOL_DIR / "latents.safetensors"  # written by stage pool, read by erase

# The shipped world (also the default `models` params).
WORLD_DIR = Path("artifacts/world")
WORLD_SD = WORLD_DIR / "sd"
WORLD_CLIP_FILE = WORLD_DIR / "clip.safetensors"
WORLD_JUDGE_FILE = WORLD_DIR / "judge.safetensors"
TRAIN_DIFFUSION_METRICS = Path("metrics/train_diffusion.json")
TRAIN_CLIP_METRICS = Path("metrics/train_clip.json")
TRAIN_JUDGE_METRICS = Path("metrics/train_judge.json")
WORLD_METRICS = Path("metrics/world.json")

# Erasure: one folder per method (`dm2.erasure.methods.method_dir`).
METHODS_DIR = Path("artifacts/methods")
ERASE_METRICS = Path("metrics/erase.json")
ERASE_PLOT = Path("plots/erase_s.json")

# Evaluation and attacks: the base model's side once, then the `method` param's model.
EVAL_BASE_DIR = Path("artifacts/eval_base")
EVAL_DIR = Path("artifacts/eval")
CONCEPT_IMAGES = "concept_images.safetensors"  # in EVAL_DIR and each COMPARE_DIR/{method}: the report's grid rows
EVAL_METRICS = Path("metrics/eval.json")
EVAL_GRIDS = Path("plots/grids")
ATTACK_BASE_DIR = Path("artifacts/attack_base")
ATTACKS_DIR = Path("artifacts/attacks")
ATTACK_METRICS = Path("metrics/attacks.json")
ATTACK_FITNESS_PLOT = Path("plots/attack_ring_a_bell.json")
ATTACK_BUDGET_PLOTS = Path("plots/attack_budget")
ATTACK_GRIDS = Path("plots/attacks")

# The other methods measured beside it, and the report over all.
COMPARE_DIR = Path("artifacts/compare")
COMPARE_METRICS_DIR = Path("metrics/compare")
REPORTS_DIR = Path("reports")

# Not a DVC output: finished image batches of a running stage (`dm2.core.sharding`), kept when
# it is killed (DVC empties a stage's outputs before it runs) and removed when it ends.
SHARDS_DIR = Path(".shards")
