"""How the SSL model is spread over processes: DDP or FSDP2 with a mixed-precision policy per module.

The student's modules are wrapped (DDP) or sharded per block (FSDP2) by `wrap_for_training`; under
FSDP the EMA teacher, the frozen distillation teacher and the student's EMA are sharded as
forward-only copies (gathered per block in the low precision, freed after each block).
"""

from __future__ import annotations

from torch import nn

from ..distributed import DistInfo, shard_forward_only, wrap_for_training
from .config import SSLConfig
from .meta_arch import SSLMetaArch


def parallelize(meta: SSLMetaArch, cfg: SSLConfig, info: DistInfo) -> dict[str, nn.Module]:
    """Shard or wrap `meta` in place for `info.world_size` processes; returns the student runners."""
    tr = cfg.train
    runners = wrap_for_training(
        dict(meta.student.items()),
        tr.distributed,
        info,
        tr.reshard_after_forward,
        precision=tr.precision,
        find_unused_parameters=meta.mask_token_unused,
    )
    if tr.distributed == "fsdp" and info.world_size > 1:
        # The EMA copy is sharded like the student (the EMA update works shard by shard); a frozen
        # distillation teacher is sharded too rather than replicated on every process.
        for copy_ in (meta.teacher, meta.student_ema):
            if copy_ is not None:
                shard_forward_only(dict(copy_.items()), info, tr.precision)
    return runners
