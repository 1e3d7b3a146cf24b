"""Fault injection, full disks and killed writes: every write path names the file and the space, the
last good state stays, temp files and damaged parts of killed writes are cleaned on the next start
(audit items 5, 11). Full-disk cases mount a small tmpfs and need root."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import textwrap

import anndata as ad
import numpy as np
import pytest
import torch

from cellfm.atomic import atomic_write
from cellfm.ssl.checkpointing import load_training_state, save_training_state
from tests.fault_data import PY, convert, converted_plate, tiff_folder, tiny_model


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only: mounting needs CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("full-disk cases mount a small tmpfs, which needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk) -> None:
    """Fill the file system until a write fails."""
    with open(disk / "filler", "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_checkpoint_on_a_full_disk_names_the_file_and_keeps_the_last_good_one(small_disk):
    save_training_state(small_disk, {"step": 1, "w": torch.ones(1000)})
    fill(small_disk)
    with pytest.raises(OSError, match=r"checkpoint.pt: needs about 3.8 MiB but only 0.0 MiB is free"):
        save_training_state(small_disk, {"step": 2, "w": torch.ones(1_000_000)})
    (small_disk / "filler").unlink()
    with open(small_disk / "filler", "wb") as f:  # now a disk that fills up during the write
        f.write(b"\0" * (3 * 2**20))
    big = {"step": 2, "w": torch.ones(300_000), "v": torch.ones(300_000)}  # no size hint: fails mid-write
    with pytest.raises(OSError, match=r"checkpoint.pt: writing failed \(no space left on device\)"):
        atomic_write(small_disk / "checkpoint.pt", lambda tmp: torch.save(big, tmp))
    assert load_training_state(small_disk)["step"] == 1
    assert not [p for p in os.listdir(small_disk) if p.endswith(".tmp")]


def test_metrics_line_on_a_full_disk_is_not_torn(small_disk):
    from cellfm.ssl.metrics_log import append_row, read_rows

    path = small_disk / "metrics.jsonl"
    append_row(path, {"step": 0, "loss": 1.0})
    fill(small_disk)
    with pytest.raises(OSError, match="metrics.jsonl: writing failed"):
        append_row(path, {"step": 1, "note": "x" * 20000})
    assert path.read_text() == '{"step": 0, "loss": 1.0}\n'
    assert [r["step"] for r in read_rows(path)] == [0]


def test_embed_output_on_a_full_disk_fails_naming_it_and_resumes_after(small_disk, tmp_path):
    store = converted_plate(tmp_path, labels=False)
    model = tiny_model(tmp_path)
    out = small_disk / "e.h5ad"
    code = textwrap.dedent(f"""
        import errno, sys
        import cellfm.embed.job as job
        real = job._execute
        def then_fill(*args, **kwargs):
            real(*args, **kwargs)
            with open({str(small_disk / "filler")!r}, "ab") as f:
                try:
                    while True:
                        f.write(b"\\0" * 65536); f.flush()
                except OSError:
                    pass
        job._execute = then_fill
        try:
            job.run_embed({store!r}, {model!r}, {str(out)!r})
        except Exception as err:
            print("ERR", type(err).__name__, err)
            sys.exit(1)
        print("WROTE")
    """)
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr[-1500:]
    assert "WriteFailed" in res.stdout and "e.h5ad: needs about" in res.stdout, res.stdout
    assert len(list((small_disk / "e.h5ad.parts" / "rows").glob("*.npz"))) == 4  # the rows are kept
    (small_disk / "filler").unlink()
    from cellfm.embed import run_embed

    assert ad.read_h5ad(run_embed(store, model, out)).n_obs == 4


def test_killed_writes_leave_no_temp_files_after_the_next_start(tmp_path):
    from cellfm.ssl.train import pretrain
    from tests.test_ssl_train import _cfg

    store = converted_plate(tmp_path, labels=False)
    run = tmp_path / "run"
    cfg = _cfg("model.in_chans=2", "augment.channels.num_channels=2", "data.field_crop_size=32")
    pretrain(cfg, [store], run, steps=2)
    for name in (".checkpoint.pt.k1ll3d.tmp", ".backbone.safetensors.x2.tmp"):
        (run / name).write_bytes(b"partial")
    pretrain(cfg, [store], run, steps=4)
    assert not list(run.glob(".*.tmp"))
    field = tmp_path / "P.ome.zarr" / "A" / "1" / "0"
    (field / ".cellfm-complete.tmp-4242").write_bytes(b"{")
    convert(tmp_path / "tiffs", tmp_path / "P.ome.zarr")
    assert not list(field.glob(".cellfm-complete.tmp-*"))


def test_a_damaged_embed_part_is_redone_not_a_blocker(tmp_path, monkeypatch):
    from cellfm.embed import embed, rowstore, run_embed

    store = convert(tiff_folder(tmp_path / "t", wells=("A01", "A02", "B01")), tmp_path / "D.ome.zarr")
    model = tiny_model(tmp_path)
    out = tmp_path / "d.h5ad"
    real, written = rowstore.RowStore.write, []

    def dies_after_three(self, result):
        if len(written) == 3:
            raise KeyboardInterrupt  # the job is killed
        real(self, result)
        written.append(result.index)

    monkeypatch.setattr(rowstore.RowStore, "write", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_embed(store, model, out)
    monkeypatch.setattr(rowstore.RowStore, "write", real)
    part = tmp_path / "d.h5ad.parts" / "rows" / "000001.npz"
    part.write_bytes(part.read_bytes()[:100])  # damaged on disk
    resumed = ad.read_h5ad(run_embed(store, model, out))
    clean = embed(store, model)
    assert list(resumed.obs_names) == list(clean.obs_names)
    np.testing.assert_allclose(resumed.X, clean.X, rtol=1e-5, atol=1e-6)
    assert json.loads(json.dumps(list(resumed.uns["cellfm"]["skipped"]["source"]))) == []
