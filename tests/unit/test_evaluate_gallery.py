"""Chunked top-k search over a reference set: the same neighbours as one full sort, in bounded memory."""

from __future__ import annotations

import torch

from embedmix.core.evaluate import nearest_neighbours, query_retrieval_metrics


def _data(n: int, d: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_blocked_top_k_equals_full_sort():
    """Blocks of 7 references and chunks of 5 queries (neither divides the sizes) give the exact top 6."""
    refs, _ = _data(100)
    queries, _ = _data(23, seed=1)
    sims = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(refs, dim=1).T
    expected_sims, expected_idx = sims.sort(dim=1, descending=True)
    seen = 0
    for lo, top, idx in nearest_neighbours(queries, refs, 6, chunk=5, block=7):
        assert torch.equal(idx, expected_idx[lo : lo + 5, :6])
        assert torch.allclose(top, expected_sims[lo : lo + 5, :6])
        seen += idx.shape[0]
    assert seen == 23


def test_query_metrics_count_hits_in_the_top_k():
    refs, ref_labels = _data(200)
    queries, labels = _data(40, seed=2)
    order = (torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(refs, dim=1).T).argsort(dim=1, descending=True)
    relevant = ref_labels[order] == labels[:, None]
    got = query_retrieval_metrics(queries, labels, refs, ref_labels, ks=(1, 5), chunk=16, block=50)
    assert got == {"precision_at_1": relevant[:, 0].sum().item() / 40,
                   "recall_at_1": relevant[:, 0].sum().item() / 40,
                   "recall_at_5": relevant[:, :5].any(dim=1).sum().item() / 40}
