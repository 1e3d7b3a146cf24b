"""The backbone as an embedding function: channel matching, normalisation, batched (mixed-precision) forward."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cellfm.transforms import dihedral_views

log = logging.getLogger(__name__)
_CACHE: dict[tuple[str, int], nn.Module] = {}


def load_model(model: str | os.PathLike | nn.Module | None) -> nn.Module:
    """A backbone from a path / known name (cached per process), the shipped default, or as given."""
    from cellfm.checkpoints import load_backbone

    if isinstance(model, nn.Module):
        return model
    key = (str(model), os.getpid())
    if key not in _CACHE:
        _CACHE.clear()  # one model per process at a time
        _CACHE[key] = load_backbone(model).eval()
    return _CACHE[key]


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """`cellfm_metadata` of a loaded backbone, or what can be said about a bare module."""
    meta = dict(getattr(model, "cellfm_metadata", {}) or {})
    meta.setdefault("arch", model.arch.to_dict())
    meta.setdefault("sha256", "")
    meta.setdefault("source", type(model).__name__)
    return meta


def default_normalization(meta: dict[str, Any]) -> dict[str, dict]:
    """Input (whole field) and output (per tile) normalisation: the checkpoint's, else training's defaults."""
    norm = meta.get("normalization") or {}
    if "input" in norm or "output" in norm:
        return {"input": dict(norm.get("input") or {"mode": "percentile"}),
                "output": dict(norm.get("output") or {"mode": "identity"})}  # fmt: skip
    return {"input": {"mode": "percentile"}, "output": {"mode": "zscore", "eps": 0.01}}


def resolve_channels(
    meta: dict[str, Any], store_channels: list[str], requested: list[str] | None, store: str
) -> tuple[list[str], list[int] | None]:
    """Channels to read (by name) and, for channel-token models, their ids; errors name both sides."""
    arch = meta["arch"]
    strategy, in_chans = arch.get("channel_strategy", "fixed"), arch["in_chans"]
    model_names = list(meta.get("channel_names") or [])
    if requested:
        missing = [c for c in requested if c not in store_channels]
        if missing:
            raise ValueError(
                f"{store}: has channels {store_channels}; requested {requested} (missing {missing})"
            )
        chosen = list(requested)
    elif strategy == "fixed" and model_names and all(n in store_channels for n in model_names):
        chosen = model_names  # the model's channels, in its order
    else:
        chosen = list(store_channels)
    source = meta.get("source", "model")
    if strategy == "fixed" and len(chosen) != in_chans:
        raise ValueError(
            f"model {source} expects {in_chans} channels{f' {model_names}' if model_names else ''} but "
            f"store {store} gives {len(chosen)} channels {chosen}; pass --channels with {in_chans} names"
        )
    if strategy == "fixed" and model_names and chosen != model_names:
        log.warning("model %s was trained on channels %s; embedding %s", source, model_names, chosen)
    ids = None
    if strategy == "channel_tokens":
        if model_names:
            unknown = [c for c in chosen if c not in model_names]
            if unknown:
                raise ValueError(
                    f"model {source} knows channels {model_names}; store {store} gives {unknown}"
                )
            ids = [model_names.index(c) for c in chosen]
        elif len(chosen) > in_chans:
            raise ValueError(f"model {source} knows {in_chans} channels; store {store} gives {len(chosen)}")
    return chosen, ids


@dataclass
class Encoder:
    """Runs a backbone on normalised (B, C, h, w) batches; features are channel-major for Bag-of-Channels.

    `cls_tta`: the CLS is the mean over the 8 rot90/flip symmetries of each input (exactly invariant to
    them; 8x the compute); patch maps always come from the unchanged input."""

    model: nn.Module
    channels: list[str]
    channel_ids: list[int] | None = None
    device: str = "cpu"
    amp: bool = True
    output_norm: dict = field(default_factory=lambda: {"mode": "identity"})
    int8: bool = False
    cls_tta: bool = False

    def __post_init__(self) -> None:
        from cellfm.transforms import Normalize

        self.model = self.model.to(self.device).eval()
        if self.int8:
            from cellfm.models.int8 import quantize_int8

            self.model = quantize_int8(self.model)
        self.patch_size = int(self.model.patch_size)
        self.strategy = self.model.arch.channel_strategy
        self.embed_dim = int(self.model.embed_dim)
        self._out_norm = Normalize(**self.output_norm)

    @property
    def num_features(self) -> int:
        return self.embed_dim * (len(self.channels) if self.strategy == "bag_of_channels" else 1)

    def feature_names(self) -> tuple[list[str], list[str]]:
        """var_names and the channel each feature belongs to ("all" unless Bag-of-Channels)."""
        width = len(str(self.embed_dim - 1))
        if self.strategy == "bag_of_channels":
            names = [f"{c}_f{i:0{width}d}" for c in self.channels for i in range(self.embed_dim)]
            return names, [c for c in self.channels for _ in range(self.embed_dim)]
        return [f"f{i:0{width}d}" for i in range(self.embed_dim)], ["all"] * self.embed_dim

    def _autocast(self) -> contextlib.AbstractContextManager:
        # Mixed precision only on CUDA: CPU autocast is slower than float32 on most CPUs.
        if self.amp and str(self.device).startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS (B, F) and patch maps (B, gh, gw, F), float32 on the CPU, for a normalised batch."""
        x = self._out_norm(x).to(self.device, non_blocking=True)
        with self._autocast():
            out = self._forward(x)
            cls = out["x_norm_clstoken"].float()
            if self.cls_tta:  # the identity view is the forward above; the other 7 symmetries run now
                others = [self._forward(v)["x_norm_clstoken"].float() for v in dihedral_views(x)[1:]]
                cls = torch.stack([cls, *others]).mean(0)
        p = self.patch_size
        gh, gw = -(-x.shape[-2] // p), -(-x.shape[-1] // p)
        cls = cls.cpu()
        patches = out["x_norm_patchtokens"].float().cpu().reshape(x.shape[0], gh, gw, -1)
        return cls, patches

    def _forward(self, x: torch.Tensor) -> dict:
        if self.strategy == "channel_tokens":
            return self.model.forward_features(x, channel_ids=self.channel_ids)
        return self.model.forward_features(x)
