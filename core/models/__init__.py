"""Model construction: the encoder named in the spec, plus the training-only projection head."""

from __future__ import annotations

import torch
from torch import nn

from embedmix.core.models.encoders import Encoder, EncoderPair, Standardize, conv1d, conv2d, fuse, mlp, resnet18
from embedmix.core.spec import ModelSpec

__all__ = ["Encoder", "EncoderPair", "Standardize", "TrainingNet", "build_encoder", "build_net", "fuse"]

_BUILDERS = {"mlp": mlp, "conv1d": conv1d, "conv2d": conv2d, "resnet18": resnet18}


def build_encoder(spec: ModelSpec, input_shape: tuple[int, ...], preprocess: Standardize) -> Encoder:
    """The encoder a resolved model spec describes (`core.spec.resolve_model` fills width and params)."""
    if spec.width is None:
        raise ValueError("model.width is not set: build from a resolved spec (core.spec.resolve_model)")
    blocks, embed = _BUILDERS[spec.encoder](tuple(input_shape), spec.width, spec.embedding_dim, dropout=spec.dropout,
                                            **spec.params)
    return Encoder(preprocess, blocks, embed, spec.embedding_dim)


class TrainingNet(nn.Module):
    """Encoder plus optional projection head; only the encoder is exported."""

    def __init__(self, encoder: Encoder, projection_dim: int | None):
        super().__init__()
        self.encoder = encoder
        d = encoder.embedding_dim
        self.head = None if projection_dim is None else nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, projection_dim))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.head is None else self.head(z)

    def forward(self, h: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Training output from a preprocessed input (or the state before block `start`)."""
        return self.project(self.encoder.embed_from(h, start))


def build_net(spec: ModelSpec, x_train: torch.Tensor) -> TrainingNet:
    encoder = build_encoder(spec, tuple(x_train.shape[1:]), Standardize.fit(x_train))
    return TrainingNet(encoder, spec.projection_dim)
