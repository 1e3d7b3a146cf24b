"""Checks on weight files before anything is built from them: bounded work on hostile input.

`read_safetensors_header` reads only the (size-checked) JSON header; `check_header` checks every
tensor entry against the file; `check_arch` checks the cellfm architecture metadata (types, ranges)
and its consistency with the tensor shapes in the header, so a model is only built when its
parameters are the ones in the file. `check_finite_weights` refuses NaN/Inf tensors.
Every failure is a `CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}  # fmt: skip
# field -> (type, low, high); ints and floats inclusive
ARCH_RANGES: dict[str, tuple[type, float, float]] = {
    "embed_dim": (int, 1, 65536),
    "depth": (int, 1, 1024),
    "num_heads": (int, 1, 4096),
    "patch_size": (int, 1, 1024),
    "img_size": (int, 1, 1 << 20),
    "in_chans": (int, 1, 1 << 16),
    "mlp_ratio": (float, 1e-3, 256),
    "num_register_tokens": (int, 0, 1 << 16),
    "interpolate_offset": (float, -10, 10),
}
CHOICES = {"ffn": ("mlp", "swiglu"), "channel_strategy": ("fixed", "bag_of_channels", "channel_tokens")}
BOOLS = ("qkv_bias", "proj_bias", "ffn_bias", "interpolate_antialias")


def _error(path: Path, field: str, problem: str) -> Exception:
    from .checkpoints import CheckpointError

    return CheckpointError(f"{path}: {field}: {problem}")


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file, its length bounded by the file size and 100 MiB."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _error(path, "header length", f"file of {size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise _error(path, "header length", f"claims {n} bytes in a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _error(path, "header", f"not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise _error(path, "header", f"expected a JSON object, found {type(header).__name__}")
    check_header(path, header, size - 8 - n)
    return header


def check_header(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Every tensor entry: known dtype, non-negative integer shape, offsets inside the data section."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _error(path, "__metadata__", "expected an object of strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise _error(path, where, "entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise _error(path, f"{where} dtype", f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise _error(path, f"{where} shape", f"expected a list of non-negative integers, got {shape!r}")
        ok = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1] <= data_bytes:
            raise _error(
                path, f"{where} data_offsets", f"{offsets!r} outside the {data_bytes}-byte data section"
            )
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _error(
                path, f"{where} data_offsets", f"{offsets[1] - offsets[0]} bytes for shape {shape} {dtype}"
            )


def safetensors_metadata(path: Path, header: dict[str, Any], key: str) -> dict[str, Any]:
    """The cellfm metadata object of a header ({} when absent)."""
    raw = header.get("__metadata__", {}).get(key)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise _error(path, f"__metadata__.{key}", f"not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _error(path, f"__metadata__.{key}", f"expected a JSON object, found {type(meta).__name__}")
    names = meta.get("channel_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _error(path, f"__metadata__.{key}.channel_names", f"expected a list of strings, got {names!r}")
    for section in ("normalization", "arch"):
        if meta.get(section) is not None and not isinstance(meta[section], dict):
            raise _error(path, f"__metadata__.{key}.{section}", f"expected an object, got {meta[section]!r}")
    return meta


def check_arch(path: Path, arch: dict[str, Any], shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Types and ranges of the architecture metadata, then its agreement with the tensors' shapes."""
    from .models.vision_transformer import ViTArch

    known = {f.name for f in fields(ViTArch)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise _error(path, "metadata arch", f"unknown architecture keys {unknown}")
    f = lambda k: f"metadata arch.{k}"  # noqa: E731
    for key, (tp, lo, hi) in ARCH_RANGES.items():
        if key not in arch:
            continue
        v = arch[key]
        ok = type(v) is int if tp is int else (type(v) in (int, float) and math.isfinite(v))
        if not ok:
            raise _error(path, f(key), f"expected {tp.__name__}, got {v!r}")
        if not lo <= v <= hi:
            raise _error(path, f(key), f"{v} outside [{lo}, {hi}]")
    for key, options in CHOICES.items():
        if key in arch and arch[key] not in options:
            raise _error(path, f(key), f"{arch[key]!r} is not one of {options}")
    for key in BOOLS:
        if key in arch and type(arch[key]) is not bool:
            raise _error(path, f(key), f"expected true/false, got {arch[key]!r}")
    iv = arch.get("init_values")
    if iv is not None and not (type(iv) in (int, float) and math.isfinite(iv)):
        raise _error(path, f("init_values"), f"expected a number or null, got {iv!r}")
    a = {**{fl.name: fl.default for fl in fields(ViTArch)}, **arch}
    if a["embed_dim"] % a["num_heads"]:
        raise _error(path, f("num_heads"), f"{a['num_heads']} does not divide embed_dim {a['embed_dim']}")
    _check_shapes(path, a, shapes)
    return arch


def _check_shapes(path: Path, a: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """The tensors the architecture implies exist with those shapes (bounds the model by the file)."""
    d, p = a["embed_dim"], a["patch_size"]

    def expect(key: str, shape: list[int], what: str) -> None:
        if key not in shapes:
            raise _error(path, f"tensor {key!r}", f"missing (metadata arch implies {what})")
        if shapes[key] != shape:
            raise _error(
                path, f"metadata arch ({what})", f"implies {key} of shape {shape}, the file has {shapes[key]}"
            )

    expect("cls_token", [1, 1, d], f"embed_dim={d}")
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if len(blocks) != a["depth"]:
        raise _error(path, "metadata arch.depth", f"{a['depth']} blocks, the file has {len(blocks)}")
    chans = 1 if a["channel_strategy"] != "fixed" else a["in_chans"]
    expect("patch_embed.proj.weight", [d, chans, p, p], f"embed_dim={d}, in_chans={chans}, patch_size={p}")
    side = a["img_size"] // p
    expect("pos_embed", [1, side * side + 1, d], f"img_size={a['img_size']}, patch_size={p}")
    if a["num_register_tokens"]:
        expect(
            "register_tokens",
            [1, a["num_register_tokens"], d],
            f"num_register_tokens={a['num_register_tokens']}",
        )
    if a["ffn"] == "mlp":
        hidden = int(d * a["mlp_ratio"])
        expect("blocks.0.mlp.fc1.weight", [hidden, d], f"mlp_ratio={a['mlp_ratio']}")


def check_finite_weights(path: Path | str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights with NaN/Inf values, naming the first such tensor."""
    for key, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise _error(
                Path(path), f"tensor {key!r}", f"{n} NaN/Inf values of {t.numel()}; the weights are damaged"
            )
