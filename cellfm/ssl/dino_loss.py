"""DINO loss: cross-entropy between sharpened teacher probabilities and student log-probabilities
of the CLS tokens, over every (student crop, teacher global crop) pair of different views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .teacher_targets import TeacherTargetLoss


def pair_terms(n_global: int, n_local_chunks: int) -> int:
    """The official normaliser of the DINO loss: the number of (student crop, teacher view) pairs."""
    return (n_global - 1) * n_global + max(n_local_chunks * n_global, 1)


class DINOLoss(TeacherTargetLoss):
    def cross_entropy(
        self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]
    ) -> torch.Tensor:
        """-sum over pairs of mean_b sum_k t log softmax(s / T_s)."""
        total = student_logits[0].new_zeros(())
        for s in student_logits:
            lsm = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for t in teacher_probs:
                total = total - (t * lsm).sum(dim=-1).mean()
        return total

    def forward(
        self,
        student_global: torch.Tensor,
        student_local: torch.Tensor | None,
        teacher_probs: torch.Tensor,
        n_global: int = 2,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(global term, local term), each divided by the number of pairs as the official code does.

        `student_global` is (n_global * B, K) crop-major; `teacher_probs` the same layout, computed from
        the teacher's global crops. Global crops are compared to the teacher's *other* view (swap);
        the global term is multiplied by 2 like the official code. Local crops are compared with
        every teacher global crop.
        """
        n_local_chunks = (
            0 if student_local is None else len(student_local) // (len(student_global) // n_global)
        )
        n_terms = pair_terms(n_global, n_local_chunks)
        teacher_chunks = list(teacher_probs.chunk(n_global))
        swapped = torch.cat(teacher_chunks[1:] + teacher_chunks[:1]) if n_global > 1 else teacher_probs
        global_term = self.cross_entropy([student_global], [swapped]) * 2 / n_terms
        if not n_local_chunks:
            return global_term, global_term.new_zeros(())
        local_term = self.cross_entropy(list(student_local.chunk(n_local_chunks)), teacher_chunks) / n_terms
        return global_term, local_term
