"""MoCo v2 and MoCHi (hard negative mixing) on top of the engine's NT-Xent loss.

MoCo v2 (He et al. 2020; Chen et al. 2020): the query is the training net's
output for one view, the key is a momentum (EMA) copy of the net applied to the
other view, detached. The loss is InfoNCE of each query against its own key
(the positive) and a queue of past keys (the negatives), temperature from the
ntxent loss's parameters:

    -log( e^{q.k+/tau} / (e^{q.k+/tau} + sum_{n in queue} e^{q.n/tau}) ).

It is the ntxent loss with references = [keys of the batch; queue] and
PairWeights of two blocks: batch keys (pos = identity, neg = 0: as in MoCo, the
other keys of the batch are not negatives) and queue (pos = 0, neg = 1). Since
the B x B block carries nothing but each query's own key, :func:`moco_infonce`
computes it as cross-entropy over [own key; queue] with the key as class 0,
without the B x (B + K) weights (the tests check the two agree). After the loss the batch's keys replace the oldest queue entries. The key
encoder is updated after every optimizer step, theta_k <- m theta_k + (1 - m)
theta_q, on parameters only; its BatchNorm statistics come from its own forward
passes in train mode (single device, so no shuffle-BN). Queue, pointer and key
encoder are state of this module, so they are checkpointed with the run and a
resume is bit-exact.

MoCHi (Kalantidis et al. 2020): per query, take the `n_hard` queue negatives
most similar to it; make `s` synthetic negatives normalise(a n_i + (1-a) n_j),
a ~ U(0, 1), n_i, n_j drawn uniformly (independently) from the hard set, and
`s_prime` synthetic negatives normalise(b q + (1-b) n_j), b ~ U(0, 0.5). They
are detached and join only their own query's denominator (per-query logits,
O(B x (s + s')) memory rather than a block-diagonal (B, B x (s + s')) weight
matrix), and are never enqueued. With s = s' = 0 MoCHi is MoCo exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import uniform
from embedmix.core.models import TrainingNet

_KEY = "key_net."


@torch.no_grad()
def hard_negative_mixes(query: Tensor, queue: Tensor, n_hard: int, s: int, s_prime: int,
                        gen: torch.Generator) -> Tensor:
    """MoCHi's synthetic negatives per query, (B, s + s_prime, d), unit norm and detached.

    `query` (B, d) and `queue` (K, d) must be L2-normalised. The first s rows of
    each query mix two of its n_hard hardest queue negatives, the last s_prime mix
    the query itself (weight b < 0.5) with one of them.
    """
    q = query.detach()
    b, d = q.shape
    n = min(n_hard, queue.shape[0])
    hard_idx = (q @ queue.T).topk(n, dim=1).indices  # (B, n), hardest first
    hard = queue[hard_idx]  # (B, n, d)
    parts = []
    if s > 0:
        i = torch.randint(n, (b, s), generator=gen, device=gen.device)
        j = torch.randint(n, (b, s), generator=gen, device=gen.device)
        a = uniform((b, s, 1), gen, q.dtype)
        ni = torch.gather(hard, 1, i.unsqueeze(-1).expand(b, s, d))
        nj = torch.gather(hard, 1, j.unsqueeze(-1).expand(b, s, d))
        parts.append(F.normalize(a * ni + (1 - a) * nj, dim=-1))
    if s_prime > 0:
        j = torch.randint(n, (b, s_prime), generator=gen, device=gen.device)
        beta = 0.5 * uniform((b, s_prime, 1), gen, q.dtype)
        nj = torch.gather(hard, 1, j.unsqueeze(-1).expand(b, s_prime, d))
        parts.append(F.normalize(beta * q.unsqueeze(1) + (1 - beta) * nj, dim=-1))
    if not parts:
        return q.new_zeros(b, 0, d)
    return torch.cat(parts, dim=1)


def moco_infonce(temperature: float, query: Tensor, keys: Tensor, queue: Tensor, extra: Tensor | None) -> Tensor:
    """Mean over queries of -log softmax at the own key, over [own key; queue; own extra negatives].

    `keys` (B, d) and `queue` (K, d) unit-norm; `extra` (B, S, d) unit-norm
    negatives of each query alone (MoCHi's), or None.
    """
    anchors = F.normalize(query, dim=1)
    logits = [(anchors * keys.to(anchors.dtype)).sum(dim=1, keepdim=True), anchors @ queue.to(anchors.dtype).T]
    if extra is not None:
        logits.append(torch.einsum("bd,bsd->bs", anchors, extra.to(anchors.dtype)))
    target = torch.zeros(len(anchors), dtype=torch.long, device=anchors.device)
    return F.cross_entropy(torch.cat(logits, dim=1) / temperature, target)


class MoCo(MixingMethod):
    """MoCo v2: momentum key encoder + queue of negatives; InfoNCE at the ntxent loss's temperature."""

    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not hasattr(base_loss, "temperature"):
            raise ValueError(f"{spec.mixup.method} needs the ntxent loss (its temperature); got {type(base_loss).__name__}")
        p = spec.mixup.params
        self.queue_size = int(p["queue_size"])
        self.momentum = float(p["momentum"])
        # A random unit-norm queue to start with, as MoCo does; seeded by the run's seed so
        # it does not depend on (or move) the global RNG.
        g = torch.Generator().manual_seed(spec.train.seed + 7919)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, embedding_dim, generator=g), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # The key encoder is a copy of the training net made at the first batch (the method is
        # built before it sees the net); a checkpoint loaded before then is held until that moment.
        self.register_module("key_net", None)
        self._pending_key_state: dict[str, Tensor] | None = None

    # -- key encoder -----------------------------------------------------------------
    def _key_encoder(self, net: TrainingNet) -> nn.Module:
        if self.key_net is None:
            key = copy.deepcopy(net)
            for p in key.parameters():
                p.requires_grad_(False)
            if self._pending_key_state is not None:
                key.load_state_dict(self._pending_key_state)
                self._pending_key_state = None
            self.key_net = key
        self.key_net.train(net.training)
        return self.key_net

    @torch.no_grad()
    def after_step(self, net: TrainingNet) -> None:
        if self.key_net is None:
            return
        keys, queries = list(self.key_net.parameters()), [p.detach() for p in net.parameters()]
        torch._foreach_mul_(keys, self.momentum)  # two batched kernels, not two per tensor
        torch._foreach_add_(keys, queries, alpha=1.0 - self.momentum)

    # -- checkpoint (the key encoder may not exist yet when a checkpoint is loaded) ------
    def state_dict(self, *args: Any, **kwargs: Any):
        out = super().state_dict(*args, **kwargs)
        if self.key_net is None and self._pending_key_state is not None:
            prefix = kwargs.get("prefix", "")
            for k, v in self._pending_key_state.items():
                out[prefix + _KEY + k] = v
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.key_net is not None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        key_state = {k[len(_KEY):]: v for k, v in state_dict.items() if k.startswith(_KEY)}
        self._pending_key_state = key_state or None
        own = {k: v for k, v in state_dict.items() if not k.startswith(_KEY)}
        return super().load_state_dict(own, strict=strict, assign=assign)

    # -- queue -------------------------------------------------------------------------
    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        keys = keys.detach().to(self.queue.dtype)[-self.queue_size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % self.queue_size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % self.queue_size)

    # -- loss --------------------------------------------------------------------------
    def queries_and_keys(self, net: TrainingNet, batch: Batch) -> tuple[Tensor, Tensor]:
        """q = net(view 1) with gradient; k = normalise(key_net(view 2)), no gradient."""
        v1, v2 = batch.view(), batch.view()
        key_net = self._key_encoder(net)
        q = net(v1).float()
        with torch.no_grad():
            k = F.normalize(key_net(v2).float(), dim=1)
        return q, k

    def synthetic(self, q: Tensor, queue: Tensor, gen: torch.Generator) -> Tensor | None:
        return None

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        q, k = self.queries_and_keys(net, batch)
        queue = self.queue.clone()  # the loss sees the queue before this batch's keys go in
        extra = self.synthetic(F.normalize(q.detach(), dim=1), queue, batch.gen)
        loss = moco_infonce(self.base_loss.temperature, q, k, queue, extra)
        self._enqueue(k)
        return loss


class MoCHi(MoCo):
    """MoCo v2 plus per-query synthetic hard negatives (detached) in the denominator."""

    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        p = spec.mixup.params
        self.n_hard, self.s, self.s_prime = int(p["n_hard"]), int(p["s"]), int(p["s_prime"])

    def synthetic(self, q: Tensor, queue: Tensor, gen: torch.Generator) -> Tensor | None:
        if self.s == 0 and self.s_prime == 0:
            return None
        return hard_negative_mixes(q, queue, self.n_hard, self.s, self.s_prime, gen)

