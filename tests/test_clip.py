import math

import open_clip
import pytest
import torch

from dm2.core.config import InputError
from dm2.core.io import save_tensors
from dm2.models.clip import WORLD_CLIP, ClipModel, clip_score, create_world_clip, load_clip, preprocess, save_world_clip, zero_shot
from dm2.models.tokenizer import build_clip_tokenizer
from dm2.training.world_models import contrastive_loss, train_world_clip
from dm2.world.params import ClipTrainParams, WorldParams
from dm2.world.render import BACKGROUNDS, COLOURS, TEXTURES

torch.set_num_threads(1)


def tiny_world() -> WorldParams:
    return WorldParams(
        train_images=32, heldout_images=16, colours=list(COLOURS), backgrounds=list(BACKGROUNDS), textures=list(TEXTURES)
    )


def world_clip(seed: int = 0) -> ClipModel:
    torch.manual_seed(seed)
    model = create_world_clip().half().float().eval()  # float16-exact, as shipped
    return ClipModel(model, open_clip.get_tokenizer(WORLD_CLIP), torch.device("cpu"))


def test_world_clip_is_registered_with_open_clip():
    cfg = open_clip.get_model_config(WORLD_CLIP)
    assert cfg["embed_dim"] == 64
    assert cfg["text_cfg"]["vocab_size"] == 49408 and cfg["text_cfg"]["context_length"] == 77
    assert WORLD_CLIP in open_clip.list_models()


def test_open_clip_tokenizer_matches_stable_diffusion_ids():
    captions = ["a photo of a red star", "a striped pentagram on a gray background", "cruciform"]
    oc = open_clip.get_tokenizer(WORLD_CLIP)(captions)
    sd = build_clip_tokenizer()(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    for a, b in zip(oc, sd):
        n = int((b == 49407).nonzero()[0]) + 1  # up to and including the first end token
        assert torch.equal(a[:n], b[:n])  # open_clip pads with 0, SD with 49407: unused by CLIP


def test_encodings_are_normalised_for_any_image_size():
    clip = world_clip()
    for images in (torch.rand(3, 3, 32, 32), torch.rand(2, 3, 48, 64)):
        f = clip.encode_images(images)
        assert f.shape == (len(images), 64)
        assert torch.allclose(f.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
    t = clip.encode_texts(["a star", "a blue box", "a ball"])
    assert t.shape == (3, 64)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(t[0], t[1])


def test_preprocess_centre_crops_and_normalises():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    images = torch.zeros(1, 3, 40, 80)
    images[..., 12:68] = torch.tensor(mean).view(3, 1, 1)  # beyond the centre square: cropped off
    x = preprocess(images, (20, 20), mean, std)
    assert x.shape == (1, 3, 20, 20)
    assert x.abs().max() < 1e-4


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    clip = world_clip()
    path = tmp_path / "clip.safetensors"
    save_world_clip(clip.model, path)
    loaded = load_clip(WORLD_CLIP, str(path))
    images, texts = torch.rand(4, 3, 32, 32), ["a photo of a star", "a green ball"]
    assert torch.equal(loaded.encode_images(images), clip.encode_images(images))
    # texts: equal up to float rounding (1.2e-7 measured on one 2-core CPU machine);
    # a wrong or missing weight differs by far more
    torch.testing.assert_close(loaded.encode_texts(texts), clip.encode_texts(texts), rtol=0, atol=1e-6)
    assert loaded.logit_scale == pytest.approx(clip.logit_scale)
    assert path.stat().st_size < 5e6


def test_load_clip_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere/clip.safetensors"):
        load_clip(WORLD_CLIP, str(path))


class FixedClip:
    """Hand-made features: image i is `image_features[i]`, a text maps through `texts`."""

    def __init__(self, image_features: torch.Tensor, texts: dict[str, list[float]]) -> None:
        self.image_features = torch.nn.functional.normalize(image_features, dim=-1)
        self.texts = texts

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_features[: len(images)]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.tensor([self.texts[t] for t in texts], dtype=torch.float32), dim=-1)


def test_clip_score_is_clamped_scaled_cosine():
    clip = FixedClip(torch.tensor([[1.0, 0.0]] * 4), {"same": [1, 0], "diag": [1, 1], "orth": [0, 1], "opposite": [-1, 0]})
    scores = clip_score(clip, torch.zeros(4, 3, 32, 32), ["same", "diag", "orth", "opposite"])
    assert torch.allclose(scores, torch.tensor([100.0, 100 / math.sqrt(2), 0.0, 0.0]), atol=1e-4)
    with pytest.raises(ValueError, match="4 images but 1 prompts"):
        clip_score(clip, torch.zeros(4, 3, 32, 32), ["same"])


def test_zero_shot_picks_the_most_similar_prompt():
    clip = FixedClip(torch.tensor([[1.0, 0.1], [0.2, 1.0], [-1.0, -0.9]]), {"x": [1, 0], "y": [0, 1], "z": [-1, -1]})
    assert zero_shot(clip, torch.zeros(3, 3, 32, 32), ["x", "y", "z"]).tolist() == [0, 1, 2]
    assert zero_shot(clip, torch.zeros(3, 3, 32, 32), ["z", "y", "x"]).tolist() == [2, 1, 0]


def test_training_lowers_the_contrastive_loss():
    from dm2.world.splits import world_split

    world = tiny_world()
    p = ClipTrainParams(steps=40, batch_size=32, lr=0.01)  # at 0.02 the 4 px world's loss ended above its start after 80 steps
    model, metrics = train_world_clip(world, p)
    images, samples = world_split(world, "train")
    ids = open_clip.get_tokenizer(WORLD_CLIP)([s.caption for s in samples])
    with torch.no_grad():
        before = contrastive_loss(world_clip().model, images, ids).item()
        after = contrastive_loss(model, images, ids).item()
    assert after < before - 0.5, (before, after)
    assert 0.0 <= metrics["heldout_zero_shot_shape_accuracy"] <= 1.0
    assert metrics["seconds"] > 0


def test_load_clip_refuses_pickled_and_mismatched_weights(tmp_path):
    """Local CLIP weights load from safetensors only, and weights of another model name
    give one line naming the file and the model, not a state-dict dump."""
    pickled = tmp_path / "clip.pt"
    pickled.write_bytes(b"not read")
    with pytest.raises(InputError, match=r"clip_pretrained: .*clip\.pt: weights load as safetensors only"):
        load_clip(WORLD_CLIP, str(pickled))
    other = tmp_path / "other.safetensors"
    save_tensors({"visual.proj": torch.zeros(3, 3)}, other)
    with pytest.raises(InputError, match=r"other\.safetensors does not hold open_clip 'world-clip' weights") as err:
        load_clip(WORLD_CLIP, str(other))
    assert "\n" not in str(err.value)
