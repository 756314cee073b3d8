"""Stage prompts: the evaluation prompt sets of every world shape, as CSV files to read.

data/prompts/{shape}.csv holds the normal prompts reaching the shape (columns prompt,
uses_name); data/prompts/others_{shape}.csv the prompts of the other shapes, to measure
that erasing `shape` keeps them (columns prompt, shape)."""

from __future__ import annotations

from pathlib import Path

from dm2.core.config import load_params, parse_section
from dm2.core.paths import PROMPTS_DIR
from dm2.world.params import PromptsParams, WorldParams
from dm2.world.prompts import normal_prompts, other_prompts, uses_name, write_prompts
from dm2.world.render import WorldSpec


def write_prompt_files(spec: WorldSpec, p: PromptsParams, out_dir: Path) -> list[Path]:
    """Write both prompt files of every shape under `out_dir`; returns their paths."""
    paths = []
    for shape in spec.shapes:
        prompts = normal_prompts(spec, shape, p.n_normal, p.seed)
        path = out_dir / f"{shape}.csv"
        write_prompts(prompts, path, {"uses_name": [uses_name(q, shape) for q in prompts]})
        pairs = other_prompts(spec, shape, p.n_other, p.seed)
        others_path = out_dir / f"others_{shape}.csv"
        write_prompts([q for q, _ in pairs], others_path, {"shape": [s for _, s in pairs]})
        paths += [path, others_path]
    return paths


def main() -> None:
    params = load_params()
    world = parse_section(WorldParams, params["world"], "world")
    p = parse_section(PromptsParams, params["prompts"], "prompts")
    paths = write_prompt_files(world.spec(), p, PROMPTS_DIR)
    print(f"prompts: {len(paths)} files ({p.n_normal} normal, {p.n_other} other prompts per shape) -> {PROMPTS_DIR}")


if __name__ == "__main__":
    main()
