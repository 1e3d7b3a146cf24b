"""Embedding jobs at scale: killed and resumed, split over a dask LocalCluster, flat memory, the CLI."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import anndata as ad
import numpy as np
import pytest

from cellfm.cli import main
from cellfm.embed import embed
from tests.test_embed_api import make_plate, save_tiny

PY = sys.executable


def many_fields(path, n, size=(32, 32)):
    cols = -(-n // 4)
    wells = {}
    for i in range(n):
        wells.setdefault(f"{'ABCD'[i // cols]}/{i % cols + 1}", []).append("0")
    return make_plate(path, wells=wells, size=size, labels=False)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def test_killed_job_resumes_without_duplicates_or_gaps(tmp_path, model_path):
    store = many_fields(tmp_path / "K.ome.zarr", 24, size=(64, 64))
    out = tmp_path / "k.h5ad"
    cmd = [PY, "-m", "cellfm.cli", "embed", store, "--model", model_path, "-o", str(out), "--level", "tile",
           "--tile-size", "16", "--overlap", "0", "--batch-size", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = tmp_path / "k.h5ad.parts" / "rows"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(rows.glob("*.npz")) if rows.exists() else []) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(rows.glob("*.npz")))
    assert 3 <= done < 24, f"kill landed outside the job ({done} fields done)"
    assert not out.exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    resumed = ad.read_h5ad(out)
    clean = embed(store, model_path, level="tile", tile_size=16, overlap=0)
    assert resumed.obs_names.is_unique and resumed.n_obs == clean.n_obs == 24 * 16
    assert list(resumed.obs_names) == list(clean.obs_names)
    np.testing.assert_allclose(resumed.X, clean.X, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "k.h5ad.parts").exists()


def test_local_cluster_of_two_workers_splits_fields(tmp_path, model_path):
    from dask.distributed import Client, LocalCluster

    store = many_fields(tmp_path / "D.ome.zarr", 12)
    serial = embed(store, model_path, tmp_path / "s.h5ad", patch_features=tmp_path / "s.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            split = embed(
                store, model_path, tmp_path / "d.zarr", client=client, patch_features=tmp_path / "d_pf.zarr"
            )
            ran_on = client.run(lambda: 1)
    assert len(ran_on) == 2
    assert list(split.obs_names) == list(serial.obs_names)
    np.testing.assert_allclose(split.X, serial.X, rtol=1e-5, atol=1e-6)
    from cellfm.embed import patch_anndata

    np.testing.assert_allclose(patch_anndata(tmp_path / "d_pf.zarr").X, patch_anndata(tmp_path / "s.zarr").X)


def test_workers_flag_splits_fields_over_processes(tmp_path, model_path):
    """`cellfm embed --workers 2`: two worker processes, the same rows as one process."""
    store = many_fields(tmp_path / "W.ome.zarr", 8)
    out = tmp_path / "w.h5ad"
    assert (
        main(["embed", store, "--model", model_path, "-o", str(out), "--workers", "2", "--no-progress"]) == 0
    )
    split = ad.read_h5ad(out)
    serial = embed(store, model_path)
    assert split.obs_names.is_unique and list(split.obs_names) == list(serial.obs_names)
    np.testing.assert_allclose(split.X, serial.X, rtol=1e-5, atol=1e-6)
    assert split.uns["cellfm"]["worker_processes"] == 2
    assert not (tmp_path / "w.h5ad.parts").exists()


def quick_plate(path, n, size=48):
    """A plate of n one-field wells with labels, written straight to Zarr (write_image's pyramids are slow)."""
    import zarr

    from cellfm.data.writer import AXES_5D, omero_block, plate_block, well_block, with_version

    wells = {f"{'ABCDEFGH'[i // 13]}/{i % 13 + 1}": ["0"] for i in range(n)}
    root = zarr.open_group(
        str(path), mode="w", zarr_format=2, attributes=with_version("0.4", plate_block("M", wells))
    )
    rng = np.random.default_rng(0)
    lab = np.zeros((1, 1, 1, size, size), np.uint16)
    lab[..., 5:15, 5:15], lab[..., 30:40, 20:40] = 1, 2
    ms = [{"axes": AXES_5D, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * 5}]}]}]  # fmt: skip

    def image(sub, data, names):
        attrs = with_version("0.4", {"multiscales": ms, "omero": omero_block(names, data.dtype)})
        root.create_group(sub, attributes=attrs)
        root.create_array(f"{sub}/0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data

    for well in wells:
        root.create_group(well, attributes=with_version("0.4", well_block(["0"])))
        image(f"{well}/0", rng.integers(0, 4000, (1, 2, 1, size, size)).astype(np.uint16), ["DNA", "RNA"])
        root.create_group(f"{well}/0/labels", attributes=with_version("0.4", {"labels": ["nuclei"]}))
        image(f"{well}/0/labels/nuclei", lab, ["nuclei"])
    return str(path)


def first_wells(src, dst, n):
    """A copy of plate `src` that lists only its first n wells."""
    import shutil

    import zarr

    shutil.copytree(src, dst)
    root = zarr.open_group(str(dst), mode="r+")
    attrs = dict(root.attrs)
    attrs["plate"]["wells"] = attrs["plate"]["wells"][:n]
    root.attrs.update(attrs)
    return str(dst)


RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from cellfm.embed import run_embed
    store, model, out = sys.argv[1:4]
    run_embed(store, model, out, level="cell", batch_size=4, patch_features=out + ".pf.zarr")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_peak_memory_flat_from_10_to_100_fields(tmp_path, model_path):
    peaks = {}
    stores = {100: quick_plate(tmp_path / "M100.ome.zarr", 100)}
    stores[10] = first_wells(stores[100], tmp_path / "M10.ome.zarr", 10)
    for n, store in sorted(stores.items()):
        res = subprocess.run([PY, "-c", RSS_SCRIPT, store, model_path, str(tmp_path / f"m{n}.h5ad")],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        peaks[n] = int(res.stdout.split()[-1]) / 1024  # MiB
        assert ad.read_h5ad(tmp_path / f"m{n}.h5ad").n_obs == 2 * n
    assert peaks[100] - peaks[10] < 25, peaks


def test_cli_embed_and_errors(tmp_path, model_path, capsys):
    store = make_plate(tmp_path / "C.ome.zarr", wells={"A/1": ["0"], "A/2": ["0"]})
    csv = tmp_path / "wells.csv"
    csv.write_text("well,treatment,control\nA1,DMSO,1\nA2,drug,0\n")
    out = tmp_path / "c.h5ad"
    rc = main(["embed", store, "--model", model_path, "--output", str(out), "--level", "cell", "--labels",
               "nuclei", "--metadata", str(csv), "--no-progress"])  # fmt: skip
    assert rc == 0 and "4 rows x 16 features (level cell)" in capsys.readouterr().out
    adata = ad.read_h5ad(out)
    assert list(adata.obs["treatment"]) == ["DMSO", "DMSO", "drug", "drug"]
    rc = main(
        ["embed", store, "--model", model_path, "--output", str(tmp_path / "x.h5ad"), "--channels", "DNA"]
    )
    assert rc == 1 and "expects 2 channels" in capsys.readouterr().err
    rc = main(["embed", store, "--output", str(tmp_path / "y.h5ad")])  # the shipped default model
    assert rc == 0 and "2 rows x 192 features (level field)" in capsys.readouterr().out
    assert not (tmp_path / "x.h5ad").exists() and (tmp_path / "y.h5ad").exists()
    assert os.path.exists(out)
