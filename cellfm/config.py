"""Typed configuration: YAML recipes mapped onto dataclasses, unknown keys rejected.

Recipes ship in `cellfm.configs` (the top-level `configs/` folder) and are found by name
(`cpu_tiny`, `train/vits14`) or by path. Overrides use dotted `key=value` strings parsed as YAML
(`model.size=base`, `optim.lr=1e-3`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the schema; the message names the dotted key."""


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown or mistyped keys raise naming the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {names}"
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check and convert one YAML value to the annotated type; errors name the dotted key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for alt in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, alt, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(" or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"config key {where!r} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {where!r} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {where!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {where!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {where!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where!r}")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def list_configs() -> list[str]:
    """Names of the recipes shipped in the package (`default`, `train/vits14`, ...)."""
    root = resources.files("cellfm.configs")
    names = []
    for entry in _walk(root):
        rel = entry[0]
        if rel.endswith(".yaml"):
            names.append(rel[: -len(".yaml")])
    return sorted(names)


def _walk(node, prefix: str = ""):
    for child in node.iterdir():
        if child.is_dir() and not child.name.startswith("__"):
            yield from _walk(child, f"{prefix}{child.name}/")
        elif child.is_file():
            yield (f"{prefix}{child.name}", child)


def read_yaml_config(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe by path (`my.yaml`) or by shipped name (`cpu_tiny`, `train/vits14`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        name = str(name_or_path).removesuffix(".yaml")
        entry = resources.files("cellfm.configs").joinpath(*f"{name}.yaml".split("/"))
        if not entry.is_file():
            raise FileNotFoundError(
                f"config {name_or_path!r} is neither a YAML file nor a shipped recipe; "
                f"shipped: {', '.join(list_configs())}"
            )
        text = entry.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path}: top level must be a mapping")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_override_value(raw)
    return data


# Numbers as people write them; YAML 1.1 reads `5e-4`, `1e5` and `1.e3` as strings.
_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override_value(raw: str) -> Any:
    """An override value parsed as YAML, except that anything spelt like a number is a number."""
    text = raw.strip()
    if _NUMBER.fullmatch(text):
        number = float(text.replace("_", ""))
        plain_int = re.fullmatch(r"[-+]?\d[\d_]*", text)
        return int(text.replace("_", "")) if plain_int else number
    return yaml.safe_load(raw)
