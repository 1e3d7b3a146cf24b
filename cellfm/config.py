"""Typed configuration: YAML recipes mapped onto dataclasses, unknown keys rejected.

Recipes ship in `cellfm.configs` (the top-level `configs/` folder) and are found by name
(`cpu_tiny`, `train/vits14`) or by path. Overrides use dotted `key=value` strings parsed as YAML
(`model.size=base`, `optim.lr=1e-3`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the schema; the message names the dotted key."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


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
        node[parts[-1]] = yaml.safe_load(raw)
    return data
