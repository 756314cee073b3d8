"""Typed, validated access to params.yaml.

Each section is a dataclass deriving from `Section`: it checks its own values as it is
built (`__post_init__`), so any object of it, parsed from YAML or built in code, is
valid and nothing re-checks it where it is used. `parse_section` turns the YAML mapping
into it and rejects unknown keys and wrong types with a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import string
import types
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml value that a stage cannot use."""


class InputError(ValueError):
    """A file a stage reads that exists but cannot be used (truncated, garbage, wrong kind);
    the message names the file and what to do."""


# The key path of the section `parse_section` is building, for its error messages: a
# class such as `HardRanges` sits under more than one key.
_BUILDING: ContextVar[str | None] = ContextVar("params_key", default=None)


class Section:
    """Base of every params dataclass. `key` is where the section sits in params.yaml;
    `validate(key)` raises a ParamsError naming the first bad value."""

    key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate(_BUILDING.get() or self.key)

    def validate(self, key: str) -> None:
        """Checks beyond the field types; none by default."""


def require_positive(obj: object, key: str, *fields: str) -> None:
    """Each of `fields` of `obj` is > 0."""
    for name in fields:
        value = getattr(obj, name)
        require(value > 0, f"{key}.{name}", f"must be positive, got {value}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        with path.open() as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at top level")
    return data


def _number(value: Any, key: str, kind: str = "a number") -> int | float:
    """A finite number however YAML spelled it: PyYAML reads `1e-4` (no dot) as text, so
    numeric strings are taken as numbers; booleans, NaN and infinities are refused."""
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ParamsError(f"{key}: expected {kind}, got str {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{key}: expected {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return value


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:  # Optional[X]: X's own error names the culprit
            return _check_type(value, options[0], key)
        errors = []
        for option in options:
            try:
                return _check_type(value, option, key)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(f"{key}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return origin(_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(hint)
        return {k: _check_type(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    if hint is float:
        number = _number(value, key)
        return float(number)
    if hint is int:
        number = _number(value, key, "an integer")
        if isinstance(number, float):
            if not number.is_integer():
                raise ParamsError(f"{key}: expected an integer, got {value!r}")
            number = int(number)
        return number
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ParamsError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported param type {hint} for {key}")


def parse_section(cls: type[T], data: Any, name: str) -> T:
    """Build dataclass `cls` from mapping `data`; `name` is the key path used in errors."""
    if not isinstance(data, dict):
        raise ParamsError(f"{name}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for fname, f in fields.items():
        if fname in data:
            kwargs[fname] = _check_type(data[fname], hints[fname], f"{name}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{name}.{fname}: missing")
    token = _BUILDING.set(name)
    try:
        return cls(**kwargs)  # a Section validates itself here
    finally:
        _BUILDING.reset(token)


def require(cond: bool, key: str, message: str) -> None:
    """Raise a ParamsError naming `key` unless `cond` holds."""
    if not cond:
        raise ParamsError(f"{key}: {message}")


def template_fields(template: str) -> set[str]:
    """The `{field}` names a format string uses; a broken one (a lone brace) is a ParamsError."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ParamsError(f"{template!r}: {e}") from None
