"""Fault injection, hostile weight files: metadata is checked (types, ranges, agreement with the tensor
shapes in the header) before any model is built, under a memory limit; every malformed file is a
CheckpointError naming the file and the field (audit items 8, 11)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from cellfm.checkpoints import CheckpointError, load_backbone
from tests.test_embed_api import tiny_model

PY = sys.executable


def tampered(path, **arch_changes) -> str:
    """A valid tiny safetensors file whose metadata claims other architecture values."""
    net = tiny_model()
    meta = {
        "format_version": 1,
        "arch": {**net.arch.to_dict(), **arch_changes},
        "channel_names": ["DNA", "RNA"],
    }
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={"cellfm": json.dumps(meta)},
    )
    return str(path)


def test_huge_claimed_model_is_refused_before_building_under_a_memory_limit(tmp_path):
    path = tampered(tmp_path / "hostile.safetensors", embed_dim=8192, depth=64, num_heads=64)
    code = textwrap.dedent(f"""
        import resource, sys
        from cellfm.checkpoints import CheckpointError, load_backbone
        import torch
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a ~200 GB model cannot be built
        try:
            load_backbone({path!r})
        except CheckpointError as err:
            print("REFUSED", err)
            sys.exit(0)
        except BaseException as err:
            print("OTHER", type(err).__name__, str(err)[:200])
            sys.exit(3)
        print("LOADED")
        sys.exit(4)
    """)
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-1000:]
    assert "hostile.safetensors" in res.stdout and "embed_dim=8192" in res.stdout


def _raw(path, header: dict, data: bytes = b"", length: int | None = None) -> str:
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return str(path)


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("metadata_not_json", r"__metadata__.cellfm: not valid JSON"),
        ("embed_dim_string", r"metadata arch.embed_dim: expected int, got 'big'"),
        ("num_heads_zero", r"metadata arch.num_heads: 0 outside"),
        ("heads_do_not_divide", r"metadata arch.num_heads: 3 does not divide embed_dim 16"),
        ("unknown_key", r"metadata arch: unknown architecture keys \['hidden'\]"),
        ("depth_mismatch", r"metadata arch.depth: 5 blocks, the file has 1"),
        (
            "img_size_mismatch",
            r"metadata arch \(img_size=64, patch_size=8\): implies pos_embed of shape \[1, 65",
        ),
        ("header_length", r"header length: claims 1152921504606846976 bytes"),
        ("header_not_json", r"header: not valid JSON"),
        ("offsets_outside", r"tensor 'w' data_offsets: \[0, 4000\] outside the 16-byte data section"),
        ("bad_dtype", r"tensor 'w' dtype: unknown dtype 'F128'"),
        ("channel_names", r"__metadata__.cellfm.channel_names: expected a list of strings"),
    ],
)
def test_malformed_safetensors_is_a_checkpoint_error_naming_the_field(tmp_path, case, field):
    p = tmp_path / f"{case}.safetensors"
    w = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    if case == "metadata_not_json":
        net = tiny_model()
        save_file(dict(net.state_dict()), str(p), metadata={"cellfm": "{not json"})
    elif case == "embed_dim_string":
        tampered(p, embed_dim="big")
    elif case == "num_heads_zero":
        tampered(p, num_heads=0)
    elif case == "heads_do_not_divide":
        tampered(p, num_heads=3)
    elif case == "unknown_key":
        tampered(p, hidden=3)
    elif case == "depth_mismatch":
        tampered(p, depth=5)
    elif case == "img_size_mismatch":
        tampered(p, img_size=64)
    elif case == "header_length":
        _raw(p, w, bytes(16), length=2**60)
    elif case == "header_not_json":
        p.write_bytes(struct.pack("<Q", 5) + b"{nope" + bytes(16))
    elif case == "offsets_outside":
        _raw(p, {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, bytes(16))
    elif case == "bad_dtype":
        _raw(p, {"w": {"dtype": "F128", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    else:
        net = tiny_model()
        meta = {"arch": net.arch.to_dict(), "channel_names": "DNA"}
        save_file(dict(net.state_dict()), str(p), metadata={"cellfm": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=rf"{case}.safetensors: {field}"):
        load_backbone(p)


@pytest.mark.parametrize("case", ["flat_cls_token", "no_blocks"])
def test_malformed_pth_is_a_checkpoint_error(tmp_path, case):
    sd = dict(tiny_model().state_dict())
    if case == "flat_cls_token":
        sd["cls_token"] = torch.zeros(16)
        sd["pos_embed"] = torch.zeros(17)
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    path = tmp_path / f"{case}.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=rf"{case}.pth"):
        load_backbone(path)
