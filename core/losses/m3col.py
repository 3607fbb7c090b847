"""M3CoL (Kumar, Singhal et al., ICLR 2025; RaghavSinghal10/M3CoL): multimodal mixup contrastive learning.

Two modalities of every sample, one encoder each. With z_a, z_b the two
encoders' (unnormalised) embeddings of a batch of B samples and labels y, the
loss is, as `model/model_med.py` MMC_Med.forward sums it,

    CE(head_a(z_a), y) + CE(head_b(z_b), y) + CE(head_ab([z_a, z_b]), y) + weight * C

with one linear head per modality and one on the concatenation (the fusion
head, which the official code classifies with at inference). The contrastive
term C switches once, by epoch, as `train_image_text.py` does:

* epochs e < int(mixco_fraction * epochs): M3Co. Each modality's embeddings are
  mixed (`mixco_text`): a share `mix_share` of the rows, chosen at random
  (U[0, 1) <= mix_share), become beta_i z_i + (1 - beta_i) z_perm(i) with
  beta_i ~ Beta(alpha, alpha) and one random permutation; the other rows keep
  beta_i = 1. The mixed rows are contrasted with the other modality's unmixed
  embeddings (`mixco_nce`): logits s = norm(mix) norm(fixed)^T / temperature,
  soft targets P with P_ii = beta_i and P_i,perm(i) = 1 - beta_i, the loss
  (-(log_softmax(s) * P).sum(1).mean() + -(log_softmax(s^T) * P^T).sum(1).mean()) / 2,
  both modalities mixed in turn: C = nce(mix(z_a), z_b) + nce(mix(z_b), z_a).
* later epochs: SoftClip (`soft_clip_loss`), the cross-modal loss whose soft
  targets are the fixed modality's own similarity structure:
  C = soft_clip(z_a, z_b) + soft_clip(z_b, z_a) at `soft_clip_temperature`.

beta_i = 1 for every row makes P the identity: M3Co is then the unmixed
cross-modal (CLIP) loss. The second encoder and the heads are parameters of this
module, so the trainer optimises and checkpoints them with the run; the export
carries both encoders (`core.export`), never the heads. Departures from the
official code: docs/methods.md (M3CoL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MixDraw:
    """One modality's mixing draw: the partner permutation and each row's beta (1 for rows left unmixed)."""

    perm: Tensor
    betas: Tensor

    def mix(self, z: Tensor) -> Tensor:
        """beta_i z_i + (1 - beta_i) z_perm(i), row by row; a row with beta 1 is left as it is."""
        b = self.betas.to(z.dtype).unsqueeze(1)
        return b * z + (1 - b) * z[self.perm]


def draw_mix(batch: int, alpha: float, share: float, gen: torch.Generator) -> MixDraw:
    """The official `mixco_text` draw from the run's generator: permutation, Beta(alpha, alpha), then the rows mixed."""
    from embedmix.core.mixup.mixing import sample_beta, uniform  # core.mixup imports core.losses: import at call

    perm = torch.randperm(batch, generator=gen, device=gen.device)
    betas = sample_beta(alpha, alpha, batch, gen, torch.float64)
    mixed = uniform(batch, gen) <= share
    return MixDraw(perm, torch.where(mixed, betas, torch.ones_like(betas)))


def soft_targets(draw: MixDraw, dtype: torch.dtype) -> Tensor:
    """P: beta_i on (i, i), 1 - beta_i on (i, perm(i)); a row whose partner is itself gets 1 there."""
    batch = len(draw.perm)
    rows = torch.arange(batch, device=draw.perm.device)
    betas = draw.betas.to(dtype)
    targets = torch.diag(betas)
    return targets.index_put((rows, draw.perm), 1 - betas, accumulate=True)


def mixco_nce(mixed: Tensor, fixed: Tensor, draw: MixDraw, temperature: float) -> Tensor:
    """Soft-target cross-modal InfoNCE of mixed rows against the other modality, both directions averaged."""
    logits = F.normalize(mixed, dim=-1) @ F.normalize(fixed, dim=-1).T / temperature
    targets = soft_targets(draw, logits.dtype)
    forward = -(logits.log_softmax(-1) * targets).sum(-1).mean()
    backward = -(logits.T.log_softmax(-1) * targets.T).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip(preds: Tensor, targs: Tensor, temperature: float) -> Tensor:
    """SoftClip: cross-modal logits against the targets' own softmax similarity, both directions averaged."""
    preds, targs = F.normalize(preds, dim=-1), F.normalize(targs, dim=-1)
    targets = (targs @ targs.T / temperature).softmax(-1)
    logits = preds @ targs.T / temperature
    forward = -(logits.log_softmax(-1) * targets).sum(-1).mean()
    backward = -(logits.T.log_softmax(-1) * targets).sum(-1).mean()
    return (forward + backward) / 2


