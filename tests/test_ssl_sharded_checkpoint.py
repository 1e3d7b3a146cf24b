"""Sharded (DCP) checkpoints: the previous good checkpoint survives a crash mid-save."""

from __future__ import annotations

import pytest
import torch

from cellfm.ssl import sharded_checkpoint as sc


def _state(value: float) -> dict:
    return {"meta": {"w": torch.full((4, 3), value)}, "rng": torch.get_rng_state()}


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    sc.save_sharded(tmp_path, _state(1.0), 1, {"config": {}}, is_main=True)
    first = sc.latest_sharded(tmp_path)
    assert first.name == "step_00000001" and sc.sharded_step(first) == 1

    real_save = sc.dcp.save

    def crash(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # shards written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(sc.dcp, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        sc.save_sharded(tmp_path, _state(2.0), 2, {"config": {}}, is_main=True)
    monkeypatch.setattr(sc.dcp, "save", real_save)
    assert sc.latest_sharded(tmp_path) == first
    loaded = sc.load_sharded(first, _state(0.0))
    assert torch.equal(loaded["meta"]["w"], torch.full((4, 3), 1.0))

    sc.save_sharded(tmp_path, _state(3.0), 3, {"config": {}}, is_main=True)  # the next save works
    latest = sc.latest_sharded(tmp_path)
    assert latest.name == "step_00000003" and not first.exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == [latest.name]


def test_module_loads_from_a_sharded_checkpoint_and_pointer_errors_name_the_file(tmp_path):
    src = torch.nn.Linear(3, 2)
    sd = {f"teacher.{k}": v for k, v in src.state_dict().items()}
    sc.save_sharded(tmp_path, {"meta": sd}, 5, {"config": {}}, is_main=True)
    dst = torch.nn.Linear(3, 2)
    sc.load_module_from_sharded(sc.latest_sharded(tmp_path), dst, "teacher.")
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009")
    with pytest.raises(RuntimeError, match="latest points at .*step_00000009"):
        sc.latest_sharded(tmp_path)
