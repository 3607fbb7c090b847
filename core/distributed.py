"""Training one global batch on N ranks so that it is the computation one device would do.

The design (why it is exact for every loss and every mixing method):

* Every rank holds the same data, draws the same epoch order, the same global
  batch, the same augmentations and the same mixing partners from identically
  seeded generators: all of a step's randomness is drawn over the global batch,
  as on one device.
* Only the network's forward is split: `ShardedNet` runs each call on this rank's
  rows (`shard_rows`) and hands back the rows of all ranks (`gather_rows`, an
  all-gather whose backward sums every rank's gradient and returns this rank's
  slice). The loss, and a mixing method around it, then run on the whole global
  batch on every rank, so pair and InfoNCE negatives, labels and positives,
  Barlow Twins' cross-correlation, proxies and queues see exactly the rows one
  device sees, with no rank offsets to get wrong.
* Batch norm inside a sharded call normalises with statistics all-reduced over
  the ranks (`SyncedBatchNorm*`), so it sees the whole call's rows as on one device.
* Gradients: every rank's loss is the global loss L, so the all-gather's backward
  delivers N * dL/dz to each rank's rows and a network parameter's gradient on
  rank r is N times its share; a parameter used after the gather (a proxy, a
  method's head) has the full dL/dW on every rank. `average_gradients` takes the
  mean over ranks (DDP's reduction) and both become exactly dL/dtheta.

What is replicated (the loss, augmentation, a momentum key encoder's forward)
costs N times its work; the network's forward and backward, the dominant cost,
is split. Dropout masks are drawn per rank, so a run with model.dropout > 0 is
equal to one device in distribution only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

@dataclass(frozen=True)
class Ranks:
    """This process's place in its training group; (0, 1) when it trains alone."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_ranks() -> Ranks:
    """The process group this process belongs to (torch.distributed.run sets it up), or one rank alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


# -- rows: this rank's share of a call and everyone's rows back ------------------------


def shard_sizes(rows: int, world_size: int) -> list[int]:
    """How many of `rows` each rank takes (torch.tensor_split's split: the first ranks take one more)."""
    base, extra = divmod(rows, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_rows(x: Tensor, ranks: Ranks) -> Tensor:
    """This rank's contiguous block of x's rows: rank r's deterministic share of a global batch."""
    return torch.tensor_split(x, ranks.world_size)[ranks.rank]


class _AllGather(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient of the gathered tensor and keeps this rank's slice.

    The sum is what makes it gradient-correct: rank r's rows are used by the loss
    on every rank, so their gradient is the sum of all ranks' (lightly #1528 kept
    only the local one). Written here rather than taken from
    torch.distributed.nn.functional, which torch deprecates.
    """

    @staticmethod
    def forward(ctx: Any, part: Tensor) -> Tensor:  # type: ignore[override]
        blocks = [torch.empty_like(part) for _ in range(dist.get_world_size())]
        dist.all_gather(blocks, part.contiguous())
        ctx.rows = part.shape[0]
        return torch.cat(blocks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        rank = dist.get_rank()
        return total[rank * ctx.rows:(rank + 1) * ctx.rows]


class _AllReduce(torch.autograd.Function):
    """Sum over ranks whose backward is the same sum (each rank's input reaches every rank's output)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        total = x.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of x over the ranks, differentiable."""
    return _AllReduce.apply(x)


def gather_rows(part: Tensor, rows: int, ranks: Ranks) -> Tensor:
    """Every rank's block of rows, in rank order, with gradients flowing back to their owners.

    The blocks may differ by one row (`shard_sizes`); all-gather needs equal ones, so
    each is padded to the largest and the padding cut off after.
    """
    sizes = shard_sizes(rows, ranks.world_size)
    padded = F.pad(part, (0, 0) * (part.dim() - 1) + (0, sizes[0] - part.shape[0]))
    gathered = _AllGather.apply(padded)
    return torch.cat([gathered[r * sizes[0]:r * sizes[0] + n] for r, n in enumerate(sizes)])


_sharded_depth = 0


@contextlib.contextmanager
def _sharded_call() -> Iterator[None]:
    """Marks the forward of one rank's share: the batch norms in it synchronise their statistics."""
    global _sharded_depth
    _sharded_depth += 1
    try:
        yield
    finally:
        _sharded_depth -= 1


def sharded(fn: Callable[[Tensor], Tensor], x: Tensor, ranks: Ranks) -> Tensor:
    """fn over x's rows as one device computes it, each rank running fn on its own share."""
    with _sharded_call():
        part = fn(shard_rows(x, ranks))
    return gather_rows(part, x.shape[0], ranks)


class ShardedEncoder:
    """An `Encoder` as a mixing method uses it (hidden, embed_from, forward), each call sharded."""

    def __init__(self, encoder: nn.Module, ranks: Ranks):
        self._encoder, self._ranks = encoder, ranks

    def hidden(self, h: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        return sharded(lambda part: self._encoder.hidden(part, start, stop), h, self._ranks)

    def embed_from(self, h: Tensor, start: int = 0) -> Tensor:
        return sharded(lambda part: self._encoder.embed_from(part, start), h, self._ranks)

    def __call__(self, x: Tensor) -> Tensor:
        return sharded(self._encoder, x, self._ranks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


class ShardedNet:
    """A `TrainingNet` whose forward runs on this rank's rows and returns the global batch's outputs.

    Mixing methods take it in place of the net, so their code is the one-device code;
    anything other than a forward (parameters, blocks, training mode) is the net's own.
    """

    def __init__(self, net: nn.Module, ranks: Ranks):
        self._net, self._ranks = net, ranks
        self.encoder = ShardedEncoder(net.encoder, ranks)

    def __call__(self, h: Tensor, start: int = 0) -> Tensor:
        return sharded(lambda part: self._net(part, start), h, self._ranks)

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        """A copy of the net itself (MoCo's key encoder), which runs unsharded on the global batch."""
        return copy.deepcopy(self._net, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)


# -- batch norm over the ranks' rows ----------------------------------------------------


class _SyncedBatchNorm:
    """Batch norm that, in a sharded training forward, uses the mean and variance of all ranks' rows.

    torch's SyncBatchNorm runs on GPUs only; this one needs nothing but all-reduce
    (gloo or nccl). Sums go through `all_reduce_sum`, whose backward all-reduces
    the gradient, so the statistics' gradient reaches every
    rank's rows. Outside a sharded call (evaluation, export, a key encoder over the
    whole batch) it is the plain batch norm it replaced, with the same state dict.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (_sharded_depth and self.training and self.track_running_stats):
            return super().forward(x)  # type: ignore[misc]
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = all_reduce_sum(x.sum(dims)) / count
        centred = x - mean.reshape(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / count
        out = centred / (var.reshape(shape) + self.eps).sqrt()
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        self._track(mean.detach(), var.detach() * count / (count - 1))
        return out

    @torch.no_grad()
    def _track(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """The running statistics one device would keep (torch's momentum rule, or its cumulative average)."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var, alpha=factor)


class SyncedBatchNorm1d(_SyncedBatchNorm, nn.BatchNorm1d):
    pass


class SyncedBatchNorm2d(_SyncedBatchNorm, nn.BatchNorm2d):
    pass


_SYNCED = {nn.BatchNorm1d: SyncedBatchNorm1d, nn.BatchNorm2d: SyncedBatchNorm2d}


def synchronise_batchnorm(module: nn.Module) -> None:
    """Make every BatchNorm1d/2d in `module` a synced one, in place (state, parameters and state dict keys kept)."""
    for m in module.modules():
        synced = _SYNCED.get(type(m))
        if synced is not None:
            m.__class__ = synced


# -- class-balanced global batches --------------------------------------------------------


def class_groups(labels: Tensor, per_class: int) -> int:
    """Rows an epoch of `class_balanced_order` holds: each class's count rounded down to whole groups."""
    counts = torch.bincount(labels.long().cpu())
    return int((counts // per_class * per_class).sum())


def class_balanced_order(labels: Tensor, per_class: int, seed: int, epoch: int) -> Tensor:
    """An epoch's row order made of shuffled groups of `per_class` rows of one class.

    Cut into batches of a multiple of `per_class` rows, every class in a batch has
    at least `per_class` samples (the pair losses and Metrix need 2), on one device
    and in the global batch of N ranks alike: the order is a function of (seed,
    epoch) only, drawn the same on every rank, and rank r trains its block of each
    batch (`shard_rows`). A class's rows beyond its last whole group sit out the
    epoch; which ones changes every epoch.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    labels = labels.long().cpu()
    groups: list[Tensor] = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        rows = (labels == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)]
        groups += list(rows[:len(rows) // per_class * per_class].view(-1, per_class))
    if not groups:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([groups[i] for i in torch.randperm(len(groups), generator=g)])


# -- gradients ----------------------------------------------------------------------------


def average_gradients(parameters: list[nn.Parameter], ranks: Ranks) -> None:
    """DDP's reduction: each gradient becomes its mean over the ranks, in one flattened all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
