"""Load, save and convert backbone weights.

Sources `load_backbone` accepts:
- an official DINOv2 `.pth` state dict (architecture inferred from the tensors, loaded strictly);
- a DINOv2 training export (`{"teacher": {"backbone.*": ...}}`, `student`, `model`), prefixed keys
  (`backbone.`, `teacher.`, `module.`) and chunked blocks (`blocks.<chunk>.<i>.*`), all through
  `convert_state_dict`;
- a cellfm `.safetensors` file, whose header metadata (key "cellfm") holds the architecture, patch
  size, channel names and normalisation;
- a known name (`dinov2_vits14`, `dinov2_vitb14_reg`, ...) looked up in the local torch hub cache.
Nothing is ever unpickled beyond tensors: `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .models.bag_of_channels import BagOfChannels
from .models.channel_adapt import adapt_patch_embed_weight
from .models.factory import HUB_MODELS, build_backbone
from .models.vision_transformer import ViTArch
from .weights_check import check_finite_weights

log = logging.getLogger(__name__)

METADATA_KEY = "cellfm"
FORMAT_VERSION = 1
# Width -> heads of the DINOv2 family; other widths fall back to 64-wide heads.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1536: 24}
_PREFIXES = ("module.", "backbone.", "teacher.", "student.", "model.", "encoder.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the key."""


# -- reading ----------------------------------------------------------------------------------
def hub_checkpoint_path(name: str) -> Path:
    """Where torch hub keeps an official checkpoint, e.g. dinov2_vits14_reg -> ..._reg4_pretrain.pth."""
    if name not in HUB_MODELS:
        raise CheckpointError(f"unknown model name {name!r}; known names: {', '.join(sorted(HUB_MODELS))}")
    stem = name.replace("_reg", "_reg4")
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{stem}_pretrain.pth"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and cellfm metadata ({} for foreign files) from a .pth/.pt or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from .weights_check import check_arch, read_safetensors_header, safetensors_metadata

        header = read_safetensors_header(path)  # bounded and checked before any tensor is read
        info = safetensors_metadata(path, header, METADATA_KEY)
        if info.get("arch"):
            check_arch(path, info["arch"], {k: v["shape"] for k, v in header.items() if k != "__metadata__"})
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        return tensors, info
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); truncated, foreign, or pickled objects"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj, {}


