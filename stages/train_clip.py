"""Stage train_clip: train the world's tiny CLIP contrastively on rendered image-caption
pairs; it verifies erasure (zero-shot shape) and computes CLIP scores in the world."""

from __future__ import annotations

from dm2.core.config import load_params, parse_section
from dm2.core.io import write_json
from dm2.core.paths import TRAIN_CLIP_METRICS, WORLD_CLIP_FILE
from dm2.models.clip import save_world_clip
from dm2.training.world_models import train_world_clip
from dm2.world.params import ClipTrainParams, WorldParams


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    p = parse_section(ClipTrainParams, params["train_clip"], "train_clip")
    model, metrics = train_world_clip(world, p)
    save_world_clip(model, WORLD_CLIP_FILE)
    write_json(metrics, TRAIN_CLIP_METRICS)
    print(metrics)


if __name__ == "__main__":
    main()
