"""The text modality: a text encoder fine-tuned on text pairs with a two-view loss.

It runs in the shared loop (`core.loop.TrainingLoop`) and step (`core.step`), so a
text job reports, checkpoints, resumes, optimises (fused AdamW) and can use the
cached loss exactly as an array job does. What differs is the data: every text is
tokenised once, up front, and a step takes its rows' token ids, trimmed to the
batch's longest text. The anchor and the positive of a pair are the loss's two views.

The token embedding matrix (30,522 x 384, half the model's weights) stays as
pretrained: a fine-tuning set touches few of its rows, and AdamW's decoupled
weight decay would otherwise shrink every row it never sees, hurting the texts
the model meets later; freezing it also halves the optimizer's work and state.

Evaluation treats the test pairs as a retrieval set: the anchor and the
positive of pair i form class i, so precision_at_1 is the share of test texts
whose nearest neighbour is their own partner (catalog.TEXT_PAIRS).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedmix.core import losses
from embedmix.core.data.text_pairs import TextPairs
from embedmix.core.evaluate import evaluate
from embedmix.core.export import ExportInputs, text_export_inputs
from embedmix.core.losses.grad_cache import cached_backward, embedding_loss_grad
from embedmix.core.loop import (Callbacks, InitWeights, NullCallbacks, TrainingLoop, epoch_order, load_init_weights,
                       pick_device, seed_everything)
from embedmix.core.models.text_encoder import TextEncoder, Tokens
from embedmix.core.spec import JobSpec

EVAL_BATCH = 256


@torch.no_grad()
def embed_tokens(encoder: TextEncoder, tokens: Tokens, device: torch.device, batch: int = EVAL_BATCH) -> Tensor:
    """Normalised embeddings of tokenised texts, in eval mode, in batches; returned on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(tokens), batch):
        part = tokens.select(torch.arange(start, min(start + batch, len(tokens)))).to(device)
        out.append(F.normalize(encoder.embed_tokens(part.ids, part.mask), dim=-1).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embedding_dim)


def _padded(tokens: Tokens, length: int) -> Tensor:
    """ids and mask stacked as (B, 2, length), zero-padded (padding id 0, mask 0): one tensor a cached step can split."""
    pad = length - tokens.ids.shape[1]
    return torch.stack([F.pad(tokens.ids.long(), (0, pad)), F.pad(tokens.mask.long(), (0, pad))], dim=1)


class TextTrainer(TrainingLoop):
    """One text run's state; `run()` trains from the current step to the end or a stop."""

    def __init__(self, spec: JobSpec, data: TextPairs, callbacks: Callbacks | None = None,
                 device: torch.device | None = None, init_weights: InitWeights | None = None) -> None:
        self.spec, self.data = spec, data
        self.cb = callbacks or NullCallbacks()
        self.device = device or pick_device(spec)
        seed_everything(spec.train.seed)
        # starting weights replace every pretrained one, so the pretrained file is not read for them
        self.encoder = TextEncoder(max_length=int(spec.model.params["max_length"]),
                                   pretrained=init_weights is None).to(self.device)
        if init_weights is not None:
            load_init_weights(self.encoder, init_weights)
        self.encoder.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.loss = losses.build(spec.objective.loss, embedding_dim=self.encoder.embedding_dim,
                                 **spec.objective.params).to(self.device)
        self.anchors = self.encoder.tokenize(data.anchors_train)
        self.positives = self.encoder.tokenize(data.positives_train)
        n = len(self.anchors)
        self.batch = min(spec.train.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        self._start(list(self.encoder.parameters()) + list(self.loss.parameters()),
                    clipped=list(self.encoder.parameters()))

    # -- checkpoints -------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        return {"net": self.encoder.state_dict(), "loss": self.loss.state_dict()}

    def _load_own_state(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])

    # -- the loop ----------------------------------------------------------------
    def _batch_order(self, epoch: int) -> Tensor:
        return epoch_order(self.spec.train.seed, epoch, len(self.anchors))

    def _trained_encoder(self) -> nn.Module:
        self.encoder.train()
        return self.encoder

    def export_inputs(self) -> ExportInputs:
        return text_export_inputs(self.encoder, self.spec)

    def _embed(self, ids: Tensor, mask: Tensor) -> Tensor:
        with self.autocast:
            return self.encoder.embed_tokens(ids, mask).float()

    def batch_loss(self, idx: Tensor) -> Tensor:
        """The loss of pairs ``idx``: anchors and positives are the two views."""
        a = self.anchors.select(idx).to(self.device)
        p = self.positives.select(idx).to(self.device)
        return self.loss(self._embed(a.ids, a.mask), self._embed(p.ids, p.mask))

    def cached_loss(self, idx: Tensor, chunk: int) -> Tensor:
        """The pairs' loss with its gradient accumulated `chunk` texts at a time: anchors, then positives."""
        a, p = self.anchors.select(idx), self.positives.select(idx)
        length = max(a.ids.shape[1], p.ids.shape[1])
        inputs = torch.cat([_padded(a, length), _padded(p, length)]).to(self.device)
        return cached_backward(self.encoder, lambda part: self._embed(part[:, 0], part[:, 1]), inputs, chunk,
                               lambda z: embedding_loss_grad(self.loss, z, None, chunk))

    def evaluate(self) -> dict[str, float]:
        """Retrieval over the test pairs, each pair a class of two (see the module docstring)."""
        texts = self.data.anchors_test + self.data.positives_test
        embeddings = embed_tokens(self.encoder, self.encoder.tokenize(texts), self.device)
        pair = torch.arange(len(self.data.anchors_test))
        return evaluate(self.spec.eval.metrics, train=None, test=(embeddings, torch.cat([pair, pair])),
                        recall_k=tuple(self.spec.eval.recall_k), seed=self.spec.train.seed)
