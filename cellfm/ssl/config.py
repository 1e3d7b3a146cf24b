"""The typed training recipe: every section of a `configs/*.yaml` file is a dataclass here.

Recipes layer over `configs/default.yaml`; an unknown or misspelt key anywhere is an error that
names the dotted key. The resolved config is saved beside every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cellfm.transforms import AugmentConfig

from ..config import apply_overrides, from_dict, merge, read_yaml_config
from ..data.workers import check_loader_settings
from ..models.config import ModelConfig
from .config_ranges import check_ranges
from .high_res import check_high_res

OFFICIAL_EPOCH_LENGTH = 1250


@dataclass
class DataConfig:
    """What the crop sampler reads from the stores (see cellfm.data.CropDataset)."""

    field_crop_size: int = 256  # region read per sample; multi-crop cuts global/local crops from it
    crops_per_epoch: int = 4096
    crops_per_field: int = 4
    level: int = 0
    weighting: str = "field"
    foreground: bool = True
    threshold: str | float = "otsu"
    min_foreground: float = 0.1
    channels: list[str] | None = None
    num_workers: int | str = 0  # or "auto": cellfm.data.workers.auto_num_workers decides
    on_bad_data: str = "skip"  # skip (count, record in bad_data.jsonl, summarise) | fail
    nan_policy: str = "error"  # NaN/Inf pixels: error | zero | skip
    curation: str | None = None  # a `cellfm curate` folder: sample kept fields / tiles with its weights
    curation_sha256: str | None = None  # filled in when resolved; a mismatch with the file is an error


@dataclass
class HeadConfig:
    n_prototypes: int = 65536
    bottleneck_dim: int = 256
    hidden_dim: int = 2048
    nlayers: int = 3


@dataclass
class DinoConfig:
    loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    # Pull the student's CLS of each image's first global crop to the teacher's CLS averaged over
    # that crop's 8 rot90 / flip views (ssl/invariance_loss.py); 0 = off, as in DINOv2. Costs one
    # extra teacher forward of 7 x B global crops per step.
    cls_invariance_weight: float = 0.0
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class IbotConfig:
    loss_weight: float = 1.0
    separate_head: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class OptimConfig:
    base_lr: float = 0.004
    scaling_rule: str = "sqrt_wrt_1024"
    min_lr: float = 1.0e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999


@dataclass
class TeacherConfig:
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    centering: str = "centering"  # or sinkhorn_knopp


@dataclass
class HighResConfig:
    """DINOv2's high-resolution adaptation: the last `iters` iterations of the schedule (lr, wd and
    teacher momentum continue) at larger crops, the positional embedding interpolated per crop size.
    Unset local / field sizes scale with global_crops_size (local rounded to the patch size)."""

    iters: int = 0  # 0: off
    global_crops_size: int = 518
    local_crops_size: int | None = None
    field_crop_size: int | None = None


@dataclass
class TrainConfig:
    batch_size_per_device: int = 64
    epochs: int = 100
    iters_per_epoch: int = OFFICIAL_EPOCH_LENGTH
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    pack_crops: bool | None = (
        None  # None: pack on CUDA only (on CPU the concatenation costs more than it saves)
    )
    # DINO/iBOT cross-entropy blockwise through the prototype layer, never holding (rows, K) logits
    # (same values; less memory and time); false: the plain DINOLoss / iBOTPatchLoss modules.
    fused_head_loss: bool = True
    checkpoint_every: int = 1250
    export_every: int = 0  # 0: export the backbone only with checkpoints and at the end
    distributed: str = "ddp"  # ddp | fsdp (only used under torchrun with more than one process)
    # FSDP: free the student's gathered parameters after forward (gather again in backward; less
    # memory, more traffic). Off: one all-gather per step, like DINOv2's SHARD_GRAD_OP.
    reshard_after_forward: bool = False
    # torch.compile the student's and teacher's backbones (whole; per block under FSDP), with
    # `compile_backend` (inductor; aot_eager traces without code generation, for debugging).
    compile: bool = False
    compile_backend: str = "inductor"
    # auto: sharded (torch.distributed.checkpoint, DIR/checkpoints/) with several processes, one
    # full-state DIR/checkpoint.pt with one; both resume on any number of processes.
    checkpoint_format: str = "auto"  # auto | sharded | full
    # Sharded checkpoints written in a background thread (training goes on once the shards are in
    # host memory; `latest` moves when the write is complete). Implies the sharded format.
    async_checkpoint: bool = False
    high_res: HighResConfig = field(default_factory=HighResConfig)
    collapse_warn_entropy: float = 0.05  # fraction of log(K) under which the teacher counts as collapsed
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """kNN evaluation during training on a labelled holdout (stores + a well CSV with labels)."""

    knn_every: int = 0  # steps between evaluations; 0 disables
    stores: list[str] | None = None
    labels_csv: str | None = None  # CSV with a `well` column and the label column
    label_column: str = "label"
    level: str = "field"  # field | tile | cell (cell needs `labels`)
    labels: str | None = None  # labels/ image name for level: cell
    k: int = 20


@dataclass
class DistillConfig:
    """Distillation: a frozen teacher (backbone + heads from a cellfm run) teaches a smaller student."""

    enabled: bool = False
    teacher_checkpoint: str | None = None
    # The paper distils without masking, iBOT on all patch tokens of the two global crops; true:
    # mask the student's global crops as in self-distillation.
    masking: bool = False


@dataclass
class SSLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    ibot: IbotConfig = field(default_factory=IbotConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> SSLConfig:
        check_loader_settings(self.data.num_workers, self.augment.device)
        check_ranges(self)
        p = self.model.patch_size
        crops = self.augment.crops
        for name, size in (
            ("global_crops_size", crops.global_crops_size),
            ("local_crops_size", crops.local_crops_size),
        ):
            if size % p:
                raise ValueError(
                    f"augment.crops.{name} = {size} is not a multiple of model.patch_size = {p} "
                    f"(DINOv2 uses 98 local crops for patch 14)"
                )
        if self.augment.masking.patch_size != p:
            raise ValueError(
                f"augment.masking.patch_size = {self.augment.masking.patch_size} must equal model.patch_size = {p}"
            )
        if self.train.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {self.train.precision!r}")
        if self.train.checkpoint_format not in ("auto", "sharded", "full"):
            raise ValueError(
                f"train.checkpoint_format must be auto, sharded or full, got {self.train.checkpoint_format!r}"
            )
        if self.train.async_checkpoint and self.train.checkpoint_format == "full":
            raise ValueError(
                "train.async_checkpoint writes sharded checkpoints; it needs checkpoint_format auto or sharded"
            )
        if self.teacher.centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(
                f"teacher.centering must be centering or sinkhorn_knopp, got {self.teacher.centering!r}"
            )
        check_high_res(self)
        if self.data.field_crop_size < crops.global_crops_size:
            raise ValueError(
                f"data.field_crop_size {self.data.field_crop_size} is smaller than the global crops "
                f"({crops.global_crops_size})"
            )
        ev = self.evaluation
        if ev.knn_every and not (ev.stores and ev.labels_csv):
            raise ValueError("evaluation.knn_every needs evaluation.stores and evaluation.labels_csv")
        if self.distillation.enabled and not self.distillation.teacher_checkpoint:
            raise ValueError(
                "distillation.enabled needs distillation.teacher_checkpoint (a cellfm run's checkpoint)"
            )
        return self

    @property
    def total_iters(self) -> int:
        return self.train.epochs * self.train.iters_per_epoch


def load_ssl_config(name_or_path: str | Path = "default", overrides: list[str] | None = None) -> SSLConfig:
    """Resolve a recipe: default.yaml, then the recipe, then `key=value` overrides; typed and checked."""
    data = read_yaml_config("default")
    if str(name_or_path) != "default":
        recipe = read_yaml_config(name_or_path)
        aug = recipe.get("augment")
        # `augment: cellpainting5` names a shipped augmentation recipe (configs/augment_<name>.yaml);
        # `augment: {recipe: nuclei1, crops: {...}}` uses one with changes.
        if isinstance(aug, str):
            aug = {"recipe": aug}
        if isinstance(aug, dict) and "recipe" in aug:
            base = read_yaml_config(f"augment_{aug.pop('recipe')}")
            recipe["augment"] = merge(base, aug)
            data["augment"] = {}
        data = merge(data, recipe)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(SSLConfig, data).validate()
