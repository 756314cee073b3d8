"""The sampler: guidance branches batched on GPUs, two calls (bit-exact world results) on CPU."""

from __future__ import annotations

import torch

from dm2.models.diffusion import encode_prompts, initial_noise, sample


def test_batched_branches_agree_with_two_calls(tiny_pipe):
    """One UNet call of 2N (the GPU default) gives the two calls' latents up to float order."""
    cond = encode_prompts(tiny_pipe, ["a red circle", "a blue square", "a star"])
    uncond = encode_prompts(tiny_pipe, [""])
    noise = initial_noise(3, tiny_pipe.unet, 0)
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    two = sample(tiny_pipe.unet, tiny_pipe.scheduler, cond, uncond, noise, 4, 5.0, batch_branches=False)
    one = sample(tiny_pipe.unet, tiny_pipe.scheduler, cond, uncond, noise, 4, 5.0, batch_branches=True)
    hook.remove()
    assert calls == [3] * 8 + [6] * 4  # 4 steps: two calls of 3, then one call of 6
    assert torch.allclose(one, two, rtol=1e-4, atol=1e-4)  # kernels for 3 and 6 rows sum in other orders (CPU-dependent)
    assert sample(tiny_pipe.unet, tiny_pipe.scheduler, cond, uncond, noise, 4, 5.0).equal(two)  # CPU default: two calls