class M3CoLLoss(nn.Module):
    """`loss(z_a, z_b, labels, epoch=, epochs=)`: the two modalities' (B, d) embeddings of one batch."""

    two_view: ClassVar[bool] = False
    labels: ClassVar[str] = "class"
    modalities: ClassVar[int] = 2

    def __init__(self, num_classes: int, embedding_dim: int, weight: float, temperature: float, alpha: float,
                 mix_share: float, mixco_fraction: float, soft_clip_temperature: float) -> None:
        super().__init__()
        self.weight, self.temperature, self.alpha, self.mix_share = weight, temperature, alpha, mix_share
        self.mixco_fraction, self.soft_clip_temperature = mixco_fraction, soft_clip_temperature
        self.heads = nn.ModuleList(nn.Linear(embedding_dim, num_classes) for _ in range(2))
        self.fusion = nn.Linear(2 * embedding_dim, num_classes)
        self.second: nn.Module | None = None
        self.gen: torch.Generator | None = None

    def use_second_encoder(self, encoder: nn.Module) -> None:
        """The second modality's encoder: trained, checkpointed (in this module's state) and exported with the run."""
        self.second = encoder

    def use_generator(self, gen: torch.Generator) -> None:
        """The run's generator, for M3Co's draws (a resumed run continues them bit-exactly)."""
        self.gen = gen

    def uses_mixco(self, epoch: int, epochs: int) -> bool:
        """M3Co in epochs e < int(mixco_fraction * epochs), SoftClip after: the official switch, by epoch."""
        return epoch < int(self.mixco_fraction * epochs)

    def fusion_logits(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return self.fusion(torch.cat([z_a, z_b], dim=-1))

    def heads_loss(self, z_a: Tensor, z_b: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of each modality's head and of the fusion head."""
        logits = [self.heads[0](z_a), self.heads[1](z_b), self.fusion_logits(z_a, z_b)]
        return sum(F.cross_entropy(out, labels) for out in logits)

    def mixco(self, z_a: Tensor, z_b: Tensor, draws: tuple[MixDraw, MixDraw]) -> Tensor:
        """M3Co: each modality mixed in turn, contrasted with the other's unmixed embeddings."""
        return (mixco_nce(draws[0].mix(z_a), z_b, draws[0], self.temperature)
                + mixco_nce(draws[1].mix(z_b), z_a, draws[1], self.temperature))

    def soft_clip(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return soft_clip(z_a, z_b, self.soft_clip_temperature) + soft_clip(z_b, z_a, self.soft_clip_temperature)

    def contrastive(self, z_a: Tensor, z_b: Tensor, epoch: int, epochs: int) -> Tensor:
        if not self.uses_mixco(epoch, epochs):
            return self.soft_clip(z_a, z_b)
        if self.gen is None:
            raise RuntimeError("m3col: M3Co draws from the run's generator; call use_generator first")
        draws = (draw_mix(len(z_a), self.alpha, self.mix_share, self.gen),
                 draw_mix(len(z_b), self.alpha, self.mix_share, self.gen))
        return self.mixco(z_a, z_b, draws)

    def forward(self, z_a: Tensor, z_b: Tensor, labels: Tensor, *, epoch: int, epochs: int) -> Tensor:
        if z_a.shape != z_b.shape or z_a.ndim != 2 or len(z_a) < 2:
            raise ValueError(f"m3col: embeddings {tuple(z_a.shape)} and {tuple(z_b.shape)}; expected two (B, d), B >= 2")
        loss = self.heads_loss(z_a, z_b, labels)
        if self.weight == 0:
            return loss  # the heads alone (the paper's ablation without the contrastive term): nothing is drawn
        return loss + self.weight * self.contrastive(z_a, z_b, epoch, epochs)
