"""Sharded training checkpoints with torch.distributed.checkpoint (DCP).

Each process writes its own shards of the model and optimizer state (no process materialises the
full state) into `DIR/checkpoints/step_<N>/`; DCP reshards on load, so a checkpoint written by N
processes (FSDP2 shards or DDP replicas) resumes on any number. A save goes to a `.partial` folder
first; only when every process has finished does the main process rename it and point
`DIR/checkpoints/latest` at it (atomic write), then delete older steps. A crash mid-save leaves the
previous checkpoint and the `latest` pointer untouched. `AsyncSaver` writes in the background
(`train.async_checkpoint`) under the same rules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..atomic import atomic_write_text
from ..distributed import barrier

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def latest_sharded(out_dir: str | Path) -> Path | None:
    """The folder `DIR/checkpoints/latest` points at, or None when there is none."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / ".metadata").is_file():
        raise RuntimeError(
            f"{pointer} points at {path}, which is not a complete checkpoint (no .metadata); "
            "move the checkpoints folder away to start over"
        )
    return path


def sharded_step(path: Path) -> int:
    return int(json.loads((path / "cellfm.json").read_text())["step"])


def _begin(root: Path, step: int, is_main: bool) -> tuple[Path, Path]:
    final, partial = root / f"step_{step:08d}", root / f".step_{step:08d}.partial"
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    return partial, final


def _commit(root: Path, partial: Path, final: Path, step: int, info: dict, is_main: bool) -> Path:
    """Collective, once every shard is on disk: rename, point `latest` at it, drop older steps."""
    barrier()
    if is_main:
        atomic_write_text(partial / "cellfm.json", json.dumps({"step": step, **info}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        atomic_write_text(root / LATEST, final.name)
        for old in [*root.glob("step_*"), *root.glob(".step_*.partial")]:  # older, or left by a crash
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def save_sharded(out_dir: str | Path, state: dict[str, Any], step: int, info: dict, is_main: bool) -> Path:
    """Collective: every process writes its shards of `state` (tensors, DTensors, small objects);
    `info` (JSON: step, config) goes beside them. Returns the new checkpoint folder."""
    root = Path(out_dir) / CHECKPOINTS
    partial, final = _begin(root, step, is_main)
    dcp.save(state, checkpoint_id=partial)
    return _commit(root, partial, final, step, info, is_main)


class AsyncSaver:
    """Sharded saves that write in a background thread (`torch.distributed.checkpoint.async_save`):
    `save` returns once this process's shards are copied to host memory, so training goes on while
    they are written. At most one save is in flight; it is committed (renamed, `latest` pointed at
    it) by `wait`, which the next `save` and the end of training call. Until then, and if the
    process dies first, `latest` keeps pointing at the previous complete checkpoint. The writes'
    collectives go over a gloo group of their own (created here: every process constructs one)."""

    def __init__(self, out_dir: str | Path, is_main: bool):
        if not hasattr(dcp, "async_save"):
            raise RuntimeError(
                f"train.async_checkpoint: torch {torch.__version__} has no torch.distributed.checkpoint."
                "async_save; set train.async_checkpoint=false or upgrade torch"
            )
        self.root, self.is_main = Path(out_dir) / CHECKPOINTS, is_main
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.group = dist.new_group(backend="gloo") if distributed else None
        self.pending: tuple | None = None

    def save(self, state: dict[str, Any], step: int, info: dict) -> None:
        self.wait()
        partial, final = _begin(self.root, step, self.is_main)
        kwargs = {"process_group": self.group} if self.group is not None else {"no_dist": True}
        future = dcp.async_save(state, checkpoint_id=partial, **kwargs)
        self.pending = (future, partial, final, step, info)

    def wait(self) -> Path | None:
        """Collective: finish and commit the save in flight; its folder (None when there was none)."""
        if self.pending is None:
            return None
        future, partial, final, step, info = self.pending
        self.pending = None
        future.result()  # raises what the writer raised; the previous checkpoint stays `latest`
        return _commit(self.root, partial, final, step, info, self.is_main)


def load_sharded(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Fill `state` (this process's template: its shards' shapes) in place from `path`."""
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as err:
        raise RuntimeError(f"{path}: cannot resume from this sharded checkpoint ({err})") from err
    return state


def read_info(path: Path) -> dict[str, Any]:
    return json.loads((path / "cellfm.json").read_text())


def load_module_from_sharded(path: Path, module: torch.nn.Module, prefix: str) -> None:
    """Load `module`'s weights (keys `meta.<prefix><name>` in the checkpoint) on one process, e.g.
    a frozen distillation teacher, whatever number of processes wrote the checkpoint."""
    sd = {f"meta.{prefix}{k}": v for k, v in module.state_dict().items()}
    dcp.load(sd, checkpoint_id=path, no_dist=True)
    module.load_state_dict({k[len(f"meta.{prefix}") :]: v for k, v in sd.items()}, strict=True)
