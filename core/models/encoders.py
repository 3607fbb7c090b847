"""Encoders: raw input -> embedding, with the input preprocessing built in.

Every encoder is the same shape of module, `Encoder(preprocess, blocks, embed)`, so
that mixing methods can reach the hidden state after any block (manifold and feature
mixup) without knowing the architecture, and the exported model maps inputs exactly
as stored in the dataset to unit-length embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with statistics from the training set, stored as buffers so they export."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardize:
        """Per feature for vectors (B, F); per channel for sequences and images (B, C, ...)."""
        if x.dim() == 2:
            mean, std = x.mean(0), x.std(0)
        else:
            dims = [0] + list(range(2, x.dim()))
            mean, std = x.mean(dims, keepdim=True)[0], x.std(dims, keepdim=True)[0]
        return cls(mean, torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Encoder(nn.Module):
    """preprocess -> blocks -> embed; `forward` returns L2-normalised embeddings."""

    def __init__(self, preprocess: nn.Module, blocks: list[nn.Module], embed: nn.Module, embedding_dim: int):
        super().__init__()
        self.preprocess = preprocess
        self.blocks = nn.ModuleList(blocks)
        self.embed = embed
        self.embedding_dim = embedding_dim

    def hidden(self, h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks[start:stop] on an already preprocessed (or partially encoded) input."""
        for block in list(self.blocks)[start:stop]:
            h = block(h)
        return h

    def embed_from(self, h: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Unnormalised embedding from the state before block `start`: what losses and heads see."""
        return self.embed(self.hidden(h, start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_from(self.preprocess(x)), dim=-1)


def fuse(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Two modalities' unit embeddings as one unit embedding, [z_a, z_b] / sqrt(2): cosine is their mean cosine."""
    return torch.cat([z_a, z_b], dim=-1) * (0.5 ** 0.5)


class EncoderPair(nn.Module):
    """One encoder per modality (two-modality losses): exported together, state keys modality_0.*, modality_1.*.

    `forward(x, x2)` is the fused embedding (`fuse`), what the run evaluates: the official M3CoL code
    classifies the concatenation of both modalities' embeddings.
    """

    def __init__(self, modality_0: Encoder, modality_1: Encoder):
        super().__init__()
        self.modality_0, self.modality_1 = modality_0, modality_1
        self.embedding_dim = modality_0.embedding_dim + modality_1.embedding_dim

    def forward(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return fuse(self.modality_0(x), self.modality_1(x2))


def _flat_size(blocks: list[nn.Module], input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        h = torch.zeros((2,) + input_shape)
        for b in blocks:
            b.eval()
            h = b(h)
            b.train()
    return h[0].numel()


def mlp(input_shape: tuple[int, ...], width: int, embedding_dim: int, depth: int, dropout: float = 0.0) -> tuple[list[nn.Module], nn.Module]:
    blocks: list[nn.Module] = []
    fan_in = 1
    for s in input_shape:
        fan_in *= s
    for i in range(depth):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(fan_in, width), nn.BatchNorm1d(width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        fan_in = width
    return blocks, nn.Linear(fan_in, embedding_dim)


def conv1d(input_shape: tuple[int, ...], width: int, embedding_dim: int, depth: int, dropout: float = 0.0) -> tuple[list[nn.Module], nn.Module]:
    """Conv-BN-ReLU blocks that halve the length, then a linear map of the flattened state.

    Flattening (after pooling to at most 8 positions) keeps where a feature occurred,
    which 1-D signals such as MNIST-1D need; global pooling alone would discard it.
    """
    channels = 1 if len(input_shape) == 1 else input_shape[0]
    blocks: list[nn.Module] = []
    if len(input_shape) == 1:
        blocks.append(nn.Unflatten(1, (1, input_shape[0])))
    for i in range(depth):
        layers: list[nn.Module] = [nn.Conv1d(channels, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
                                   nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU()]
        if i < depth - 1:
            layers.append(nn.MaxPool1d(2, ceil_mode=True))
        if i == 0 and blocks:
            layers = [blocks.pop()] + layers
        blocks.append(nn.Sequential(*layers))
        channels = width
    length = input_shape[-1]
    for _ in range(depth - 1):
        length = -(-length // 2)
    pool = -(-length // 8)  # a fixed kernel (not adaptive pooling) so ONNX export works for any length
    blocks.append(nn.Sequential(nn.MaxPool1d(pool, ceil_mode=True), nn.Flatten(), nn.Dropout(dropout)))
    return blocks, nn.Linear(_flat_size(blocks, input_shape), embedding_dim)


def conv2d(input_shape: tuple[int, ...], width: int, embedding_dim: int, depth: int, dropout: float = 0.0) -> tuple[list[nn.Module], nn.Module]:
    channels = input_shape[0]
    side = min(input_shape[1:])
    blocks: list[nn.Module] = []
    for _ in range(depth):
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if side >= 4:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        blocks.append(nn.Sequential(*layers))
        channels = width
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)))
    return blocks, nn.Linear(channels, embedding_dim)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(input_shape: tuple[int, ...], width: int, embedding_dim: int, dropout: float = 0.0) -> tuple[list[nn.Module], nn.Module]:
    """CIFAR ResNet-18: 3x3 stem without max-pool, stages of 64-128-256-512 channels; `width` is ignored."""
    stem = nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    blocks: list[nn.Module] = [stem]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        blocks.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
        c_in = c_out
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)))
    return blocks, nn.Linear(512, embedding_dim)
