"""The development tools' own logic (tools/), on tiny inputs."""

import importlib.util
from pathlib import Path

import torch
from PIL import Image

from dm2.io import load_tensors

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ChannelJudge:
    """Calls an image `circle` when the mean of one colour channel is above 0.5."""

    classes = {"shape": ("circle", "square")}

    def __init__(self, channel: int) -> None:
        self.channel = channel

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        p = (images[:, self.channel].mean(dim=(1, 2)) > 0.5).float() * 0.8 + 0.1
        return {"shape": torch.stack([p, 1 - p], dim=1)}


def test_keep_images_groups_attack_images_by_the_two_judges(tmp_path):
    tradeoff = _tool("dm2_tradeoff")
    # red and green on: both judges; red only: the first; green only: the second; black: neither.
    colours = [(1, 1, 0), (1, 1, 0), (1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 0, 0)]
    images = torch.stack([torch.tensor(c, dtype=torch.float32)[:, None, None].expand(3, 8, 8) for c in colours])
    counts = tradeoff.keep_images(images, {"red": ChannelJudge(0), "green": ChannelJudge(1)}, "circle", tmp_path)
    assert counts == {"both": 2, "red only": 1, "green only": 3, "neither": 1}
    kept = load_tensors(tmp_path / "images.safetensors")
    assert torch.equal(kept["images"], images)
    assert kept["is_concept_red"].tolist() == [True, True, True, False, False, False, False]
    # One row per group, each as wide as the largest group (3 images of 8 px, scale 4).
    grid = Image.open(tmp_path / "agreement.png")
    assert grid.height == 4 * (4 * 8) + 3 * 4
