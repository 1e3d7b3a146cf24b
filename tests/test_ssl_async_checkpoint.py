"""train.async_checkpoint: background sharded saves; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cellfm.checkpoints import read_state_dict
from cellfm.ssl import sharded_checkpoint as sc
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import pretrain

from .test_ssl_train import TINY, plate  # noqa: F401 - plate is a fixture

RUN = TINY + ["train.checkpoint_every=2"]


def _run(plate_path: str, out: Path, extra: list[str], steps: int | None = None) -> None:
    pretrain(load_ssl_config("cpu_tiny", RUN + extra), [plate_path], out, steps=steps)


def test_async_checkpoints_resume_like_an_uninterrupted_run(plate, tmp_path):  # noqa: F811
    ref, run = tmp_path / "ref", tmp_path / "async"
    _run(plate, ref, ["train.checkpoint_format=sharded"])
    _run(plate, run, ["train.async_checkpoint=true"], steps=4)
    latest = sc.latest_sharded(run)  # committed at the end of the call, before it returned
    assert latest.name == "step_00000004" and sc.sharded_step(latest) == 4
    assert not (run / "checkpoint.pt").exists()
    _run(plate, run, ["train.async_checkpoint=true"])  # resumes at step 4
    assert sc.latest_sharded(run).name == "step_00000006"
    a, _ = read_state_dict(ref / "backbone.safetensors")
    b, _ = read_state_dict(run / "backbone.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))
