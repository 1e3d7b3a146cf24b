"""Loading, saving and converting weights; bad files give errors that name the key or file."""

from __future__ import annotations

import pickle

import pytest
import torch

import cellfm
from cellfm.checkpoints import CheckpointError, convert_state_dict, infer_arch, read_state_dict
from cellfm.models import VisionTransformer, ViTArch

ARCH = ViTArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64, in_chans=3, init_values=1.0)


def _model(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ARCH, **kw).eval()


def _same_outputs(a, b, x):
    with torch.no_grad():
        return torch.allclose(
            a.forward_features(x)["x_norm_patchtokens"], b.forward_features(x)["x_norm_patchtokens"]
        )


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    model = _model()
    path = cellfm.save_backbone(
        model,
        tmp_path / "m.safetensors",
        channel_names=["DNA", "RNA", "ER"],
        normalization={"kind": "zscore"},
    )
    loaded = cellfm.load_backbone(path).eval()
    assert _same_outputs(model, loaded, torch.randn(1, 3, 64, 64))
    meta = loaded.cellfm_metadata
    assert meta["channel_names"] == ["DNA", "RNA", "ER"]
    assert meta["normalization"] == {"kind": "zscore"}
    assert meta["arch"]["embed_dim"] == 64 and len(meta["sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


def test_save_refuses_wrong_channel_names(tmp_path):
    with pytest.raises(ValueError, match="2 channel names given for a 3-channel model"):
        cellfm.save_backbone(_model(), tmp_path / "m.safetensors", channel_names=["a", "b"])


def test_infer_arch_from_official_layout():
    sd = _model().state_dict()
    arch = infer_arch(sd)
    assert arch == ARCH.__class__(**{**ARCH.to_dict(), "num_heads": 1})  # 64 wide -> 64-wide heads
    assert infer_arch(sd, num_heads=2) == ARCH


def test_training_export_with_prefixes_heads_and_chunks(tmp_path):
    model = _model()
    teacher = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            k = f"blocks.{int(i) // 1}.{i}.{rest}"  # chunked: blocks.<chunk>.<i>.*
        teacher[f"backbone.{k}"] = v
    teacher["dino_head.mlp.0.weight"] = torch.zeros(4, 64)
    teacher["ibot_head.last_layer.weight_g"] = torch.zeros(4, 1)
    path = tmp_path / "train.pth"
    torch.save({"teacher": teacher, "iteration": 5}, path)
    loaded = cellfm.load_backbone(path, num_heads=2).eval()
    assert _same_outputs(model, loaded, torch.randn(1, 3, 64, 64))
    flat = convert_state_dict({"teacher": teacher})
    assert "blocks.1.attn.qkv.weight" in flat and not any("head" in k for k in flat)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_model().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        cellfm.load_backbone(truncated)
    foreign = tmp_path / "notes.pth"
    foreign.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth"):
        cellfm.load_backbone(foreign)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        cellfm.load_backbone(bad_st)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        cellfm.load_backbone(tmp_path / "missing.pth")
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, resnet)
    with pytest.raises(CheckpointError, match="'cls_token' missing: not a DINOv2-style ViT"):
        cellfm.load_backbone(resnet)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"cls_token": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(path)


def test_unknown_and_mismatched_keys_are_named(tmp_path):
    sd = _model().state_dict()
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.0\.attn\.extra"):
        cellfm.load_backbone(path, num_heads=2)
    sd = _model().state_dict()
    del sd["blocks.1.norm2.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm2\.bias"):
        cellfm.load_backbone(path, num_heads=2)
    from cellfm.checkpoints import load_strict

    sd = _model().state_dict()
    sd["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(
        CheckpointError, match=r"blocks\.0\.attn\.proj\.weight: .* has \(64, 32\), model expects \(64, 64\)"
    ):
        load_strict(_model(), sd)


def test_hub_names_resolve_to_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"dinov2_vits14_reg4_pretrain\.pth"):
        cellfm.load_backbone("dinov2_vits14_reg")
    # A register checkpoint in the cache is recognised: registers, offset 0, antialias.
    arch = ViTArch(
        embed_dim=64,
        depth=1,
        num_heads=1,
        patch_size=14,
        img_size=518,
        init_values=1.0,
        num_register_tokens=4,
        interpolate_offset=0.0,
        interpolate_antialias=True,
    )
    (tmp_path / "checkpoints").mkdir()
    torch.save(
        VisionTransformer(arch).state_dict(), tmp_path / "checkpoints" / "dinov2_vits14_reg4_pretrain.pth"
    )
    model = cellfm.load_backbone("dinov2_vits14_reg")
    assert model.arch.num_register_tokens == 4 and model.arch.interpolate_antialias
    assert model.arch.interpolate_offset == 0.0 and model.arch.img_size == 518
    with pytest.raises(CheckpointError, match="unknown model name"):
        from cellfm.checkpoints import hub_checkpoint_path

        hub_checkpoint_path("dinov3_vits16")
