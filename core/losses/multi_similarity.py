"""Multi-similarity loss (Wang et al. 2019) with its pair miner, on cosine similarity.

Per anchor i:
    (1/alpha) log(1 + sum_p w_ip e^{-alpha (s_ip - base)})
  + (1/beta)  log(1 + sum_n w_in e^{ beta (s_in - base)})
averaged over all anchors (PML's MeanReducer, anchors without pairs count as 0).
Weights sit inside the sums, which is Metrix's generalisation to mixed pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .pairs import PairLoss, PairWeights, cosine_matrix, weighted_logsumexp


def ms_mine(sim: Tensor, weights: PairWeights, epsilon: float) -> PairWeights:
    """Keep the informative pairs, as PML's MultiSimilarityMiner.

    A positive is kept if s_ip - eps < the anchor's most similar negative; a
    negative is kept if s_in + eps > the anchor's least similar positive. An
    anchor with no positive keeps no negative and vice versa. The selection is
    a mask (no gradient); kept pairs keep their weights.
    """
    with torch.no_grad():
        max_neg = sim.masked_fill(weights.neg <= 0, float("-inf")).amax(dim=1, keepdim=True)
        min_pos = sim.masked_fill(weights.pos <= 0, float("inf")).amin(dim=1, keepdim=True)
        keep_pos = sim - epsilon < max_neg
        keep_neg = sim + epsilon > min_pos
    return PairWeights(weights.pos * keep_pos, weights.neg * keep_neg)


class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss; with `miner` the MS miner first drops the uninformative pairs."""

    name = "multi_similarity"

    def __init__(self, alpha: float, beta: float, base: float, miner_epsilon: float, miner: bool) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.miner_epsilon = miner_epsilon
        self.miner = miner

    def pair_loss(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> Tensor:
        sim = cosine_matrix(anchors, refs)
        if self.miner:
            weights = ms_mine(sim, weights, self.miner_epsilon)
        shifted = sim - self.base
        pos = weighted_logsumexp(-self.alpha * shifted, weights.pos, add_one=True) / self.alpha
        neg = weighted_logsumexp(self.beta * shifted, weights.neg, add_one=True) / self.beta
        return (pos + neg).mean()