def convert_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Any known DINOv2 layout to the flat official backbone layout (`blocks.{i}.*`, no prefixes).

    Handles training exports (`teacher` / `student` / `model` sub-dicts), prefixed keys
    (`backbone.`, `teacher.backbone.`, `module.`), heads (dropped) and chunked blocks.
    """
    for key in ("teacher", "model", "state_dict", "student"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(("dino_head.", "ibot_head.", "head.")):
            continue
        match = _CHUNKED.match(name)
        if match:  # blocks.<chunk>.<global index>.* -> blocks.<global index>.*
            name = f"blocks.{match.group(2)}.{match.group(3)}"
        out[name] = value
    return out


# -- architecture inference -------------------------------------------------------------------
def infer_arch(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> ViTArch:
    """The ViT architecture a flat DINOv2-layout state dict was built with."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"):
        if key not in sd:
            raise CheckpointError(
                f"key {key!r} missing: not a DINOv2-style ViT backbone (found keys like "
                f"{', '.join(list(sd)[:5])})"
            )
    d = sd["cls_token"].shape[-1]
    patch_w = sd["patch_embed.proj.weight"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_pos = sd["pos_embed"].shape[1] - 1
    side = int(round(n_pos**0.5))
    if side * side != n_pos:
        raise CheckpointError(f"pos_embed has {n_pos} patch positions, not a square grid")
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    swiglu = "blocks.0.mlp.w12.weight" in sd
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0] if not swiglu else None
    channel_tokens = "patch_embed.channel_embed" in sd
    return ViTArch(
        embed_dim=d,
        depth=depth,
        num_heads=num_heads or HEADS_BY_WIDTH.get(d, max(d // 64, 1)),
        patch_size=patch_w.shape[-1],
        img_size=side * patch_w.shape[-1],
        in_chans=sd["patch_embed.channel_embed"].shape[0] if channel_tokens else patch_w.shape[1],
        mlp_ratio=4.0 if swiglu else hidden / d,
        ffn="swiglu" if swiglu else "mlp",
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=("blocks.0.mlp.w3.bias" if swiglu else "blocks.0.mlp.fc2.bias") in sd,
        init_values=1.0 if "blocks.0.ls1.gamma" in sd else None,
        num_register_tokens=regs,
        interpolate_offset=0.0 if regs else 0.1,
        interpolate_antialias=bool(regs),
        channel_strategy="channel_tokens" if channel_tokens else "fixed",
    )


# -- strict loading with useful messages -------------------------------------------------------
def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` that names every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: {source} has {tuple(sd[k].shape)}, model expects {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}"
        )
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd, strict=True)


# -- the public entry point ----------------------------------------------------------------------
def load_backbone(
    source: str | os.PathLike | None = None,
    *,
    in_chans: int | None = None,
    channel_strategy: str | None = None,
    num_heads: int | None = None,
    **runtime: Any,
) -> nn.Module:
    """A backbone with weights from `source` (path or known name); see the module docstring.

    `in_chans` adapts the patch embedding of a checkpoint with another channel count (mean filter
    scaled by C_src / C); `channel_strategy="bag_of_channels"` turns any checkpoint into a 1-channel
    model wrapped to encode each channel separately. `runtime` takes drop_path_rate,
    drop_path_uniform and pad_mode. The returned module carries `.cellfm_metadata`.
    """
    if source is None:
        from .default_model import default_model_path

        source = default_model_path()
    src = str(source)
    path = hub_checkpoint_path(src) if src in HUB_MODELS else Path(src)
    if src in HUB_MODELS and not path.is_file():
        raise FileNotFoundError(
            f"{src}: no local copy at {path}; download {path.name} from the DINOv2 release into "
            f"that folder (cellfm never downloads at run time)"
        )
    tensors, meta = read_state_dict(path)
    sd = convert_state_dict(tensors)
    check_finite_weights(path, sd)
    try:
        arch = _arch_from_meta(meta["arch"], path) if meta.get("arch") else infer_arch(sd, num_heads)
    except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError, AttributeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{path}: architecture cannot be read from the weights ({type(err).__name__}: {err})"
        ) from err
    sd, arch = _adapt_channels(sd, arch, in_chans, channel_strategy)
    model = build_backbone(arch, **runtime)
    target = model.backbone if isinstance(model, BagOfChannels) else model
    load_strict(target, sd, source=str(path))
    model.cellfm_metadata = {
        **meta,
        "arch": arch.to_dict(),
        "source": str(path),
        "sha256": file_sha256(path),
    }
    return model


def _arch_from_meta(arch: dict[str, Any], path: Path) -> ViTArch:
    known = {f.name for f in fields(ViTArch)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise CheckpointError(f"{path}: metadata names unknown architecture keys {unknown}")
    return ViTArch(**arch)


def _adapt_channels(
    sd: dict[str, torch.Tensor], arch: ViTArch, in_chans: int | None, strategy: str | None
) -> tuple[dict[str, torch.Tensor], ViTArch]:
    strategy = strategy or arch.channel_strategy
    key = "patch_embed.proj.weight"
    if strategy == "bag_of_channels":
        in_chans = 1
    if strategy == "channel_tokens" and arch.channel_strategy != "channel_tokens":
        raise CheckpointError(
            "a checkpoint without channel embeddings cannot be loaded as channel_tokens; train one "
            "(configs/train/...) or use channel_strategy='bag_of_channels' or 'fixed' with in_chans"
        )
    if in_chans is not None and in_chans != sd[key].shape[1] and strategy != "channel_tokens":
        log.info("adapting %s from %d to %d channels (mean filter rule)", key, sd[key].shape[1], in_chans)
        sd = {**sd, key: adapt_patch_embed_weight(sd[key], in_chans)}
        arch = replace(arch, in_chans=in_chans)
    return sd, replace(arch, channel_strategy=strategy)


# -- writing ----------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_backbone(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    channel_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write backbone weights as safetensors with JSON metadata, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"cellfm weights are saved as .safetensors, got {path.name}")
    target = model.backbone if isinstance(model, BagOfChannels) else model
    arch = model.arch
    if channel_names is not None and arch.channel_strategy == "fixed" and len(channel_names) != arch.in_chans:
        raise ValueError(f"{len(channel_names)} channel names given for a {arch.in_chans}-channel model")
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": asdict(arch),
        "channel_names": channel_names,
        "normalization": normalization,
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in target.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)}))
    return path
