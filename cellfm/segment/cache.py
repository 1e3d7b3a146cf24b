"""Feature cache keyed by a signature (model hash, image data hash, tiling), in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn


def array_hash(arr: np.ndarray) -> str:
    """blake2b of an array's bytes, shape and dtype."""
    h = hashlib.blake2b(digest_size=16)
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def model_hash(model: nn.Module) -> str:
    """blake2b of a module's state dict (names, shapes, dtypes and values) and its architecture."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    arch = getattr(model, "arch", None)
    if arch is not None and hasattr(arch, "to_dict"):
        h.update(json.dumps(arch.to_dict(), sort_keys=True).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def signature(**parts) -> str:
    """A short key for any JSON-serialisable description (model hash, data hash, tiling, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class FeatureCache:
    """LRU cache of numpy arrays bounded by `max_bytes`; with `directory`, entries persist as .npy files."""

    def __init__(self, max_bytes: int = 2 << 30, directory: str | Path | None = None):
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items or (self.directory is not None and (self.directory / f"{key}.npy").exists())

    def get(self, key: str) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        if self.directory is not None:
            path = self.directory / f"{key}.npy"
            if path.exists():
                arr = np.load(path, allow_pickle=False)
                self._remember(key, arr)
                self.hits += 1
                return arr
        self.misses += 1
        return None

    def put(self, key: str, arr: np.ndarray) -> None:
        self._remember(key, arr)
        if self.directory is not None:
            tmp = self.directory / f"{key}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            tmp.replace(self.directory / f"{key}.npy")

    def clear(self) -> None:
        self._items.clear()

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        self._items[key] = arr
        self._items.move_to_end(key)
        while self.nbytes > self.max_bytes:
            self._items.popitem(last=False)
