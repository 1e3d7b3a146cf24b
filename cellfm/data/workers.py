"""How many data-loading workers a training process gets, and where it augments: decided here only."""

from __future__ import annotations

import os

MAX_AUTO_WORKERS = 8  # the host side only reads raw regions on GPUs: a few workers per device suffice
AUGMENT_DEVICES = ("auto", "cpu", "cuda", "device")


def cores_per_local_rank() -> int:
    """CPU cores this process may use (its affinity mask) shared among the node's training processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cores // max(1, local))


def auto_num_workers(device_type: str) -> int:
    """``data.num_workers: auto``: on CUDA one core per rank stays with the training loop and the
    rest read data (at most MAX_AUTO_WORKERS); on CPU 0, since the step itself uses every core."""
    if device_type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cores_per_local_rank() - 1))


def resolve_num_workers(setting: int | str, device_type: str) -> int:
    """The worker count for a `data.num_workers` setting (an int >= 0 or "auto")."""
    check_loader_settings(setting, "auto")
    return auto_num_workers(device_type) if setting == "auto" else int(setting)


def resolve_augment_device(setting: str, device_type: str) -> str:
    """ "cpu" (per sample, in the workers) or "batched" (on the training device) for `augment.device`."""
    check_loader_settings(0, setting)
    if setting == "cuda" and device_type != "cuda":
        raise ValueError(
            f"augment.device: cuda, but training runs on {device_type}; use augment.device: auto "
            f"(or device, to run the batched augmentation on the {device_type})"
        )
    if setting == "auto":
        return "batched" if device_type == "cuda" else "cpu"
    return "cpu" if setting == "cpu" else "batched"


def check_loader_settings(num_workers: int | str, augment_device: str) -> None:
    """Raise naming the key on a bad `data.num_workers` or `augment.device`."""
    if not (num_workers == "auto" or (isinstance(num_workers, int) and num_workers >= 0)):
        raise ValueError(f"data.num_workers must be an integer >= 0 or 'auto', got {num_workers!r}")
    if augment_device not in AUGMENT_DEVICES:
        raise ValueError(f"augment.device must be one of {AUGMENT_DEVICES}, got {augment_device!r}")
