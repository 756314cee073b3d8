"""What a result was computed from, beyond its params: the project code a stage runs and
the content of the weights it loads.

`code_files` follows imports (module level and inside functions) through `dm2` and
`stages`, so dvc.yaml's deps can be checked against it (tests/test_dvc_deps.py), and
`code_version` hashes those files so a resumable store made by other code is refused.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dm2", "stages")
# Files the code reads as part of itself (a model config), beside the .py modules.
CODE_DATA = {"dm2.models.clip": ("dm2/models/world-clip.json",)}


def _module_file(module: str, root: Path) -> Path | None:
    base = root / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """Project modules that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from dm2 import x` may name a submodule; `from dm2.a import f` names a module
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def code_files(module: str, root: Path = ROOT) -> list[str]:
    """Paths (relative to `root`, sorted) of `module` and every project module and code data
    file it reaches through imports."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        if path is None:  # a name imported from a module, not a module
            continue
        files.add(path.relative_to(root).as_posix())
        files.update(CODE_DATA.get(name, ()))
        todo.extend(_imports(path))
        todo.extend(name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1))  # parent packages run first
    return sorted(files)


def code_version(module: str, root: Path = ROOT) -> str:
    """Hash of the code `module` runs: any edit there gives a new value."""
    h = hashlib.sha256()
    for rel in code_files(module, root):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:16]


def weights_hash(*modules: torch.nn.Module) -> str:
    """Hash of the modules' parameters and buffers (names, dtypes, shapes, values), as loaded:
    the same for a hub id and a local folder holding the same weights."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
