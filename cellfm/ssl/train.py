"""The pretraining loop: schedules, optimizer, EMA teacher, checkpoints, resume, exports."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

from ..config import from_dict
from ..data.checked_read import summarize
from ..distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from ..locking import exclusive
from ..models.config import backbone_from_config
from .batches import BatchStream
from .checkpointing import export_backbone, load_training_state, save_training_state
from .compile import compile_backbones
from .config import SSLConfig
from .high_res import CropPhases, high_res_sizes
from .meta_arch import SSLMetaArch, build_heads, check_finite, trainable_backbone
from .monitor import Monitor, peak_memory_mb, plot_loss_curve
from .parallel import parallelize
from .param_groups import param_groups
from .run_identity import check_run, record_run
from .schedules import Schedules, cosine_schedule, linear_then_constant, scaled_lr
from .sharded_checkpoint import AsyncSaver, latest_sharded, load_module_from_sharded, read_info, save_sharded
from .throughput import DataWait
from .training_state import (
    fold_center_updates,
    full_state,
    load_full_state,
    load_sharded_state,
    read_full_state,
    sharded_state,
)

log = logging.getLogger("cellfm.pretrain")
BAD_DATA_LOG = "bad_data.jsonl"


def build_schedules(cfg: SSLConfig, world_size: int) -> Schedules:
    o, t, ipe, total = cfg.optim, cfg.teacher, cfg.train.iters_per_epoch, cfg.total_iters
    peak = scaled_lr(o.base_lr, cfg.train.batch_size_per_device * world_size, o.scaling_rule)
    warmup = min(o.warmup_epochs * ipe, total)
    lr = cosine_schedule(peak, o.min_lr, total, warmup)
    # As DINOv2: the prototype layer follows the lr schedule with its first epochs zeroed (its
    # warmup is not delayed by the freeze).
    last_layer_lr = lr.copy()
    last_layer_lr[: o.freeze_last_layer_epochs * ipe] = 0.0
    return Schedules(
        lr=lr,
        wd=cosine_schedule(o.weight_decay, o.weight_decay_end, total),
        momentum=cosine_schedule(t.momentum_teacher, t.final_momentum_teacher, total),
        teacher_temp=linear_then_constant(
            t.warmup_teacher_temp, t.teacher_temp, t.warmup_teacher_temp_epochs * ipe, total
        ),
        last_layer_lr=last_layer_lr,
    )


def load_frozen_teacher(path: str | Path, cfg: SSLConfig) -> nn.ModuleDict:
    """Backbone + heads of a finished cellfm run (its checkpoint.pt), frozen, for distillation."""
    path = Path(path)
    sharded = latest_sharded(path) if path.is_dir() else None
    ckpt_file = path / "checkpoint.pt" if path.is_dir() else path
    if sharded is not None:
        state = {"config": read_info(sharded)["config"]}
    else:
        state = load_training_state(ckpt_file.parent) if ckpt_file.name == "checkpoint.pt" else None
    if state is None:
        raise FileNotFoundError(f"distillation teacher: no cellfm checkpoint.pt or checkpoints/ at {path}")
    t_cfg = from_dict(SSLConfig, state["config"])
    if t_cfg.dino.head.n_prototypes != cfg.dino.head.n_prototypes:
        raise ValueError(
            f"distillation: teacher has {t_cfg.dino.head.n_prototypes} prototypes, student config "
            f"{cfg.dino.head.n_prototypes}; set dino.head.n_prototypes to match"
        )
    backbone = trainable_backbone(backbone_from_config(replace(t_cfg.model, pretrained=None)))
    teacher = nn.ModuleDict({"backbone": backbone, **build_heads(t_cfg, backbone.embed_dim)})
    prefix = "student_ema." if t_cfg.distillation.enabled else "teacher."
    if sharded is not None:  # each process reads the whole teacher before it is sharded
        load_module_from_sharded(sharded, teacher, prefix)
        return teacher.eval()
    sd = {k[len(prefix) :]: v for k, v in state["meta"].items() if k.startswith(prefix)}
    teacher.load_state_dict(sd, strict=True)
    return teacher.eval()


class Trainer:
    def __init__(self, cfg: SSLConfig, sources: list[str], out_dir: str | Path, info: DistInfo | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info = info or init_distributed()
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.sources = list(sources)
        self.data = self._stream(cfg)
        self.phases = CropPhases(cfg, self.data, self._stream)  # train.high_res: larger crops at the end
        self.data_wait = DataWait(self.data.num_workers, self.data.augment_on)
        backbone = backbone_from_config(cfg.model)
        teacher = (
            load_frozen_teacher(cfg.distillation.teacher_checkpoint, cfg)
            if cfg.distillation.enabled
            else None
        )
        # A plain copy (main process, CPU) that exports receive the output weights in: it keeps the
        # channel-strategy wrapper and never shares modules with the (possibly sharded) student.
        self._export_copy = copy.deepcopy(backbone).cpu().eval() if self.info.is_main else None
        self.meta = SSLMetaArch(cfg, backbone, teacher).to(self.info.device)
        torch.manual_seed(cfg.train.seed + self.info.rank)  # per-rank randomness from here on
        self.meta.runners = parallelize(self.meta, cfg, self.info)
        if cfg.train.compile:  # after wrapping: FSDP's per-block hooks stay outside the graphs
            sharded = cfg.train.distributed == "fsdp" and self.info.world_size > 1
            # per block on CPU too: inductor's lowering of a whole ViT-S/14 student stalled for over
            # 25 minutes on CPU, while per block compiles in about 4 (benchmarks/ssl_step.py)
            per_block = sharded or self.info.device.type == "cpu"
            compile_backbones(self.meta, per_block=per_block, backend=cfg.train.compile_backend)
        o = cfg.optim
        depth = self.meta.student["backbone"].n_blocks
        self.groups = param_groups(self.meta.student, depth, o.layerwise_decay, o.patch_embed_lr_mult)
        self.optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "names"} for g in self.groups],
            betas=(o.adamw_beta1, o.adamw_beta2),
        )
        self.scaler = torch.amp.GradScaler(self.info.device.type) if cfg.train.precision == "fp16" else None
        self.schedules = build_schedules(cfg, self.info.world_size)
        self.step = 0
        self._saver: AsyncSaver | None = None  # train.async_checkpoint: made at the first save
        self.monitor = Monitor(
            self.out, self.info.is_main, cfg.train.collapse_warn_entropy, cfg.train.tensorboard
        )

    def _stream(self, cfg: SSLConfig) -> BatchStream:
        stream = BatchStream(cfg, self.sources, self.info.rank, self.info.world_size, self.info.device)
        stream.crops.bad_data_log = str(self.out / BAD_DATA_LOG)  # skipped items, all processes
        return stream

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full-state checkpoint (`training_state.full_state`: tensors on the main process only).
        Collective: every process calls it."""
        return {
            "step": self.step,
            **full_state(self.meta, self.optimizer),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": torch.get_rng_state(),
            "config": asdict(self.cfg),
        }

    @property
    def sharded_checkpoints(self) -> bool:
        fmt = self.cfg.train.checkpoint_format
        return fmt == "sharded" or (
            fmt == "auto" and (self.info.world_size > 1 or self.cfg.train.async_checkpoint)
        )

    def _check_model(self, saved_config: dict) -> None:
        saved = from_dict(SSLConfig, saved_config)
        if saved.model != self.cfg.model:
            raise ValueError(
                f"{self.out}: the checkpoint was trained with model {saved.model}, the config asks for "
                f"{self.cfg.model}; use another --output or the same config"
            )

    def _resume_sharded(self, path: Path) -> None:
        info = read_info(path)
        self._check_model(info["config"])
        state = load_sharded_state(self.meta, self.optimizer, path)
        if self.scaler and info.get("scaler"):
            self.scaler.load_state_dict(info["scaler"])
        torch.set_rng_state(state["rng"])
        self.step = int(info["step"])

    def resume(self) -> bool:
        """Resume from the newer of DIR/checkpoints/latest (sharded) and DIR/checkpoint.pt (full)."""
        sharded, full_file = latest_sharded(self.out), self.out / "checkpoint.pt"
        if sharded is not None and (
            not full_file.is_file() or (sharded / "cellfm.json").stat().st_mtime >= full_file.stat().st_mtime
        ):
            self._resume_sharded(sharded)
            self.monitor.truncate_after(self.step)
            log.info("resumed %s at step %d (sharded checkpoint %s)", self.out, self.step, sharded.name)
            return True
        state = read_full_state(self.out)  # the main process reads it; the others get broadcasts
        if state is None:
            return False
        self._check_model(state["config"])
        load_full_state(self.meta, self.optimizer, state)
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.monitor.truncate_after(self.step)
        log.info("resumed %s at step %d", self.out, self.step)
        return True

    def save(self) -> None:
        """Checkpoint and export; every process calls it (the weights may be sharded over them)."""
        if self.sharded_checkpoints:
            fold_center_updates(self.meta)
            info = {"config": asdict(self.cfg), "scaler": self.scaler.state_dict() if self.scaler else None}
            if self.cfg.train.async_checkpoint:  # written in the background; committed by the next save
                self._async_saver().save(sharded_state(self.meta, self.optimizer), self.step, info)
            else:
                save_sharded(
                    self.out, sharded_state(self.meta, self.optimizer), self.step, info, self.info.is_main
                )
        else:
            state = self.state()
            if self.info.is_main:
                save_training_state(self.out, state)
        self.export()
        barrier()

    def _async_saver(self) -> AsyncSaver:
        if self._saver is None:
            self._saver = AsyncSaver(self.out, self.info.is_main)  # collective: a gloo group of its own
        return self._saver

    def finish_saves(self) -> None:
        """Collective: wait for a background checkpoint write and commit it (a no-op without one)."""
        if self._saver is not None:
            self._saver.wait()

    def export_model(self) -> nn.Module | None:
        """A plain copy of the output backbone (teacher, or student EMA when distilling) in its
        channel-strategy wrapper, on the main process (None on the others). Every process calls it:
        under FSDP the weights are gathered from all of them."""
        # Gathered tensor by tensor onto the main process only (CPU); the others hold nothing.
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sd = get_model_state_dict(self.meta.output_model["backbone"], options=full)
        if self._export_copy is None:
            return None
        trainable_backbone(self._export_copy).load_state_dict(sd)
        return self._export_copy

    def export(self) -> list[Path]:
        """Write the output backbone as DIR/backbone.safetensors (+ .pth) from the main process;
        every process calls it (see `export_model`). Returns the paths written (none elsewhere)."""
        model = self.export_model()
        if model is None:
            return []
        extra = {"trained_steps": self.step, "recipe": "cellfm pretrain", "distilled": self.meta.distilling}
        return export_backbone(
            self.out, model, channel_names=self.data.channels, normalization=self._norm(), extra=extra
        )

    def _norm(self) -> dict:
        a = self.cfg.augment
        return {"input": asdict(a.input_norm), "output": asdict(a.output_norm)}

    def knn_eval(self, model: nn.Module) -> float:
        """Leave-fold-out kNN accuracy of `model` (from `export_model`) on the labelled holdout."""
        from ..analysis import knn_accuracy
        from ..embed import embed

        ev = self.cfg.evaluation
        model = model.eval()
        adata = embed(list(ev.stores), model, None, level=ev.level, labels=ev.labels, metadata=ev.labels_csv)
        if ev.label_column not in adata.obs:
            raise KeyError(f"{ev.labels_csv}: no column {ev.label_column!r} for the kNN evaluation")
        keep = adata.obs[ev.label_column].notna().to_numpy()  # wells without a label are not scored
        y = adata.obs[ev.label_column][keep].astype(str).to_numpy()
        return knn_accuracy(adata.X[keep], y, k=ev.k)

    # -- the loop -------------------------------------------------------------------------------
    def _apply_schedules(self, values: dict[str, float]) -> None:
        for group, meta in zip(self.optimizer.param_groups, self.groups):
            lr = values["last_layer_lr"] if meta["is_last_layer"] else values["lr"]
            group["lr"] = lr * meta["lr_multiplier"]
            group["weight_decay"] = values["wd"] * meta["wd_multiplier"]

    def _clip(self) -> None:
        clip = self.cfg.optim.clip_grad
        if clip <= 0:
            return
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        for module in self.meta.student.values():  # each module separately, as DINOv2 does
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)

    def device_step(self, batch: dict, values: dict[str, float]) -> dict[str, torch.Tensor]:
        """Forward, backward, clip, optimizer and EMA on a prepared batch with the schedule `values`;
        no host sync inside (but GradScaler's inf check at fp16). Returns the losses on the device."""
        self._apply_schedules(values)
        self.optimizer.zero_grad(set_to_none=True)
        logs = self.meta.forward_backward(batch, values["teacher_temp"], self.scaler)
        self._clip()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.meta.update_teacher(values["momentum"])
        return logs

    @staticmethod
    def _reduce_logs(logs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean over processes of the step's logs: one all-reduce and one host sync for all of them."""
        packed = all_reduce_mean(torch.stack([v.detach().float().reshape(()) for v in logs.values()]))
        return dict(zip(logs, packed.tolist()))

    def train_step(self, batch: dict, data_wait_s: float = 0.0) -> dict[str, float]:
        """One optimisation step on this rank's share of the global batch (a batch from
        `self.data.from_step`, which waited `data_wait_s` for it); returns the step's metrics."""
        t0 = time.perf_counter()
        batch = self.data.prepare(batch)  # device-side augmentation counts as compute
        batch = {k: v.to(self.info.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        values = self.schedules.at(self.step)
        logs = self._reduce_logs(self.device_step(batch, values))
        check_finite(logs)  # after the step (no sync inside it); raises before any checkpoint is written
        dt = time.perf_counter() - t0  # after the sync above: the device work is done
        global_batch = self.cfg.train.batch_size_per_device * self.info.world_size
        row = {
            "step": self.step,
            **logs,
            **{k: values[k] for k in ("lr", "wd", "momentum", "teacher_temp")},
            "step_time_s": dt,
            "data_wait_s": data_wait_s,
            "compute_s": dt,
            "images_per_s": global_batch / (dt + data_wait_s),  # wall time, waiting included
            "peak_mem_mb": peak_memory_mb(self.info.device),
        }
        self.step += 1
        return row

    def train(self, steps: int | None = None, time_limit_s: float | None = None) -> dict[str, float]:
        """Run until `steps` total steps (default: the whole schedule) or `time_limit_s` seconds of
        training, whichever comes first; checkpoints at the end. Resumable; one writer per run folder."""
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be a positive number of total steps, got {steps}")
        with exclusive(self.out, "cellfm pretrain", enabled=self.info.is_main):
            return self._train(steps, time_limit_s)

    def _train(self, steps: int | None, time_limit_s: float | None) -> dict[str, float]:
        cfg = self.cfg
        changes = check_run(self.out, asdict(cfg), getattr(self, "resume_with_changes", None))
        resumed = self.resume()
        if self.info.is_main:
            record_run(self.out, asdict(cfg), resumed, changes)
        end = min(steps or cfg.total_iters, cfg.total_iters)
        self.meta.train()
        self.meta.teacher.eval()
        self.data = self.phases.stream_at(self.step)
        batches = self.data.from_step(self.step)
        bar = tqdm(total=end, initial=self.step, disable=not self.info.is_main, desc="pretrain", unit="step")
        last: dict[str, float] = {}
        started = time.perf_counter()
        while self.step < end:
            if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                log.info("time limit reached at step %d; saving", self.step)
                self.save()
                break
            if self.phases.stream_at(self.step) is not self.data:  # the high-resolution phase begins
                batches.close()
                self.data = self.phases.stream_at(self.step)
                batches = self.data.from_step(self.step)
                log.info("step %d: high-resolution phase, crops %s", self.step, high_res_sizes(self.cfg))
            waited = time.perf_counter()
            batch = next(batches)
            size = self.phases.global_crops_size(self.step)
            last = self.train_step(batch, time.perf_counter() - waited)
            last["global_crops_size"] = size
            wait_frac = self.data_wait.update(last["data_wait_s"], last["compute_s"], self.step)
            knn_every = cfg.evaluation.knn_every
            if knn_every and self.step % knn_every == 0:
                model = self.export_model()  # every process: FSDP gathers
                if self.info.is_main:
                    last["knn_accuracy"] = self.knn_eval(model)
            self.monitor.log(last)
            bar.set_postfix(
                loss=f"{last['loss']:.3f}",
                lr=f"{last['lr']:.2e}",
                img_s=f"{last['images_per_s']:.1f}",
                data_wait=f"{wait_frac:.0%}",
            )
            bar.update(1)
            every = cfg.train.checkpoint_every
            if (every and self.step % every == 0) or self.step == end:
                self.save()
            elif cfg.train.export_every and self.step % cfg.train.export_every == 0:
                self.export()
        self.finish_saves()
        bar.close()
        summary = summarize(self.out / BAD_DATA_LOG) if self.info.is_main else None
        if summary:
            log.warning("%s", summary)
        if self.info.is_main and self.monitor.path.is_file():
            plot_loss_curve(self.monitor.path, self.out / "loss_curve.png")
        self.monitor.close()
        return last


def pretrain(
    cfg: SSLConfig,
    sources: list[str],
    out_dir: str | Path,
    steps: int | None = None,
    time_limit_s: float | None = None,
    resume_with_changes: list[str] | None = None,
) -> dict[str, float]:
    """Train (or resume) into `out_dir`; returns the last step's metrics. A rerun with another config
    is refused unless `resume_with_changes` lists the changed keys."""
    trainer = Trainer(cfg, sources, out_dir)
    trainer.resume_with_changes = list(resume_with_changes or [])
    return trainer.train(steps, time_limit_s)


__all__ = ["Trainer", "build_schedules", "load_frozen_teacher", "pretrain"]
