"""Cached contrastive losses (GradCache): the gradient of a large batch with the memory of a chunk.

A contrastive loss couples every sample of the batch with every other one, so the
plain way to train with B = 16,384 keeps the activations of all 16,384 forward
passes alive until the backward. GradCache (Gao et al., "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup", 2021) splits the step in three:

1. embed the batch chunk by chunk without building a graph;
2. compute the loss on the (B, d) embeddings and its gradient with respect to them;
3. embed each chunk again, now with a graph, and backpropagate that chunk's slice
   of the embedding gradient into the model.

By the chain rule the parameter gradients are exactly those of the plain loss,
provided step 3 recomputes the same embeddings as step 1: the random state
(dropout) is replayed per chunk, and normalisation buffers (BatchNorm running
statistics) are restored after step 1 so that they are updated once, in step 3.
BatchNorm normalises each chunk with that chunk's statistics, as data-parallel
training without synchronised BN does; models without batch-coupled layers get
the plain loss's gradient exactly.

Step 2 is itself O(B^2): for the softmax-over-similarities losses (supcon, ntxent,
decoupled_softmax: `SoftmaxPairLoss`) it runs over row blocks of anchors, each
against all references, so its memory is O(block x B) rather than O(B^2). Other
losses compute step 2 on the whole embedding matrix at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .infonce import SoftmaxPairLoss
from .pairs import PairWeights


def block_weights(labels: Tensor, lo: int, hi: int) -> PairWeights:
    """0/1 weights of anchors labels[lo:hi] against all rows, self-pairs excluded: rows lo..hi of `from_labels(labels)`."""
    same = labels[lo:hi, None] == labels[None, :]
    pos = same.float()
    rows = torch.arange(hi - lo, device=labels.device)
    pos[rows, rows + lo] = 0.0
    return PairWeights(pos, 1.0 - same.float())


def _blocked_softmax_loss(loss: SoftmaxPairLoss, z: Tensor, labels: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Loss value and d loss / d z, row block by row block of anchors; peak memory O(block x N)."""
    unit = F.normalize(z, dim=1).detach().requires_grad_()
    total = torch.zeros((), dtype=z.dtype, device=z.device)
    count = torch.zeros((), dtype=z.dtype, device=z.device)
    for lo in range(0, len(z), block):
        hi = min(lo + block, len(z))
        block_total, block_count = loss.pair_sums(unit[lo:hi], unit, block_weights(labels, lo, hi).like(unit))
        block_total.backward()
        total += block_total.detach()
        count += block_count
    scale = 1.0 / count if count > 0 else torch.zeros_like(count)
    z_leaf = z.detach().requires_grad_()
    F.normalize(z_leaf, dim=1).backward(unit.grad * scale)
    return total * scale, z_leaf.grad


def embedding_loss_grad(loss: nn.Module, z: Tensor, labels: Tensor | None, block: int) -> tuple[Tensor, Tensor]:
    """The loss of embeddings `z` (N, d) and its gradient with respect to `z`.

    `labels` (N,) are the rows' classes; None means `z` is two views stacked,
    [view a; view b], each row's positive being its other view (the loss's
    `loss(view_a, view_b)` form). Parameters of the loss module itself (proxies,
    heads) receive their gradient here too.
    """
    with torch.enable_grad():
        if isinstance(loss, SoftmaxPairLoss):
            rows = labels if labels is not None else torch.arange(len(z) // 2, device=z.device).repeat(2)
            return _blocked_softmax_loss(loss, z, rows, block)
        leaf = z.detach().requires_grad_()
        value = loss(*leaf.chunk(2)) if labels is None else loss(leaf, labels)
        value.backward()
        return value.detach(), leaf.grad


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def cached_backward(net: nn.Module, forward: Callable[[Tensor], Tensor], inputs: Tensor, chunk: int,
                    loss_grad: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Tensor:
    """Accumulate into `net`'s .grad the gradient of `loss_grad`'s loss over `forward(inputs)`, `chunk` rows at a time.

    `forward` maps a chunk of inputs to its embeddings (it may be `net` itself, or
    a compiled or autocast wrapper of it); `loss_grad` maps all embeddings to
    (loss value, gradient w.r.t. them), e.g. `embedding_loss_grad`. Returns the
    loss value (detached).
    """
    chunks = inputs.split(chunk)
    buffers = [b.detach().clone() for b in net.buffers()]
    states, outputs = [], []
    with torch.no_grad():
        for part in chunks:
            states.append(_rng_state(part.device))
            outputs.append(forward(part).float())
        for b, saved in zip(net.buffers(), buffers):
            b.copy_(saved)
    value, grad = loss_grad(torch.cat(outputs))
    for part, state, part_grad in zip(chunks, states, grad.split(chunk)):
        _set_rng_state(state, part.device)
        forward(part).float().backward(part_grad)
    return value
