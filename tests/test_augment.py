import torch

from dm2.world.augment import _blur, augment
from dm2.world.params import AugmentParams


def test_zero_strength_is_identity():
    images = torch.rand(4, 3, 32, 32)
    out = augment(images, AugmentParams(shift=0, blur=0, noise=0, jitter=0), torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_augment_perturbs_within_range_and_is_seeded():
    ramp = torch.linspace(0, 1, 32)
    images = (ramp[:, None] * ramp[None, :]).expand(8, 3, 32, 32)  # smooth, like renders
    a = augment(images, AugmentParams(), torch.Generator().manual_seed(1))
    b = augment(images, AugmentParams(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    assert 0.005 < (a - images).abs().mean() < 0.2


def test_blur_preserves_constant_images_and_smooths_edges():
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(_blur(flat, torch.tensor([0.5, 1.0])), flat, atol=1e-6)
    edge = torch.zeros(2, 3, 16, 16)
    edge[..., 8:] = 1.0
    blurred = _blur(edge, torch.tensor([1e-4, 1.0]))
    assert torch.allclose(blurred[0], edge[0])  # per-image sigma: the first stays sharp
    assert 0.1 < blurred[1, 0, 0, 7] < 0.5 < blurred[1, 0, 0, 8] < 0.9
