"""Prediction heads trained jointly with the encoder: classification (cross-entropy) and regression (MSE).

They are the base objectives of the classification and regression mixing runs
(Decoupled Mixup, RankMixup, MixOE; C-Mixup). The head is part of the loss module,
so it is trained and checkpointed with the run but never exported: the exported
model is the encoder alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossEntropyLoss(nn.Module):
    """Linear head with bias on the (unnormalised) embedding, softmax cross-entropy.

    `loss(embeddings, labels)` with int labels (B,), or soft targets (B, C) whose
    rows sum to 1 (mixed labels); `logits(embeddings)` for methods and metrics.
    """

    two_view: ClassVar[bool] = False
    labels: ClassVar[str] = "class"

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_dim, num_classes)

    def logits(self, embeddings: Tensor) -> Tensor:
        return self.head(embeddings)

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        logits = self.logits(embeddings)
        if target.dtype.is_floating_point:
            return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        return F.cross_entropy(logits, target)


class MSELoss(nn.Module):
    """Linear head predicting a scalar target, MSE on targets standardised by the training set.

    Standardising keeps the loss scale independent of the target's units (diabetes
    targets are in the hundreds); `fit_targets` is called once by the loop.
    """

    two_view: ClassVar[bool] = False
    labels: ClassVar[str] = "target"

    def __init__(self, embedding_dim: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_dim, 1)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def fit_targets(self, targets: Tensor) -> None:
        self.target_mean.copy_(targets.float().mean())
        self.target_std.copy_(targets.float().std().clamp_min(1e-8))

    def predict(self, embeddings: Tensor) -> Tensor:
        """Predictions in the target's own units."""
        return self.head(embeddings).squeeze(-1) * self.target_std + self.target_mean

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        standardised = (target.float() - self.target_mean) / self.target_std
        return F.mse_loss(self.head(embeddings).squeeze(-1), standardised)
