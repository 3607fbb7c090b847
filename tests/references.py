"""Comparing a loss with a reference transcribed from the official code: value and input gradients, float64."""

from __future__ import annotations

import torch


def value_and_grad(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(*inputs) and its gradient with respect to each input (fresh leaves, the inputs untouched)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def assert_same(ours, reference, *inputs: torch.Tensor) -> None:
    """Value and gradient (with respect to `inputs`) of `ours` equal those of `reference`, float64."""
    v1, g1 = value_and_grad(ours, *inputs)
    v2, g2 = value_and_grad(reference, *inputs)
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
