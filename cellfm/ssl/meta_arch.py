"""Student and EMA teacher: one training step of DINO + iBOT + KoLeo on a collated multi-crop batch.

The batch is what `cellfm.transforms.collate_multicrop` produces: `collated_global_crops` (2B, ...)
crop-major, `collated_local_crops` (n_local * B, ...), `collated_masks` (2B, N) bool. Masked-token
indices and weights are derived from the masks here, so a batch split across ranks stays consistent.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch
from torch import nn

from ..models.bag_of_channels import BagOfChannels
from .config import SSLConfig
from .dino_loss import DINOLoss, pair_terms
from .heads import DINOHead
from .ibot_loss import iBOTPatchLoss, masks_weight
from .invariance_loss import DihedralInvarianceLoss, dihedral_mean_cls
from .koleo_loss import KoLeoLoss
from .prototype_loss import SoftTargets


def trainable_backbone(backbone: nn.Module) -> nn.Module:
    """Bag-of-Channels trains its 1-channel backbone directly on 1-channel crops."""
    return backbone.backbone if isinstance(backbone, BagOfChannels) else backbone


def build_heads(cfg: SSLConfig, dim: int) -> dict[str, nn.Module]:
    d = cfg.dino.head
    heads = {"dino_head": DINOHead(dim, d.n_prototypes, d.hidden_dim, d.bottleneck_dim, d.nlayers)}
    if cfg.ibot.separate_head:
        i = cfg.ibot.head
        heads["ibot_head"] = DINOHead(dim, i.n_prototypes, i.hidden_dim, i.bottleneck_dim, i.nlayers)
    return heads


class SSLMetaArch(nn.Module):
    """`student` and `teacher` are ModuleDicts {backbone, dino_head[, ibot_head]}."""

    def __init__(self, cfg: SSLConfig, backbone: nn.Module, teacher: nn.ModuleDict | None = None):
        super().__init__()
        self.cfg = cfg
        backbone = trainable_backbone(backbone)
        self.student = nn.ModuleDict({"backbone": backbone, **build_heads(cfg, backbone.embed_dim)})
        # Self-distillation: the teacher is the student's EMA. Distillation: a frozen given teacher.
        self.distilling = teacher is not None
        self.teacher = teacher if teacher is not None else copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        # With distillation the model we keep is the student's EMA.
        self.student_ema = copy.deepcopy(self.student) if self.distilling else None
        if self.student_ema is not None:
            for p in self.student_ema.parameters():
                p.requires_grad_(False)
        self.dino_loss = DINOLoss(cfg.dino.head.n_prototypes)
        ibot_k = cfg.ibot.head.n_prototypes if cfg.ibot.separate_head else cfg.dino.head.n_prototypes
        self.ibot_loss = iBOTPatchLoss(ibot_k)
        self.koleo_loss = KoLeoLoss()
        self.invariance_loss = DihedralInvarianceLoss()
        # What the step calls: the student modules, or their DDP wrappers (set by the trainer).
        self.runners: dict[str, nn.Module] = dict(self.student.items())

    @property
    def student_masking(self) -> bool:
        """iBOT masks the student's global crops; distillation (as in the DINOv2 paper) does not by
        default and scores iBOT on every patch token of the two global crops instead."""
        return not self.distilling or self.cfg.distillation.masking

    @property
    def mask_token_unused(self) -> bool:
        """The student's mask token gets no gradient (DDP must then look for unused parameters)."""
        return not self.student_masking

    @property
    def output_model(self) -> nn.ModuleDict:
        """The model to export: the teacher (self-distillation) or the student's EMA (distillation)."""
        return self.student_ema if self.distilling else self.teacher

    # -- one step ---------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_targets(self, glob: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor, temp: float):
        t = self.teacher
        out = t["backbone"](glob, is_training=True)
        cls = out["x_norm_clstoken"]
        masked = out["x_norm_patchtokens"].flatten(0, 1)[idx]
        if "ibot_head" in t:
            cls_logits, patch_logits = t["dino_head"](cls), t["ibot_head"](masked)
        else:
            logits = t["dino_head"](torch.cat([cls, masked]))
            cls_logits, patch_logits = logits[: len(cls)], logits[len(cls) :]
        method = self.cfg.teacher.centering
        # The logits are this step's own: the centred softmax may overwrite them.
        dino_t = self.dino_loss.teacher_probs(cls_logits.float(), temp, method, inplace=True)
        ibot_t = (
            self.ibot_loss.teacher_probs(patch_logits.float(), temp, method, inplace=True)
            if len(idx)
            else None
        )
        return dino_t, ibot_t, cls

    def forward_backward(
        self, batch: dict, teacher_temp: float, scaler: torch.amp.GradScaler | None = None
    ) -> dict[str, torch.Tensor]:
        """Compute the losses on `batch`, backpropagate, and return detached logs."""
        cfg = self.cfg
        glob, local = batch["collated_global_crops"], batch["collated_local_crops"]
        masks = batch["collated_masks"].to(glob.device)
        if not self.student_masking:  # every patch token of the global crops is scored, none masked
            masks = torch.ones_like(masks)
        student_masks = masks if self.student_masking else None
        n_global = 2
        n_local = local.shape[0] // (glob.shape[0] // n_global) if local.numel() else 0
        idx, weight = _masked_tokens(batch, masks, self.student_masking)
        autocast = self._autocast(glob.device)
        with autocast:
            dino_t, ibot_t, teacher_cls = self._teacher_targets(glob, masks, idx, teacher_temp)
            backbone = self.runners["backbone"]
            pack = cfg.train.pack_crops if cfg.train.pack_crops is not None else glob.is_cuda
            if n_local:  # one call per step (DDP / FSDP hooks), packed or not
                s_glob, s_loc = backbone([glob, local], [student_masks, None], is_training=True, pack=pack)
            else:
                s_glob, s_loc = backbone(glob, student_masks, is_training=True), None
            g_cls = s_glob["x_norm_clstoken"]
            l_cls = s_loc["x_norm_clstoken"] if n_local else None
            s_masked = s_glob["x_norm_patchtokens"].flatten(0, 1)[idx]
            if cfg.train.fused_head_loss:
                head_loss, dino_global, dino_local, ibot = self._fused_head_losses(
                    g_cls, l_cls, s_masked, dino_t, ibot_t, weight / masks.shape[0], n_global
                )
            else:
                head_logits = self._head_logits(g_cls, l_cls, s_masked)
        if not cfg.train.fused_head_loss:
            g_logits, l_logits, p_logits = head_logits
            dino_global, dino_local = self.dino_loss(g_logits, l_logits, dino_t, n_global)
            ibot = (
                self.ibot_loss(p_logits, ibot_t, masks, weight)
                if ibot_t is not None
                else g_cls.new_zeros((), dtype=torch.float32)
            )
            head_loss = cfg.dino.loss_weight * (dino_global + dino_local) + cfg.ibot.loss_weight * ibot
        dino = dino_global + dino_local
        koleo = sum(self.koleo_loss(c) for c in g_cls.chunk(n_global)) * cfg.dino.koleo_loss_weight
        loss = head_loss + koleo
        invariance = None
        if cfg.dino.cls_invariance_weight > 0:
            first = glob[: glob.shape[0] // n_global]  # crop-major: each image's first global crop
            with autocast:
                target = dihedral_mean_cls(self.teacher["backbone"], first, teacher_cls[: len(first)])
            invariance = self.invariance_loss(g_cls[: len(first)], target)
            loss = loss + cfg.dino.cls_invariance_weight * invariance
        # No finiteness check here: it would stall the step on a host sync. The trainer checks the
        # logged losses after the step (`check_finite`) and stops before any checkpoint is written.
        (scaler.scale(loss) if scaler is not None else loss).backward()
        with torch.no_grad():
            k = dino_t.shape[-1]
            entropy = -(dino_t * dino_t.clamp_min(1e-12).log()).sum(-1).mean() / math.log(k)
            feats = nn.functional.normalize(g_cls.float(), dim=-1)
            feature_std = feats.std(dim=0).mean() if len(feats) > 1 else feats.new_zeros(())
        return {
            "loss": loss.detach(),
            "dino_loss": dino.detach(),
            "dino_global_loss": dino_global.detach(),
            "dino_local_loss": dino_local.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            **({"cls_invariance_loss": invariance.detach()} if invariance is not None else {}),
            "teacher_entropy": entropy,
            "feature_std": feature_std,
        }

    def _head_logits(self, g_cls, l_cls, s_masked):
        """Student prototype logits (global CLS, local CLS or None, masked patches): one head call."""
        head_in = [g_cls] + ([l_cls] if l_cls is not None else [])
        if "ibot_head" not in self.student:
            head_in.append(s_masked)
        logits = self.runners["dino_head"](torch.cat(head_in))
        parts = list(logits.split([len(t) for t in head_in]))
        l_logits = parts[1] if l_cls is not None else None
        p_logits = self.runners["ibot_head"](s_masked) if "ibot_head" in self.student else parts[-1]
        return parts[0], l_logits, p_logits

    def _fused_head_losses(self, g_cls, l_cls, s_masked, dino_t, ibot_t, ibot_row_weight, n_global):
        """(weighted DINO + iBOT total, DINO global term, DINO local term, iBOT loss) through
        `prototype_cross_entropy`, with the official normalisations: the global term is the mean
        over crops against the teacher's other view, times 2 / n_terms; each local crop is scored
        against the sum of the teacher's global views, mean over the batch, / n_terms; iBOT tokens
        carry 1 / (masked tokens in their image) / images."""
        cfg, dev = self.cfg, g_cls.device
        rows_g = len(g_cls)
        b = rows_g // n_global
        n_local = 0 if l_cls is None else len(l_cls) // b
        n_terms = pair_terms(n_global, n_local)
        dino_temp, w_dino = self.dino_loss.student_temp, cfg.dino.loss_weight
        dino = [
            SoftTargets(
                dino_t,
                torch.full((rows_g,), 2.0 / (n_terms * rows_g), device=dev),
                index=(torch.arange(rows_g, device=dev) + b) % rows_g,
                scale=w_dino,
                temp=dino_temp,
            )
        ]
        if n_local:
            dino.append(
                SoftTargets(
                    dino_t.view(n_global, b, -1).sum(0),
                    torch.full((len(l_cls),), 1.0 / (b * n_terms), device=dev),
                    index=torch.arange(len(l_cls), device=dev) % b,
                    scale=w_dino,
                    temp=dino_temp,
                )
            )
        ibot = []
        if ibot_t is not None:
            ibot = [
                SoftTargets(
                    ibot_t, ibot_row_weight, scale=cfg.ibot.loss_weight, temp=self.ibot_loss.student_temp
                )
            ]
        head_in = [g_cls] + ([l_cls] if n_local else [])
        if "ibot_head" in self.student:
            total, values = self.runners["dino_head"](torch.cat(head_in), dino)
            if ibot:
                ibot_total, ibot_values = self.runners["ibot_head"](s_masked, ibot)
                total, values = total + ibot_total, torch.cat([values, ibot_values])
        else:
            total, values = self.runners["dino_head"](
                torch.cat(head_in + ([s_masked] if ibot else [])), dino + ibot
            )
        zero = values.new_zeros(())
        return total, values[0], values[1] if n_local else zero, values[-1] if ibot else zero

    def _autocast(self, device: torch.device):
        precision = self.cfg.train.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    # -- EMA --------------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student (the student's EMA when distilling)."""
        target = self.student_ema if self.distilling else self.teacher
        t_named = dict(target.named_parameters())
        s_named = dict(self.student.named_parameters())
        if t_named.keys() != s_named.keys():
            raise RuntimeError("teacher and student parameter sets differ")
        t_params = [t_named[k] for k in sorted(t_named)]
        s_params = [s_named[k].detach() for k in sorted(t_named)]
        t_local = [_local(p) for p in t_params]
        s_local = [_local(p) for p in s_params]
        torch._foreach_mul_(t_local, momentum)
        torch._foreach_add_(t_local, s_local, alpha=1 - momentum)


def _masked_tokens(batch: dict, masks: torch.Tensor, masking: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the scored patch tokens and their iBOT weights (1 / scored tokens in their
    image), without a host sync: the collator's (computed on the host) when the batch has them, or
    every token when nothing is masked; `nonzero` on device masks (a sync on CUDA) otherwise."""
    if not masking:
        n = masks.shape[-1]
        return torch.arange(masks.numel(), device=masks.device), masks.new_full(
            (masks.numel(),), 1.0 / n, dtype=torch.float32
        )
    if "mask_indices_list" in batch and "masks_weight" in batch:
        return batch["mask_indices_list"].to(masks.device), batch["masks_weight"].to(masks.device)
    return masks.flatten().nonzero().flatten(), masks_weight(masks)


def check_finite(logs: dict[str, float]) -> None:
    """Raise FloatingPointError naming the loss terms when the step's loss is not finite."""
    if not math.isfinite(logs["loss"]):
        terms = ", ".join(
            f"{k.removesuffix('_loss')} {logs[k]:.4g}" for k in ("dino_loss", "ibot_loss", "koleo_loss")
        )
        raise FloatingPointError(
            f"non-finite loss ({terms}); lower the learning rate or use fp32/bf16; "
            "the last checkpoint is left intact"
        )


def _local(p: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor parameter, or the tensor itself."""
    return p.to_local() if hasattr(p, "to_local") else p
