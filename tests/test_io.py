"""Safetensors I/O: equal contents give equal bytes, whatever order the metadata came in."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from dm2.core.config import InputError
from dm2.core.io import load_tensors, read_json, read_metadata, save_tensors, write_json


def test_metadata_order_does_not_change_the_bytes(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3, dtype=torch.float16)}
    meta = {f"s_{i:03d}": f"{i / 7:.6f}" for i in range(12)}
    blobs = set()
    for r in range(6):  # safetensors' own key order differs between writes
        order = sorted(meta) if r % 2 else sorted(meta, reverse=True)
        save_tensors(tensors, tmp_path / f"{r}.safetensors", {k: meta[k] for k in order})
        blobs.add((tmp_path / f"{r}.safetensors").read_bytes())
    assert len(blobs) == 1
    loaded = load_tensors(tmp_path / "0.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert read_metadata(tmp_path / "0.safetensors") == meta


def test_truncated_or_garbage_files_name_themselves(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors({"a": torch.ones(64)}, path, {"k": "v"})
    path.write_bytes(path.read_bytes()[:40])  # cut inside the header
    for read in (load_tensors, read_metadata):
        with pytest.raises(InputError, match=rf"{path}: not a readable safetensors file \(.+\); restore it or rerun"):
            read(path)
    path.write_bytes(b"\xff" * 64)  # a header length of ~2^64
    with pytest.raises(InputError, match=rf"{path}: not a readable safetensors file"):
        load_tensors(path)
    bad_json = tmp_path / "m.json"
    bad_json.write_text('{"a": ')
    with pytest.raises(InputError, match=rf"{bad_json}: not valid JSON"):
        read_json(bad_json)


def test_outputs_get_the_usual_file_mode(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    save_tensors({"a": torch.ones(2)}, tmp_path / "w.safetensors", {"k": "v"})
    write_json({"a": 1}, tmp_path / "m.json")
    for name in ("w.safetensors", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
