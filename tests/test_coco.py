"""COCO preservation for real models: captions / images pairing, the FID Inception network
read from safetensors, and clear errors for paths that do not exist."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import pytorch_fid.inception as fid_inception
import torch
import torchvision
from PIL import Image

from dm2.core.config import ParamsError, parse_section
from dm2.core.io import save_tensors
from dm2.measure.coco import coco_pairs, fid_network, inception_features, load_images
from dm2.measure.params import CocoParams


def fake_coco(tmp_path, n_images=3):
    images = tmp_path / "val2017"
    images.mkdir()
    entries, annotations = [], []
    for i in range(n_images):
        name = f"{i:012d}.jpg"
        Image.new("RGB", (40 + 8 * i, 30), (40 * i, 100, 200)).save(images / name)
        entries.append({"id": 10 + i, "file_name": name})
        # two captions per image, the lower annotation id first
        annotations += [{"id": 100 + 2 * i + 1, "image_id": 10 + i, "caption": f"second {i}"},
                        {"id": 100 + 2 * i, "image_id": 10 + i, "caption": f" first {i} "}]  # fmt: skip
    captions = tmp_path / "captions_val2017.json"
    captions.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return captions, images


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """Safetensors weights with the FID network's layout (random values, as no real ones are here)."""
    built = {}
    grab = lambda net, state, *a, **k: built.setdefault("net", net)  # noqa: E731
    with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: {}), mock.patch.object(
        torchvision.models.inception.Inception3, "load_state_dict", grab
    ):
        fid_inception.InceptionV3([3])
    path = tmp_path_factory.mktemp("inception") / "pt_inception.safetensors"
    save_tensors(built["net"].state_dict(), path)
    return path


def test_pairs_take_each_images_first_caption(tmp_path, random_inception):
    captions, images = fake_coco(tmp_path)
    p = CocoParams(str(captions), str(images), str(random_inception), n=2)
    texts, files = coco_pairs(p)
    assert texts == ["first 0", "first 1"]
    assert [f.name for f in files] == ["000000000000.jpg", "000000000001.jpg"]
    with pytest.raises(ParamsError, match="evaluate.coco.n: 5 asked, the captions file has 3"):
        coco_pairs(CocoParams(str(captions), str(images), str(random_inception), n=5))


def test_missing_paths_are_named(tmp_path, random_inception):
    captions, images = fake_coco(tmp_path)
    good = {"captions": str(captions), "images": str(images), "inception": str(random_inception)}
    for key in good:
        with pytest.raises(ParamsError, match=f"evaluate.coco.{key}: .*(does not exist|is not a folder)"):
            parse_section(CocoParams, {**good, key: str(tmp_path / "nowhere")}, "evaluate.coco")
    (images / "000000000001.jpg").unlink()
    with pytest.raises(ParamsError, match="evaluate.coco.images: 1 of the images are missing"):
        coco_pairs(parse_section(CocoParams, {**good, "n": 3}, "evaluate.coco"))


def test_fid_features_from_safetensors(tmp_path, random_inception):
    captions, images = fake_coco(tmp_path)
    _, files = coco_pairs(CocoParams(str(captions), str(images), str(random_inception), n=3))
    x = load_images(files)
    assert x.shape == (3, 3, 299, 299) and 0 <= x.min() and x.max() <= 1
    features = inception_features(fid_network(random_inception), batch_size=2)
    images = torch.rand(5, 3, 32, 32)
    f = features(images)
    assert f.shape == (5, 2048) and torch.equal(f, features(images))  # batched in 2 + 2 + 1, deterministic
    assert (f[0] - f[1]).abs().max() > 1e-3 * f.abs().max() > 0  # images differ, features differ
    assert features(x).shape == (3, 2048)  # real images, any size in [0, 1]
