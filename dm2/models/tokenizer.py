"""A Stable Diffusion compatible CLIP tokenizer built offline from the BPE vocabulary
that open_clip_torch ships, so no hub download is needed."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

# CLIP's vocabulary: 256 byte symbols, their end-of-word forms, the first
# 49152 - 256 - 2 merges, and two special tokens: 49408 ids in all.
N_MERGES = 49152 - 256 - 2
MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """GPT-2 style reversible byte -> printable unicode map, in CLIP's vocabulary order:
    printable bytes first (as themselves), then the rest mapped to chr(256 + i)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def build_clip_tokenizer() -> CLIPTokenizer:
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
