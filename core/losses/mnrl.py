"""Multiple negatives ranking loss (MNRL): in-batch softmax from each anchor to its own positive.

For a batch of pairs (a_i, p_i), anchor i scores every positive of the batch by
s_ij = scale * cos(a_i, p_j) and the loss is the cross-entropy of picking j = i:
mean_i -log(e^{s_ii} / sum_j e^{s_ij}). Every other pair's positive is a
negative, so no negatives have to be mined. It differs from NT-Xent's two-view
form (``infonce.NTXentLoss``), which is symmetric and also counts the other
anchors as negatives. ``scale`` is 1 / temperature; 20 is the usual default
(Henderson et al. 2017, sentence-transformers' MultipleNegativesRankingLoss).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultipleNegativesRankingLoss(nn.Module):
    """``loss(anchors, positives)``: two (B, d) embedding batches, row i of each a pair."""

    name = "mnrl"
    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "none"

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        if anchors.shape != positives.shape:
            raise ValueError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} must pair up row by row")
        logits = self.scale * F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T
        return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))
