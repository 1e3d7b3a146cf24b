"""train.high_res: the last iterations at larger crops, switched at the right step, resumable inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.high_res import high_res_sizes, phase_start
from cellfm.ssl.train import Trainer

from .test_ssl_train import TINY, _teacher_state, plate  # noqa: F401 - plate is a fixture

# 6 iterations (2 epochs x 3); the last 2 at 48 px global crops (6 x 6 patches instead of 4 x 4).
HIGH_RES = TINY + ["train.high_res={iters: 2, global_crops_size: 48}", "train.checkpoint_every=1"]


def _cfg(*extra: str):
    return load_ssl_config("cpu_tiny", HIGH_RES + list(extra))


def test_phase_sizes_scale_with_the_global_crops_and_bad_values_name_the_key():
    cfg = _cfg()
    assert phase_start(cfg) == 4
    # local 16 px x 48/32 = 24 (a multiple of the 8 px patch); field 64 px x 1.5 = 96
    assert high_res_sizes(cfg) == (48, 24, 96)
    assert phase_start(load_ssl_config("cpu_tiny", TINY)) is None
    vitl = load_ssl_config("train/vitl14")
    assert phase_start(vitl) == vitl.total_iters - vitl.train.high_res.iters > 0
    assert high_res_sizes(vitl)[0] == 518 and high_res_sizes(vitl)[1] % 14 == 0
    with pytest.raises(ValueError, match="train.high_res.iters = 7"):
        _cfg("train.high_res.iters=7")
    with pytest.raises(ValueError, match="train.high_res.global_crops_size = 44 .*model.patch_size = 8"):
        _cfg("train.high_res.global_crops_size=44")
    with pytest.raises(ValueError, match="train.high_res.field_crop_size = 40 is smaller"):
        _cfg("train.high_res.field_crop_size=40")


def _train(plate_path: str, out: Path, steps: int | None = None) -> list[tuple[int, ...]]:
    """Train (or resume) into `out`; the global-crop batch shapes each step saw."""
    trainer = Trainer(_cfg(), [plate_path], out)
    shapes = []
    forward_backward = trainer.meta.forward_backward

    def spy(batch, *args, **kwargs):
        shapes.append(tuple(batch["collated_global_crops"].shape))
        return forward_backward(batch, *args, **kwargs)

    trainer.meta.forward_backward = spy
    trainer.train(steps)
    return shapes


def test_phase_switches_crops_at_its_step_and_resume_inside_it_equals_uninterrupted(plate, tmp_path):  # noqa: F811
    ref, run = tmp_path / "ref", tmp_path / "resumed"
    shapes = _train(plate, ref)
    assert [s[-1] for s in shapes] == [32, 32, 32, 32, 48, 48]  # the last 2 of 6 steps at 48 px
    rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_crops_size"] for r in rows] == [32, 32, 32, 32, 48, 48]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # The schedules continue through the phase: lr keeps following the cosine, no restart.
    lrs = [r["lr"] for r in rows]
    assert lrs[4] < lrs[3] and lrs[5] < lrs[4]

    assert [s[-1] for s in _train(plate, run, steps=5)] == [32, 32, 32, 32, 48]
    assert [s[-1] for s in _train(plate, run)] == [48]  # resumed at step 5, inside the phase
    a, b = _teacher_state(ref), _teacher_state(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed inside the phase, the weights differ"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))
