"""What a run directory is: its accepted config (`config.yaml`) and that config's hash (`run.json`).

A rerun into a directory holding a checkpoint must use the same config, except for keys that do not
change what is trained (checkpoint/export cadence, logging, loader processes) and keys the user lists
with `--resume-with-changes`. Nothing is written before the config is accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text, remove_stale_temps
from .checkpointing import CHECKPOINT, save_config
from .metrics_log import truncate_after

log = logging.getLogger("cellfm.pretrain")
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
# Keys that say how a run is watched or saved, not what it computes.
NOT_IDENTITY = (
    "train.checkpoint_every",
    "train.export_every",
    "train.tensorboard",
    "train.collapse_warn_entropy",
    "data.num_workers",
    "evaluation.knn_every",
)


class ConfigChanged(ValueError):
    """A rerun whose config differs from the run directory's in keys not accepted as changes."""


def config_hash(cfg: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _covered(key: str, allowed: list[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allowed)


def recorded_config(out: Path) -> dict[str, Any] | None:
    """The accepted config of a run directory, or None for a new one."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigChanged(f"{path}: cannot be read ({err}); restore it or use another --output") from err
    if not isinstance(cfg, dict):
        raise ConfigChanged(f"{path}: expected a mapping, found {type(cfg).__name__}")
    return cfg


def check_run(
    out: str | Path, cfg: dict[str, Any], resume_with_changes: list[str] | None = None
) -> list[str]:
    """Refuse a config that differs from the run's (when it has a checkpoint); returns accepted changes."""
    out = Path(out)
    allowed = [k.strip() for k in (resume_with_changes or []) if k.strip()]
    known = flatten(cfg)
    unknown = [a for a in allowed if not any(_covered(k, [a]) for k in known)]
    if unknown:
        raise ConfigChanged(f"--resume-with-changes names unknown config keys {unknown}")
    cfg = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False))  # compare as config.yaml stores it
    old = recorded_config(out)
    if old is None or not (out / CHECKPOINT).is_file():
        return []
    changed = [k for k in changed_keys(old, cfg) if not _covered(k, list(NOT_IDENTITY))]
    refused = [k for k in changed if not _covered(k, allowed)]
    if refused:
        a, b = flatten(old), flatten(cfg)
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in refused[:8])
        raise ConfigChanged(
            f"{out}: this run was trained with another config ({detail}); resume with the same config, "
            f"pass --resume-with-changes {','.join(refused)} to continue with the changes, or use another "
            "--output"
        )
    if changed:
        log.warning("%s: resuming with accepted config changes %s", out, changed)
    return changed


def record_run(out: str | Path, cfg: dict[str, Any], resumed: bool, changes: list[str]) -> None:
    """After acceptance: clear leftovers of killed writes, save config.yaml and run.json (main process)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    if not resumed:  # no checkpoint: rows of an earlier attempt killed before its first checkpoint go
        truncate_after(out / "metrics.jsonl", 0)
    run_file = out / RUN_FILE
    history = []
    if run_file.is_file():
        try:
            history = json.loads(run_file.read_text()).get("history", [])
        except ValueError:
            log.warning("%s: unreadable; starting a new history", run_file)
    digest = config_hash(cfg)
    if not history or history[-1].get("config_sha256") != digest:
        history.append({"config_sha256": digest, "accepted_changes": changes})
    save_config(out, cfg)
    atomic_write_text(run_file, json.dumps({"config_sha256": digest, "history": history}, indent=1))
