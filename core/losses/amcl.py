"""AMCL (Wang, Koniusz, Gedeon & Zheng, ECCV 2024; LeiWangR/cl): adaptive multi-head contrastive learning.

The loss owns C projection heads g_c (Linear-ReLU-Linear, as the official
SimCLR heads) on the shared trunk's embedding and one temperature network phi
(Linear-ReLU-Linear, head_dim -> temperature_hidden -> head_dim) shared by all
heads. For unit head outputs u, v of a pair its temperature is

    tau(u, v) = tau_min + (tau_max - tau_min) * sigmoid(-<phi(u), phi(v)>)

and the regulariser of a temperature is Omega(tau) = (d/2) log tau + 1/tau,
d = head_dim. Each anchor i of one view (two views, SimCLR pairing) has its
other view p as positive and the other 2B - 2 rows as negatives n, and in head c

    exact (top_k = 0):  l_i = -(s_ip / tau_ip - beta Omega_ip) + log sum_{j in {p} + N_i} exp(s_ij / tau_ij - beta Omega_ij)
    top_k = k:          l_i = -s_ip / tau_ip + mean_K s_in / tau_in + beta Omega_ip - beta sum_K (log tau_in + 1 / tau_in)

with K the k most similar negatives (the official code's top-k approximation,
`amcl/losses.py` AMCLNTXentLoss). The exact form is the maximum-likelihood
objective the paper derives: the posterior of the positive when each candidate's
likelihood is exp(s / tau - beta Omega(tau)); the top-k form is its first-order
(Jensen) bound over the hardest negatives. A head's loss is the mean over
anchors of both views (each view's mean, averaged); the heads' losses are
summed, as the official code sums them.

With `adaptive` false every pair has the temperature `temperature` and no phi
exists: then Omega is one constant that cancels in the exact form, so one head
is exactly NT-Xent (InfoNCE) on that head's output. The heads and phi are the
loss's parameters: the trainer optimises and checkpoints them with the run and
exports only the trunk. Differences from the official code: docs/methods.md (AMCL).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def omega(tau: Tensor, dim: int) -> Tensor:
    """The temperature regulariser (d/2) log tau + 1/tau: the normaliser of a Gaussian likelihood of variance tau."""
    return 0.5 * dim * torch.log(tau) + 1.0 / tau


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class AMCLLoss(nn.Module):
    """`loss(view_a, view_b)`: two (B, embedding_dim) views of the trunk's embeddings."""

    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "none"

    def __init__(self, embedding_dim: int, heads: int, head_dim: int, head_hidden: int, beta: float, tau_min: float,
                 tau_max: float, temperature_hidden: int, top_k: int, adaptive: bool, temperature: float) -> None:
        super().__init__()
        if tau_min > tau_max:
            raise ValueError(f"amcl: tau_min ({tau_min}) must be <= tau_max ({tau_max})")
        self.head_dim, self.head_hidden, self.temperature_hidden = head_dim, head_hidden, temperature_hidden
        self.beta, self.tau_min, self.tau_max = beta, tau_min, tau_max
        self.top_k, self.adaptive, self.temperature = top_k, adaptive, temperature
        self.projections = nn.ModuleList(mlp(embedding_dim, head_hidden, head_dim) for _ in range(heads))
        self.phi = mlp(head_dim, temperature_hidden, head_dim) if adaptive else None

    @property
    def heads(self) -> int:
        return len(self.projections)

    def forward(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        if view_a.shape != view_b.shape or view_a.ndim != 2 or len(view_a) < 2:
            raise ValueError(f"amcl: views {tuple(view_a.shape)} and {tuple(view_b.shape)}; expected two (B, d) views, B >= 2")
        total = view_a.new_zeros(())
        for head in self.projections:
            a, b = F.normalize(head(view_a), dim=1), F.normalize(head(view_b), dim=1)
            total = total + (self.side(a, b) + self.side(b, a)) / 2
        return total

    def temperatures(self, anchors: Tensor, refs: Tensor) -> Tensor:
        """(B, N) temperature of every (anchor, reference) pair of unit head outputs."""
        if self.phi is None:
            return torch.full((len(anchors), len(refs)), self.temperature, dtype=anchors.dtype, device=anchors.device)
        score = self.phi(anchors) @ self.phi(refs).T
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(-score)

    def side(self, anchors: Tensor, partners: Tensor) -> Tensor:
        """The mean loss of one view's anchors: positive its partner, negatives the 2B - 2 other rows of both views."""
        batch = len(anchors)
        refs = torch.cat([partners, anchors])  # column i: the positive, column B + i: the anchor itself
        sim, tau = anchors @ refs.T, self.temperatures(anchors, refs)
        eye = torch.eye(batch, dtype=torch.bool, device=anchors.device)
        positive = torch.cat([eye, torch.zeros_like(eye)], dim=1)
        negative = ~torch.cat([eye, eye], dim=1)
        s_pos, tau_pos = sim[positive], tau[positive]
        if self.top_k == 0:
            logits = sim / tau - self.beta * omega(tau, self.head_dim)
            lse = torch.logsumexp(logits.masked_fill(~(positive | negative), float("-inf")), dim=1)
            return (lse - logits[positive]).mean()
        s_neg, tau_neg = sim[negative].view(batch, -1), tau[negative].view(batch, -1)
        k = min(self.top_k, s_neg.shape[1])
        hardest = s_neg.topk(k, dim=1).indices
        s_top, tau_top = s_neg.gather(1, hardest), tau_neg.gather(1, hardest)
        reg_neg = (torch.log(tau_top) + 1.0 / tau_top).sum(dim=1)
        loss = -s_pos / tau_pos + (s_top / tau_top).mean(dim=1) + self.beta * (omega(tau_pos, self.head_dim) - reg_neg)
        return loss.mean()
