"""The SSL step (forward, backward, clip, optimizer, EMA) waits on the host nowhere.

On CUDA the step runs under `torch.cuda.set_sync_debug_mode("error")`. On CPU there is no device to
wait for, so every tensor operation that would synchronise on a GPU is counted instead: reading a
value (`item`, `bool`, `float`, `tolist`, ...), data-dependent shapes (`nonzero`, boolean-mask
indexing, `masked_select`) and host-to-device tensor creation from Python lists (`torch.tensor`).
AdamW's step counters are host tensors by design (capturable=False) and are not counted.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import Trainer

from .test_ssl_train import TINY

SYNCING_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero")


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    from cellfm.data.samples import write_sample_plate

    return write_sample_plate(tmp_path_factory.mktemp("plate") / "samples.ome.zarr")


@contextlib.contextmanager
def count_host_syncs(monkeypatch):
    """Yields a list that receives (operation, tensor) for each would-be synchronising call."""
    calls: list[tuple[str, torch.Tensor]] = []
    with monkeypatch.context() as m:
        for name in SYNCING_METHODS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):
                calls.append((_name, self))
                return _original(self, *args, **kwargs)

            m.setattr(torch.Tensor, name, counted)
        getitem = torch.Tensor.__getitem__

        def getitem_counted(self, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):
                calls.append(("boolean-mask indexing", self))
            return getitem(self, index)

        m.setattr(torch.Tensor, "__getitem__", getitem_counted)
        for name in ("nonzero", "masked_select", "tensor"):
            fn = getattr(torch, name)

            def counted_fn(*args, _name=name, _fn=fn, **kwargs):
                calls.append((f"torch.{_name}", args[0] if args and torch.is_tensor(args[0]) else None))
                return _fn(*args, **kwargs)

            m.setattr(torch, name, counted_fn)
        yield calls


def _prepared_batch(trainer: Trainer) -> dict:
    batch = trainer.data.prepare(next(trainer.data.from_step(0)))
    return {k: v.to(trainer.info.device) if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize(("centering", "fused"), [("centering", True), ("sinkhorn_knopp", False)])
def test_the_training_step_does_no_host_sync(plate, tmp_path, monkeypatch, centering, fused):
    cfg = load_ssl_config(
        "cpu_tiny",
        TINY + [f"teacher.centering={centering}", f"train.fused_head_loss={str(fused).lower()}"],
    )
    trainer = Trainer(cfg, [plate], tmp_path / "run")
    trainer.meta.train()
    trainer.meta.teacher.eval()
    batch = _prepared_batch(trainer)
    values = trainer.schedules.at(3)  # lr > 0: the optimizer really steps
    trainer.device_step(batch, values)  # first step: optimizer state created
    if trainer.info.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            logs = trainer.device_step(batch, values)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    else:
        with count_host_syncs(monkeypatch) as calls:
            logs = trainer.device_step(batch, values)
        host_steps = {id(s["step"]) for s in trainer.optimizer.state.values() if "step" in s}
        syncs = [name for name, t in calls if t is None or id(t) not in host_steps]
        assert syncs == [], f"host syncs inside the step: {syncs}"
    # the logs come back as device tensors, read once after the step
    assert all(torch.is_tensor(v) for v in logs.values())
    assert torch.isfinite(torch.stack([v.float() for v in logs.values()])).all()


def test_the_counter_sees_the_syncs_a_step_would_make(monkeypatch):
    """The CPU detector is not blind: each kind of sync it guards against is counted."""
    x = torch.arange(6.0)
    with count_host_syncs(monkeypatch) as calls:
        bool(x.sum() > 0)
        x.sum().item()
        x[x > 2]
        x.nonzero()
        torch.tensor([1.0, 2.0])
    assert [name for name, _ in calls] == [
        "__bool__",
        "item",
        "boolean-mask indexing",
        "nonzero",
        "torch.tensor",
    ]


def test_sinkhorn_takes_its_sample_count_as_a_device_tensor():
    """Under torch.distributed the summed count stays a tensor (no `.item()`); same targets."""
    from cellfm.ssl.teacher_targets import sinkhorn_knopp

    logits = torch.randn(16, 32)
    expected = sinkhorn_knopp(logits, 0.07, n_samples=16)
    assert torch.allclose(sinkhorn_knopp(logits, 0.07, n_samples=torch.tensor(16)), expected, atol=1e-6)
    assert torch.allclose(expected.sum(-1), torch.ones(16), atol=1e-5)
