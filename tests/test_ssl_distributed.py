"""Two processes (gloo, CPU) reach the same weights as one process with the same global batch."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cellfm.ssl.batches import BatchStream
from cellfm.ssl.config import load_ssl_config

from .test_ssl_train import TINY

WORKER = Path(__file__).parent / "workers" / "ssl_step.py"
# KoLeo is a local-batch regulariser (as in DINOv2), so it is off for the equivalence check. No
# warmup and a fast-moving teacher: every step changes the weights (lr 1e-3 from step 0), so a run
# whose gradients are not averaged over the processes ends measurably elsewhere.
EXACT = TINY + [
    "dino.koleo_loss_weight=0.0",
    "model.drop_path_rate=0.0",
    "optim.warmup_epochs=0",
    "optim.base_lr=1.0e-3",
    "teacher.momentum_teacher=0.9",
]
N_STEPS = 3
# Measured after N_STEPS (DDP and FSDP alike): synchronised runs differ by rounding that AdamW
# amplifies where a gradient is pure noise (max 2.4e-5 on the student, on the key bias, whose true
# gradient is zero; median 6e-8; teacher max 4e-6; moments 1e-5 of their size). Without the gradient
# all-reduce the student differs by 5e-3 (median and max), the teacher by 9e-4, the moments by ~1x.
WEIGHT_ATOL = 2e-4
MOMENT_RTOL = 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from cellfm.data.samples import write_sample_plate

    root = tmp_path_factory.mktemp("dist")
    plate = write_sample_plate(root / "samples.ome.zarr", timelapse_frames=2)
    cfg = load_ssl_config("cpu_tiny", EXACT)
    stream = BatchStream(cfg, [plate]).from_step(0)
    data = [next(stream) for _ in range(N_STEPS)]
    path = root / "batches.pt"
    torch.save(
        {
            "batches": [{k: v for k, v in b.items() if torch.is_tensor(v)} for b in data],
            "plate": plate,
            "overrides": EXACT,
            "global_batch": 4,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def single_runs(batches, tmp_path_factory):
    """The uninterrupted one-process run of each mode, computed once for every test that compares
    against it (each is a fresh Python process)."""
    runs: dict[str, dict] = {}

    def get(mode: str) -> dict:
        if mode not in runs:
            runs[mode] = _run(batches, tmp_path_factory.mktemp(f"single_{mode}") / "state.pt", 1, mode)
        return runs[mode]

    return get


def _run(batches: Path, out: Path, nproc: int, mode: str, phase: str = "all", extra: str = "") -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(batches), str(out), mode, phase, extra]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={_free_port()}",
            str(WORKER),
            str(batches),
            str(out),
            mode,
            phase,
            extra,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.is_file(), proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)


def _moved(start: dict, end: dict) -> float:
    return max((start[k].float() - end[k].float()).abs().max().item() for k in start)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(batches, single_runs, tmp_path, mode):
    """Student weights, teacher weights and AdamW moments after several steps at lr 1e-3: two
    processes with half the batch each end where one process with the whole batch ends."""
    single = single_runs(mode)
    double = _run(batches, tmp_path / "two" / "state.pt", 2, mode)
    assert min(single["lr"]) > 0 and len(single["loss"]) == N_STEPS
    assert single["loss"] == pytest.approx(double["loss"], rel=1e-4)
    diff, key = _max_diff(single["student"], double["student"])
    assert diff < WEIGHT_ATOL, f"student {key} differs by {diff:.3g}"
    diff, key = _max_diff(single["teacher"], double["teacher"])
    assert diff < WEIGHT_ATOL, f"teacher {key} differs by {diff:.3g}"
    for key, value in single["optim"].items():  # exp_avg, exp_avg_sq: relative to their size
        other = double["optim"][key]
        scale = value.abs().max().item()
        assert (value - other).abs().max().item() <= MOMENT_RTOL * scale + 1e-12, key


@pytest.mark.parametrize(
    "mode,first,rest,fmt",
    [
        ("fsdp", 2, 1, "auto"),
        ("fsdp", 1, 2, "sharded"),
        ("fsdp", 1, 2, "auto"),  # a full-state checkpoint.pt, read by the main process and broadcast
        ("fsdp", 2, 1, "sharded;train.async_checkpoint=true"),  # written in the background
        ("ddp", 2, 1, "auto"),
        ("ddp", 1, 2, "auto"),
    ],
)
def test_checkpoint_resumes_on_another_number_of_processes(
    batches, single_runs, tmp_path, mode, first, rest, fmt
):
    """A checkpoint written by `first` processes resumes on `rest` processes and ends where an
    uninterrupted single process ends; the exports of a sharded run are complete. Several
    processes write sharded checkpoints (DCP); one process a full-state checkpoint.pt (the old
    format, still resumed) unless asked for shards."""
    single = single_runs(mode)
    run_dir = tmp_path / "split"
    _run(batches, run_dir / "first.pt", first, mode, "first", f"train.checkpoint_format={fmt}")
    sharded = fmt == "sharded" or first > 1
    assert (run_dir / "checkpoints" / "latest").is_file() == sharded
    assert (run_dir / "checkpoint.pt").is_file() != sharded
    if sharded:  # one shard file per writing process, no full copy
        (step_dir,) = (run_dir / "checkpoints").glob("step_*")
        assert len(list(step_dir.glob("*.distcp"))) == first
    assert (run_dir / "backbone.pth").is_file()
    exported = torch.load(run_dir / "backbone.pth", weights_only=True)
    assert all(not hasattr(v, "to_local") for v in exported.values())
    resumed = _run(batches, run_dir / "state.pt", rest, mode, "rest")
    for key, value in exported.items():  # full tensors, not one rank's shard
        assert value.shape == single["teacher"][f"backbone.{key}"].shape, key
    assert single["loss"][1:] == pytest.approx(resumed["loss"], rel=1e-4)
    for part in ("student", "teacher"):
        diff, key = _max_diff(single[part], resumed[part])
        assert diff < WEIGHT_ATOL, f"{part} {key} differs by {diff:.3g}"
    for key, value in single["optim"].items():
        scale = value.abs().max().item()
        assert (value - resumed["optim"][key]).abs().max().item() <= MOMENT_RTOL * scale + 1e-12, key


def test_fsdp_mixed_precision_policy_traffic():
    """Counted from the collectives of one FSDP2 step on 2 processes: parameters gathered once in
    bf16 (student kept gathered from forward to backward, teacher once per forward), backbone
    gradients reduced in bf16 and head gradients in fp32 (benchmarks/comm.py, tiny model)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from comm import measure

    r = measure(True, "bf16", False)
    n, heads = r["n_student"], r["n_head"]
    student, teacher = r["student"], r["teacher"]
    assert set(student) == {
        ("all_gather", "bfloat16"),
        ("reduce_scatter", "bfloat16"),
        ("reduce_scatter", "float32"),
    }
    assert student[("all_gather", "bfloat16")] == pytest.approx(2 * n, rel=0.01)  # + shard padding
    assert student[("reduce_scatter", "bfloat16")] == pytest.approx(2 * (n - heads), rel=0.01)
    assert student[("reduce_scatter", "float32")] == pytest.approx(4 * heads, rel=0.01)
    assert teacher == {("all_gather", "bfloat16"): pytest.approx(2 * n, rel=0.01)}
