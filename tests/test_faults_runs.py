"""Fault injection, runs that know what they are: changed-config resume, torn / duplicated metrics,
pretraining that can never get a crop, CLI mistakes (audit items 4, 5 (metrics), 6, 10 (metrics), 11)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from cellfm.cli import main
from cellfm.ssl.train import pretrain
from tests.fault_data import run_cli
from tests.test_ssl_train import TINY, _cfg


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    from cellfm.data.samples import write_sample_plate

    return write_sample_plate(tmp_path_factory.mktemp("plate") / "samples.ome.zarr", timelapse_frames=1)


def steps_of(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_changed_config_is_refused_naming_the_keys_unless_accepted(plate, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(), [plate], run, steps=2)
    config = (run / "config.yaml").read_bytes()
    with pytest.raises(
        ValueError, match=r"optim.base_lr: 0.0005 -> 0.5.*train.seed: 0 -> 7.*--resume-with-changes"
    ):
        pretrain(_cfg("optim.base_lr=0.5", "train.seed=7"), [plate], run, steps=4)
    assert (run / "config.yaml").read_bytes() == config
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    with pytest.raises(ValueError, match="trained with model"):  # a changed model is never resumable
        pretrain(_cfg("model.depth=3"), [plate], run, steps=4, resume_with_changes=["model.depth"])
    assert (run / "config.yaml").read_bytes() == config  # written only once the run is accepted
    pretrain(_cfg("optim.base_lr=0.5", "train.seed=7"), [plate], run, steps=4,
             resume_with_changes=["optim.base_lr", "train.seed"])  # fmt: skip
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["base_lr"] == 0.5
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["accepted_changes"] for h in history] == [[], ["optim.base_lr", "train.seed"]]
    assert steps_of(run) == [0, 1, 2, 3]


def test_torn_metrics_line_is_dropped_on_resume(plate, tmp_path, caplog):
    run = tmp_path / "run"
    pretrain(_cfg(), [plate], run, steps=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss": 7.1')  # a full disk cut the line
    with caplog.at_level(logging.WARNING):
        pretrain(_cfg(), [plate], run, steps=4)
    assert "torn last line" in caplog.text and "metrics.jsonl" in caplog.text
    assert steps_of(run) == [0, 1, 2, 3]


def test_rerun_after_a_kill_before_the_first_checkpoint_does_not_duplicate_steps(plate, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(), [plate], run, steps=2)
    (run / "checkpoint.pt").unlink()  # as if killed after logging steps 0, 1 but before checkpointing
    pretrain(_cfg(), [plate], run, steps=2)
    assert steps_of(run) == [0, 1]


def test_metrics_reader_names_a_bad_line_in_the_middle(tmp_path):
    from cellfm.ssl.metrics_log import read_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a metrics row"):
        read_rows(path)


def _plate(path, value=None, size=64):
    from cellfm.data.writer import create_plate, write_image

    root = create_plate(str(path), "bg", {"A/1": ["0"], "A/2": ["0"]}, "0.4")
    rng = np.random.default_rng(0)
    for well in ("A/1", "A/2"):
        img = (
            np.full((1, size, size), value, np.uint16)
            if value is not None
            else rng.integers(0, 999, (1, size, size))
        )
        write_image(root[well].require_group("0"), img.astype(np.uint16), ["DNA"], "0.4", chunk=32)
    return str(path)


def test_all_background_plate_ends_with_an_error_not_endless_epochs(tmp_path):
    store = _plate(tmp_path / "bg.ome.zarr", value=100)
    res = run_cli("pretrain", store, "-o", str(tmp_path / "run"), *TINY, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "3 epochs in a row gave no batch" in res.stderr and "bg.ome.zarr" in res.stderr
    assert "data.threshold='otsu'" in res.stderr and "data.min_foreground=0.3" in res.stderr


def test_crop_larger_than_every_field_is_an_error(tmp_path):
    store = _plate(tmp_path / "small.ome.zarr", size=48)
    res = run_cli("pretrain", store, "-o", str(tmp_path / "run"), *TINY, timeout=120)
    assert res.returncode == 1
    assert "data.field_crop_size=64 is larger than every field" in res.stderr and "48x48" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps: must be a positive integer, got 0"),
        (["--steps", "-5"], "--steps: must be a positive integer, got -5"),
        (["optim.base_lr=-0.1"], "optim.base_lr = -0.1 is out of range: expected > 0"),
        (["teacher.teacher_temp=0"], "teacher.teacher_temp = 0.0 is out of range"),
        (["teacher.momentum_teacher=1.5"], "teacher.momentum_teacher = 1.5 is out of range"),
        (["data.crops_per_epoch=0"], "data.crops_per_epoch = 0 is out of range"),
        (["--resume-with-changes", "optim.nope"], "unknown config keys ['optim.nope']"),
    ],
)
def test_cli_traps_are_errors(plate, tmp_path, capsys, args, message):
    try:
        rc = main(["pretrain", plate, "-o", str(tmp_path / "run"), *TINY, *args])
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    assert rc != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
