"""Lazy package exports (PEP 562): `from cellfm.embed import embed` still works, but importing a
light submodule (e.g. `cellfm.embed.config` while building the CLI parsers) no longer imports the
whole package and torch with it."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """`__getattr__` and `__dir__` for `package`, resolving each name from its submodule on first use."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list:
        return sorted(exports)

    return __getattr__, __dir__
