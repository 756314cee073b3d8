"""The SD-v1.4-shaped test bed (dm2/models/testbed.py): its configs are SD v1.4's, and, opt-in
(`pytest -m sd`, about 15 minutes and 3 GB of disk on 2 cores), the whole pipeline runs on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dm2.models.testbed import sd14_components

ROOT = Path(__file__).resolve().parents[1]


def millions(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)


def test_testbed_modules_have_sd14_shapes():
    """Parameter counts and the widths that fix them, built on the meta device (no memory)."""
    with torch.device("meta"):
        parts = sd14_components()
    unet, text, vae = parts["unet"], parts["text_encoder"], parts["vae"]
    assert (millions(unet), millions(text), millions(vae)) == (859.5, 123.1, 83.7)
    assert unet.config.block_out_channels == (320, 640, 1280, 1280) and unet.config.sample_size == 64
    attn2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn2.to_k.in_features == 768 and attn2.heads == 8 and attn2.to_q.out_features == 320
    assert sum(1 for name, _ in unet.named_modules() if name.endswith("attn2")) == 16  # cross-attention layers
    assert text.config.max_position_embeddings == 77 and text.config.hidden_size == 768
    assert text.config.num_hidden_layers == 12 and text.config.num_attention_heads == 12 and text.config.vocab_size == 49408
    assert vae.config.latent_channels == 4 and vae.config.block_out_channels == (128, 256, 512, 512)
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    with torch.device("meta"):
        small = sd14_components(latent_size=32)["unet"]
    assert small.config.sample_size == 32 and millions(small) == 859.5  # a CPU-sized sample, the same weights


@pytest.mark.sd
def test_whole_pipeline_runs_on_the_sd_shaped_testbed(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sd_pipeline import STAGES, prepare, run_pipeline

    work = tmp_path / "work"
    prepare(tmp_path / "testbed", work, latent_size=16)
    runs = run_pipeline(work)
    failed = [(r.stage, r.tail) for r in runs if r.returncode]
    assert not failed, failed
    assert len(runs) == len(STAGES)
    for output in ("metrics/eval.json", "metrics/attacks.json", "metrics/compare/uce.json", "reports/table.md", "artifacts/methods/dm2/pytorch_lora_weights.safetensors"):
        assert (work / output).is_file(), output
