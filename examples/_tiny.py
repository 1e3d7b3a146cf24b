"""Overrides that shrink any recipe to seconds-long runs (used by the examples' --tiny flag)."""

TINY = [
    "model.size=tiny", "model.depth=2", "model.patch_size=8", "model.img_size=32",
    "augment.crops.global_crops_size=32", "augment.crops.local_crops_size=16",
    "augment.crops.local_crops_number=2", "augment.masking.patch_size=8",
    "data.field_crop_size=64", "data.crops_per_epoch=16", "data.crops_per_field=4",
    "dino.head={n_prototypes: 64, bottleneck_dim: 16, hidden_dim: 32, nlayers: 3}",
    "ibot.head={n_prototypes: 64, bottleneck_dim: 16, hidden_dim: 32, nlayers: 3}",
    "train.batch_size_per_device=4", "train.epochs=1", "train.iters_per_epoch=3", "train.checkpoint_every=3",
    "optim.warmup_epochs=0", "optim.freeze_last_layer_epochs=0", "teacher.warmup_teacher_temp_epochs=0",
]  # fmt: skip
