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


def test_async_save_commits_on_wait_and_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    saver = sc.AsyncSaver(tmp_path, is_main=True)
    saver.save(_state(1.0), 1, {"config": {}})
    assert sc.latest_sharded(tmp_path) is None  # written in the background, not yet committed
    first = saver.wait()
    assert sc.latest_sharded(tmp_path) == first and sc.sharded_step(first) == 1

    real_async_save = sc.dcp.async_save

    def dies_while_writing(state, checkpoint_id, **kwargs):
        from concurrent.futures import Future

        real_async_save(state, checkpoint_id=checkpoint_id, **kwargs).result()  # shards on disk
        failed = Future()
        failed.set_exception(OSError("the disk went away"))  # ... but the write never completed
        return failed

    monkeypatch.setattr(sc.dcp, "async_save", dies_while_writing)
    saver.save(_state(2.0), 2, {"config": {}})
    with pytest.raises(OSError, match="the disk went away"):
        saver.wait()
    monkeypatch.setattr(sc.dcp, "async_save", real_async_save)
    assert sc.latest_sharded(tmp_path) == first
    assert torch.equal(sc.load_sharded(first, _state(0.0))["meta"]["w"], torch.full((4, 3), 1.0))

    state = _state(3.0)
    saver.save(state, 3, {"config": {}})
    state["meta"]["w"].fill_(9.0)  # training goes on: the save holds its own copy
    latest = saver.wait()
    assert sc.latest_sharded(tmp_path) == latest and not first.exists()
    assert torch.equal(sc.load_sharded(latest, _state(0.0))["meta"]["w"], torch.full((4, 3), 3.0))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == [latest.name]
