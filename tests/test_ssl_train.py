"""End-to-end pretraining on a small real-image plate: outputs, exports, resume, failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cellfm
from cellfm.ssl.config import load_ssl_config
from cellfm.ssl.train import Trainer, pretrain

TINY = [
    "model.size=tiny",
    "model.depth=2",
    "model.patch_size=8",
    "model.img_size=32",
    "model.in_chans=1",
    "augment.crops.global_crops_size=32",
    "augment.crops.local_crops_size=16",
    "augment.crops.local_crops_number=2",
    "augment.masking.patch_size=8",
    "augment.channels.num_channels=1",
    "data.field_crop_size=64",
    "data.crops_per_epoch=16",
    "data.crops_per_field=4",
    "dino.head={n_prototypes: 64, bottleneck_dim: 16, hidden_dim: 32, nlayers: 3}",
    "ibot.head={n_prototypes: 64, bottleneck_dim: 16, hidden_dim: 32, nlayers: 3}",
    "train.batch_size_per_device=4",
    "train.epochs=2",
    "train.iters_per_epoch=3",
    "train.checkpoint_every=2",
    "optim.warmup_epochs=1",
    "optim.freeze_last_layer_epochs=0",
    "teacher.warmup_teacher_temp_epochs=1",
]


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    from cellfm.data.samples import write_sample_plate

    return write_sample_plate(tmp_path_factory.mktemp("plate") / "samples.ome.zarr", timelapse_frames=2)


def _cfg(*extra: str):
    return load_ssl_config("cpu_tiny", TINY + list(extra))


def test_pretrain_writes_metrics_checkpoints_and_official_exports(plate, tmp_path, dinov2_vits):
    out = tmp_path / "run"
    last = pretrain(_cfg(), [plate], out)
    assert last["step"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    for key in (
        "loss",
        "dino_loss",
        "ibot_loss",
        "koleo_loss",
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "step_time_s",
        "images_per_s",
        "peak_mem_mb",
    ):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] > 0  # warmup from zero
    assert rows[-1]["teacher_temp"] == pytest.approx(_cfg().teacher.teacher_temp)
    for name in ("config.yaml", "checkpoint.pt", "backbone.safetensors", "backbone.pth", "loss_curve.png"):
        assert (out / name).is_file(), name
    saved = load_ssl_config(out / "config.yaml")
    assert saved.model.depth == 2
    # The export loads with cellfm and, strictly, into the official constructor.
    ours = cellfm.load_backbone(out / "backbone.safetensors")
    assert ours.cellfm_metadata["channel_names"] == ["DNA"] and ours.cellfm_metadata["trained_steps"] == 6
    official = dinov2_vits.DinoVisionTransformer(
        img_size=32,
        patch_size=8,
        in_chans=1,
        embed_dim=192,
        depth=2,
        num_heads=3,
        init_values=1e-5,
        block_chunks=0,
    )
    official.load_state_dict(torch.load(out / "backbone.pth", weights_only=True), strict=True)
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(official.eval()(x), ours.eval()(x), atol=1e-5)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="unknown config key 'optim.base_rl'; did you mean 'base_lr'"):
        load_ssl_config("cpu_tiny", ["optim.base_rl=1"])
    with pytest.raises(ValueError, match="local_crops_size = 30 is not a multiple of model.patch_size = 8"):
        load_ssl_config("cpu_tiny", ["augment.crops.local_crops_size=30"])


def _teacher_state(out: Path) -> dict:
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return {k: v for k, v in state["meta"].items() if k.startswith(("teacher.", "student."))}


def test_sigkill_and_resume_is_bit_identical(plate, tmp_path):
    extra = ["train.checkpoint_every=1", "train.epochs=5"]

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cellfm.cli",
            "pretrain",
            plate,
            "--config",
            "cpu_tiny",
            "-o",
            str(out),
            *TINY,
            *extra,
        ]

    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(command(ref), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmd = command(run)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= killed_at < 15
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = _teacher_state(ref), _teacher_state(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(15))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(plate, tmp_path):
    out = tmp_path / "nan"
    trainer = Trainer(_cfg("train.checkpoint_every=1"), [plate], out)
    trainer.train(steps=2)
    good = (out / "checkpoint.pt").read_bytes()

    def explode(*args, **kwargs):
        raise FloatingPointError("non-finite loss (dino nan, ibot nan, koleo nan)")

    trainer.meta.forward_backward = explode
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.train(steps=4)
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_nan_batch_stops_the_step_after_it(plate, tmp_path):
    """Finiteness is checked after the step (no host sync inside it), before anything is saved."""
    trainer = Trainer(_cfg(), [plate], tmp_path / "x")
    batch = next(trainer.data.from_step(0))
    batch["collated_global_crops"][0, 0, 0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss \(dino nan.*last checkpoint is left intact"
    ):
        trainer.train_step(batch)
    assert trainer.step == 0 and not (tmp_path / "x" / "checkpoint.pt").exists()


def test_distillation_keeps_teacher_frozen_and_exports_student_ema(plate, tmp_path):
    teacher_run = tmp_path / "teacher"
    pretrain(_cfg(), [plate], teacher_run, steps=2)
    cfg = _cfg(
        "model.size=tiny",
        "model.depth=1",
        "distillation.enabled=true",
        f"distillation.teacher_checkpoint={teacher_run}",
    )
    trainer = Trainer(cfg, [plate], tmp_path / "student")
    before = {k: v.clone() for k, v in trainer.meta.teacher.state_dict().items()}
    assert trainer.meta.teacher["backbone"].n_blocks == 2 and trainer.meta.student["backbone"].n_blocks == 1
    trainer.train(steps=2)
    after = trainer.meta.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    exported = cellfm.load_backbone(tmp_path / "student" / "backbone.safetensors")
    assert exported.arch.depth == 1 and exported.cellfm_metadata["distilled"] is True
    ema = trainer.meta.student_ema["backbone"].state_dict()
    assert all(torch.equal(exported.state_dict()[k], ema[k]) for k in ema)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_skips_augmenting_the_epochs_earlier_batches(plate, monkeypatch, workers):
    """from_step(k) yields batch k of an uninterrupted stream, without augmenting batches < k."""
    from cellfm.transforms import MultiCrop

    from cellfm.ssl.batches import SKIPPED, BatchStream

    cfg = _cfg("data.crops_per_epoch=12", "train.batch_size_per_device=2", f"data.num_workers={workers}")
    full = BatchStream(cfg, [plate]).from_step(0)
    reference = [next(full) for _ in range(9)]  # 6 steps per epoch: into the second epoch
    calls = []
    original = MultiCrop.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiCrop, "__call__", counting)
    for start in (4, 7):
        calls.clear()
        batch = next(BatchStream(cfg, [plate]).from_step(start))
        assert SKIPPED not in batch
        for key, value in reference[start].items():
            if torch.is_tensor(value):
                assert torch.equal(batch[key], value), (start, key)
        if workers == 0:  # in-process: the skipped batches' crops were not augmented
            assert len(calls) == 2, f"augmented {len(calls)} crops to resume at step {start}"
