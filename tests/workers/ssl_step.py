"""Worker for test_ssl_distributed: a few training steps on this rank's share of fixed global batches.

Run under torchrun (or as one plain process). Writes the teacher state (rank 0) and exits with
os._exit(0) after a barrier, so a gloo teardown abort after the work cannot fail the test.
"""

from __future__ import annotations

import os
import sys

import torch


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's samples of a crop-major multi-crop batch."""
    glob, local, masks = (
        batch["collated_global_crops"],
        batch["collated_local_crops"],
        batch["collated_masks"],
    )
    b = glob.shape[0] // 2
    per = b // world
    sl = slice(rank * per, (rank + 1) * per)

    def take(t: torch.Tensor, n_chunks: int) -> torch.Tensor:
        return torch.cat([c[sl] for c in t.chunk(n_chunks)])

    return {
        "collated_global_crops": take(glob, 2),
        "collated_local_crops": take(local, local.shape[0] // b),
        "collated_masks": take(masks, 2),
    }


def main(batches_file: str, out_file: str, mode: str, phase: str = "all", extra: str = "") -> None:
    """phase "all": every batch; "first": the first batch, then a checkpoint (+ exports) in the
    output folder; "rest": resume from the checkpoint in the output folder, then the other batches."""
    from cellfm.distributed import barrier, init_distributed
    from cellfm.ssl.config import load_ssl_config
    from cellfm.ssl.train import Trainer

    info = init_distributed("cpu")
    saved = torch.load(batches_file, weights_only=True)
    overrides = (
        saved["overrides"]
        + [
            f"train.batch_size_per_device={saved['global_batch'] // info.world_size}",
            f"train.distributed={mode}",
        ]
        + [o for o in extra.split(";") if o]
    )
    cfg = load_ssl_config("cpu_tiny", overrides)
    trainer = Trainer(cfg, [saved["plate"]], os.path.dirname(out_file), info)
    todo = saved["batches"]
    if phase == "first":
        todo = todo[:1]
    elif phase == "rest":
        assert trainer.resume(), "no checkpoint to resume from"
        todo = todo[trainer.step :]
    logs = [trainer.train_step(shard(b, info.rank, info.world_size)) for b in todo]
    if phase == "first":
        trainer.save()
        trainer.finish_saves()  # train.async_checkpoint: wait for the background write, commit it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from cellfm.ssl.checkpointing import full_state_dict

    teacher = full_state_dict(trainer.meta.teacher)
    student = full_state_dict(trainer.meta.student)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = get_optimizer_state_dict(trainer.meta.student, trainer.optimizer, options=full).get("state", {})
    optim = {
        f"{name}.{k}": v.full_tensor() if hasattr(v, "full_tensor") else v
        for name, s in optim.items()
        for k, v in s.items()
        if torch.is_tensor(v) and v.ndim > 0
    }
    if info.rank == 0:
        out = {"teacher": teacher, "student": student, "optim": optim, "loss": [r["loss"] for r in logs]}
        out["lr"] = [r["lr"] for r in logs]
        torch.save(out, out_file)
    barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:6])
