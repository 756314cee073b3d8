"""Safetensors and JSON I/O. Weights are never pickled; writes are atomic so an
interrupted stage never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dm2.core import precision
from dm2.core.config import InputError


def _readable(path: str) -> None:
    """Give `path` the mode a plain `open` would: mkstemp and safetensors' writer make 0600
    files, and outputs should read like any other."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _readable(tmp)
    return fd, tmp


def _sort_metadata(path: str) -> None:
    """Rewrite the file's header with its metadata keys sorted. safetensors writes them in
    hash-map order, which changes from process to process, so equal contents would not
    give equal bytes (nor equal DVC hashes)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        if metadata and len(metadata) > 1:
            _sort_metadata(tmp)
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unreadable(path: Path, error: Exception) -> InputError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return InputError(f"{path}: not a readable safetensors file ({reason}); restore it or rerun the stage that writes it")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def write_json(data: Any, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); restore it or rerun the stage that writes it") from None


def fingerprint(*sections: Any, data: torch.Tensor | None = None) -> str:
    """Identifies the settings (params dataclasses or plain values) and input tensor an
    output was made from, so a stage reuses a saved result only when they match."""
    described = [asdict(s) if is_dataclass(s) else s for s in sections]
    if precision.current() != "fp32":  # results made under autocast differ from float32 ones
        described.append({"precision": precision.current()})
    h = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    if data is not None:
        h.update(data.float().numpy().tobytes())
    return h.hexdigest()[:16]
