"""Stage train_judge: train the world's judge (shape, colour and texture classifier) on
rendered images and hard renders (`dm2.training.world_models.train_world_judge`) and save it."""

from __future__ import annotations

from dm2.core.config import load_params, parse_section
from dm2.core.io import write_json
from dm2.core.paths import TRAIN_JUDGE_METRICS, WORLD_JUDGE_FILE
from dm2.judges.world import save_world_judge
from dm2.training.world_models import train_world_judge
from dm2.world.params import JudgeTrainParams, WorldParams


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    p = parse_section(JudgeTrainParams, params["train_judge"], "train_judge")
    judge, metrics = train_world_judge(world, p)
    save_world_judge(judge, WORLD_JUDGE_FILE)
    write_json(metrics, TRAIN_JUDGE_METRICS)
    print(metrics)


if __name__ == "__main__":
    main()
