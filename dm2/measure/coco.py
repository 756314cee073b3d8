"""Preservation on COCO-2017 for real models (paper Section 4): val captions to generate
from, the val images as the reference set, FID in the 2048-d pool features of the
standard FID Inception network (pytorch-fid's `InceptionV3`).

pytorch-fid would download and unpickle its weights; here they are read from a
safetensors file the user converts once (docs/real-models.md, "COCO preservation"), and no file is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable
from unittest import mock

import pytorch_fid.inception as fid_inception
import torch
import torch.nn.functional as F
from PIL import Image

from dm2.core.config import ParamsError, require
from dm2.core.io import load_tensors
from dm2.measure.params import CocoParams

INCEPTION_SIZE = 299


def coco_pairs(p: CocoParams) -> tuple[list[str], list[Path]]:
    """The first caption of each of the first `p.n` images (by image id) and the image files."""
    data = json.loads(Path(p.captions).read_text())
    files = {img["id"]: Path(p.images) / img["file_name"] for img in data["images"]}
    first: dict[int, str] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann["caption"].strip())
    ids = sorted(first)[: p.n]
    require(len(ids) == p.n, "evaluate.coco.n", f"{p.n} asked, the captions file has {len(ids)} captioned images")
    missing = [files[i] for i in ids if not files[i].is_file()]
    if missing:
        raise ParamsError(f"evaluate.coco.images: {len(missing)} of the images are missing, e.g. {missing[0]}")
    return [first[i] for i in ids], [files[i] for i in ids]


def load_images(paths: list[Path], size: int = INCEPTION_SIZE) -> torch.Tensor:
    """RGB images in [0, 1], N x 3 x size x size (resized whole, as pytorch-fid's network does)."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            x = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
            x = x.reshape(im.height, im.width, 3).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(out)


def fid_network(weights: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """pytorch-fid's InceptionV3 (pool3, 2048-d) with its weights read from safetensors."""
    state = load_tensors(weights)
    # pytorch-fid builds the FID variant of the network, then fetches weights by URL: hand it ours.
    with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return net.eval().to(device)


def inception_features(net: torch.nn.Module, batch_size: int = 50) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [0, 1] (any size) -> N x 2048 pool features."""

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        device = next(net.parameters()).device
        chunks = [net(images[i : i + batch_size].to(device))[0].flatten(1).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(chunks)

    return features
