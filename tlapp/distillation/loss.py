"""The knowledge-distillation loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the softmax of ``logits / temperature`` over the last dimension.

    q_i = exp(z_i / T) / sum_j exp(z_j / T). T = 1 is the ordinary softmax; a higher T spreads
    probability over the less likely classes, which shows the student how the teacher ranks
    the wrong classes.
    """
    return (logits / temperature).softmax(-1)


class DistillationLoss(nn.Module):
    """The weighted sum of the label loss and the teacher-matching loss.

    loss = alpha * CE(y, softmax(z_s)) + (1 - alpha) * T^2 * KL(p || q)

    where z_s are the student's logits, y the true labels, p = soft_targets(teacher logits, T),
    q = soft_targets(z_s, T) and KL(p || q) = sum_i p_i (log p_i - log q_i). Both terms are
    averaged over the batch. ``alpha = 1`` trains on the labels alone and needs no teacher logits.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        self.temperature = temperature
        self.alpha = alpha

    def soft_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Return T^2 * KL(p || q), averaged over the batch."""
        T = self.temperature
        log_q = F.log_softmax(student_logits / T, dim=-1)
        log_p = F.log_softmax(teacher_logits / T, dim=-1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        # The gradient of KL(p || q) with respect to z_s is (q - p) / T, and for large T that
        # difference itself shrinks as 1/T, so the gradient scales as 1/T^2. Multiplying by T^2
        # keeps the soft term's weight against the label term about the same as T changes.
        return kl * T * T

    def forward(
        self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        hard = F.cross_entropy(student_logits, labels)
        if self.alpha == 1.0:
            return hard
        if teacher_logits is None:
            raise ValueError("teacher_logits are required when alpha < 1")
        return self.alpha * hard + (1.0 - self.alpha) * self.soft_term(student_logits, teacher_logits)
