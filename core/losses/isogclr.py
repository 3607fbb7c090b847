"""iSogCLR (Qiu et al., ICML 2023; LibAUC GCLoss_v1 with enable_isogclr): a learned temperature per training sample.

Two views a, b of a batch of training rows `index`. Anchor i of view a has the
2B - 2 negatives [b_j, a_j]_{j != i}, cosines s_ij, its own temperature tau_i and
a moving estimate u_i of mean_j exp(s_ij / tau_i) (the robust loss's inner mean):

* u_i <- (1 - gamma) u_i + gamma mean_j exp(s_ij / tau_i), gamma = 1 on a sample's first visit;
* the loss of anchor i is -(s_i,pos - mean_j p_ij s_ij) with detached weights
  p_ij = exp(s_ij / tau_i) / u_i, so its gradient is that of tau_i log u_i;
  the batch loss is the mean over i of the view-a plus the view-b anchor's loss;
* the temperature's gradient g_i = log u_i + rho - mean_j p_ij s_ij / tau_i (the
  two views' averaged) goes through a moving average m_i <- (1 - beta) m_i + beta g_i
  and tau_i <- clip(tau_i - eta m_i, tau_min, tau_max); the stored u_i is the two views' mean.

tau, u and m are buffers of the module, one entry per training row, so they are
saved with the run's checkpoint and a resumed run continues them exactly.
Differences from LibAUC are in docs/methods.md (iSogCLR).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# LibAUC's floor under u when it divides by it.
U_FLOOR = 1e-8


class ISogCLRLoss(nn.Module):
    """`loss(view_a, view_b, index)`: `index` (B,) are the batch's rows in the training set."""

    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "none"
    indexed: ClassVar[bool] = True  # the trainer passes the rows' training-set indices

    def __init__(self, num_samples: int, tau_init: float, tau_min: float, tau_max: float, rho: float,
                 eta: float, beta: float, gamma: float) -> None:
        super().__init__()
        self.tau_init, self.tau_min, self.tau_max = tau_init, tau_min, tau_max
        self.rho, self.eta, self.beta, self.gamma = rho, eta, beta, gamma
        self.register_buffer("tau", torch.full((num_samples,), float(tau_init)))
        self.register_buffer("u", torch.zeros(num_samples))
        self.register_buffer("tau_grad", torch.zeros(num_samples))

    def forward(self, view_a: Tensor, view_b: Tensor, index: Tensor) -> Tensor:
        if view_a.shape != view_b.shape or index.shape != (len(view_a),):
            raise ValueError(f"isogclr: views {tuple(view_a.shape)}, {tuple(view_b.shape)} and index "
                             f"{tuple(index.shape)}; expected two (B, d) views and B indices")
        index = index.to(self.tau.device)
        a, b = F.normalize(view_a, dim=1), F.normalize(view_b, dim=1)
        tau = self.tau[index].to(a.dtype)[:, None]
        prior = self.u[index].to(a.dtype)[:, None]
        # the first visit's estimate is the batch's mean alone (LibAUC: gamma 1 while u is still 0)
        gamma = torch.where(prior == 0, torch.ones_like(prior), torch.full_like(prior, self.gamma))
        sides = [self._side(a, b, tau, prior, gamma), self._side(b, a, tau, prior, gamma)]
        with torch.no_grad():
            self._update(index, sides, tau)
        return (sides[0][0] + sides[1][0]).mean()

    def _side(self, anchors: Tensor, partners: Tensor, tau: Tensor, prior: Tensor, gamma: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
        """(per-anchor loss, the new estimate u, mean_j p_ij s_ij / tau_i) for anchors of one view."""
        batch = len(anchors)
        logits = torch.cat([anchors @ partners.T, anchors @ anchors.T], dim=1)  # (B, 2B): [cross | same view]
        eye = torch.eye(batch, dtype=torch.bool, device=anchors.device)
        negative = ~torch.cat([eye, eye], dim=1)
        count = 2 * (batch - 1)
        exp = torch.where(negative, torch.exp(logits.detach() / tau), 0.0)
        estimate = (1 - gamma) * prior + gamma * exp.sum(dim=1, keepdim=True) / count
        weights = exp / estimate.clamp_min(U_FLOOR)
        loss = (weights * logits).sum(dim=1) / count - logits.diagonal()
        weighted_logit = (weights * logits.detach() / tau).sum(dim=1) / count
        return loss, estimate.squeeze(1), weighted_logit

    def _update(self, index: Tensor, sides: list[tuple[Tensor, Tensor, Tensor]], tau: Tensor) -> None:
        """The moving estimates and the temperatures' step, after this batch's loss."""
        grads = [torch.log(u) + self.rho - weighted for _, u, weighted in sides]
        self.u[index] = ((sides[0][1] + sides[1][1]) / 2).to(self.u.dtype)
        moment = (1 - self.beta) * self.tau_grad[index] + self.beta * ((grads[0] + grads[1]) / 2).to(self.tau_grad.dtype)
        self.tau_grad[index] = moment
        self.tau[index] = (tau.squeeze(1).to(self.tau.dtype) - self.eta * moment).clamp(self.tau_min, self.tau_max)

    def extra_metrics(self) -> dict[str, float]:
        """The distribution of the per-sample temperatures (all training rows), reported with the evaluation."""
        return {"temperature_min": float(self.tau.min()), "temperature_median": float(self.tau.median()),
                "temperature_max": float(self.tau.max())}
