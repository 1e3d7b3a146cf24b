"""Fault injection, one writer per output: locks for convert / embed / pretrain, verified convert
fields, subset convert reruns (audit items 1, 9, 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import numpy as np
import pytest
import tifffile

from cellfm.data.convert import MARKER
from cellfm.data.plates import list_fields
from cellfm.locking import OutputLock, OutputLocked, exclusive, lock_path
from tests.fault_data import PY, convert, converted_plate, run_cli, tiff_folder, tiny_model


def hold_lock(output) -> subprocess.Popen:
    """Another process holding the lock of `output` until killed."""
    code = textwrap.dedent(f"""
        import time
        from cellfm.locking import OutputLock
        OutputLock({str(output)!r}, "test holder").acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    proc = hold_lock(out)
    try:
        with pytest.raises(OutputLocked, match=rf"pid {proc.pid} on host .*test holder"):
            OutputLock(out).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(out).is_file()  # killed: the file stays, the kernel lock is gone
    with exclusive(out, "second") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    assert "stale lock" in caplog.text and not lock_path(out).exists()


def test_second_convert_is_refused_naming_the_holder(tmp_path):
    folder = tiff_folder(tmp_path / "tiffs")
    out = tmp_path / "cc.ome.zarr"
    proc = hold_lock(out)
    try:
        res = run_cli(
            "convert", str(folder), "-o", str(out), "--channel-names", "1=DNA,2=RNA", "--chunk", "32"
        )
    finally:
        proc.kill()
        proc.wait()
    assert res.returncode != 0 and f"pid {proc.pid}" in res.stderr and "another cellfm process" in res.stderr
    assert not out.exists()


def test_two_converts_at_once_never_leave_a_bad_field(tmp_path):
    folder = tiff_folder(tmp_path / "tiffs", wells=("A01", "A02", "B01"), fields=2, size=(128, 128))
    out = tmp_path / "cc.ome.zarr"
    cmd = [PY, "-m", "cellfm.cli", "convert", str(folder), "-o", str(out), "--channel-names", "1=DNA,2=RNA",
           "--chunk", "32", "--min-level-size", "32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    time.sleep(0.3)
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results)
    for rc, err in results:
        assert rc == 0 or "another cellfm process is writing" in err, err
    fields = list_fields(str(out))
    assert len(fields) == 6
    for im in fields:
        well = f"{im.well[0]}{int(im.well[1:]):02d}"
        truth = np.stack([tifffile.imread(folder / f"{well}_s{im.field}_w{c}.tif") for c in (1, 2)])
        np.testing.assert_array_equal(im.read_full(), truth)


def test_convert_marks_a_field_complete_only_after_verifying_its_chunks(tmp_path, monkeypatch):
    from cellfm.data import writer

    folder = tiff_folder(tmp_path / "tiffs", wells=("A01",), fields=1)
    out = tmp_path / "v.ome.zarr"
    real = writer.write_image

    def lossy(group, *args, **kwargs):  # another writer removes a chunk while this one writes
        paths = real(group, *args, **kwargs)
        os.remove(os.path.join(str(group.store.root), group.path, "0", "0/0/0/1/1"))
        return paths

    monkeypatch.setattr(writer, "write_image", lossy)
    with pytest.raises(RuntimeError, match=r"A/1/0/0: 3 of 4 chunks stored"):
        convert(folder, out)
    assert not (out / "A/1/0" / MARKER).exists()
    monkeypatch.setattr(writer, "write_image", real)
    convert(folder, out)  # the rerun writes the field again
    im = list_fields(str(out))[0]
    np.testing.assert_array_equal(im.read_full()[0], tifffile.imread(folder / "A01_s0_w1.tif"))


def test_convert_rerun_with_a_subset_keeps_the_other_fields(tmp_path):
    folder = tiff_folder(tmp_path / "tiffs", wells=("A01", "A02", "B01"), fields=2)
    out = tmp_path / "s.ome.zarr"
    convert(folder, out)
    subset = tmp_path / "subset"
    subset.mkdir()
    for f in folder.glob("A01_s0_*.tif"):
        os.link(f, subset / f.name)
    convert(subset, out)
    assert sorted((im.well, im.field) for im in list_fields(str(out))) == [
        ("A1", "0"), ("A1", "1"), ("A2", "0"), ("A2", "1"), ("B1", "0"), ("B1", "1")]  # fmt: skip


def test_second_pretrain_and_embed_into_one_output_are_refused(tmp_path):
    from cellfm.embed import run_embed
    from cellfm.ssl.train import pretrain
    from tests.test_ssl_train import _cfg

    store = converted_plate(tmp_path, labels=False)
    run = tmp_path / "run"
    proc = hold_lock(run)
    try:
        with pytest.raises(OutputLocked, match=f"pid {proc.pid}"):
            cfg = _cfg("model.in_chans=2", "augment.channels.num_channels=2", "data.field_crop_size=32")
            pretrain(cfg, [store], run, steps=1)
        assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()
    finally:
        proc.kill()
        proc.wait()
    out = tmp_path / "e.h5ad"
    proc = hold_lock(out)
    try:
        with pytest.raises(OutputLocked, match=f"pid {proc.pid}"):
            run_embed(store, tiny_model(tmp_path), out)
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "e.h5ad.parts").exists()
    assert run_embed(store, tiny_model(tmp_path), out).is_file()  # the holder is gone: runs normally
