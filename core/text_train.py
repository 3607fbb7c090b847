"""The training loop for text pairs: a text encoder fine-tuned with a two-view loss.

It keeps the contract of `core.train` (same callbacks, progress, checkpoints
with model, optimizer, RNG states and step, the same epoch order and learning
rate schedule, the same `TrainResult`), so the worker and the CLI run text jobs
exactly as they run array jobs; `core.train.train` hands `TextPairs` here.
What differs is the data: every text is tokenised once, up front, and a step
takes its rows' token ids, trimmed to the batch's longest text. The anchor and
the positive of a pair are the loss's two views.

The token embedding matrix (30,522 x 384, half the model's weights) stays as
pretrained: a fine-tuning set touches few of its rows, and AdamW's decoupled
weight decay would otherwise shrink every row it never sees, hurting the texts
the model meets later; freezing it also halves the optimizer's work and state.

Evaluation treats the test pairs as a retrieval set: the anchor and the
positive of pair i form class i, so precision_at_1 is the share of test texts
whose nearest neighbour is their own partner (catalog.TEXT_PAIRS).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from core import catalog, losses
from core.data.text_pairs import TextPairs
from core.errors import Diverged
from core.evaluate import evaluate
from core.models.text_encoder import TextEncoder, Tokens
from core.spec import JobSpec
from core.train import (
    Callbacks,
    NullCallbacks,
    TrainingLoop,
    TrainResult,
    epoch_order,
    lr_at,
    pick_device,
    seed_everything,
)

EVAL_BATCH = 256


@torch.no_grad()
def embed_tokens(encoder: TextEncoder, tokens: Tokens, device: torch.device, batch: int = EVAL_BATCH) -> Tensor:
    """Normalised embeddings of tokenised texts, in eval mode, in batches; returned on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(tokens), batch):
        part = tokens.select(torch.arange(start, min(start + batch, len(tokens)))).to(device)
        out.append(nn.functional.normalize(encoder.embed_tokens(part.ids, part.mask), dim=-1).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embedding_dim)


class TextTrainer(TrainingLoop):
    """One text run's state; `run()` trains from the current step to the end or a stop."""

    def __init__(self, spec: JobSpec, data: TextPairs, callbacks: Callbacks | None = None,
                 device: torch.device | None = None) -> None:
        self.spec, self.data = spec, data
        self.cb = callbacks or NullCallbacks()
        self.device = device or pick_device(spec)
        seed_everything(spec.train.seed)
        params = {**catalog.ENCODERS[spec.model.encoder].defaults(), **spec.model.params}
        self.encoder = TextEncoder(max_length=int(params["max_length"])).to(self.device)
        self.encoder.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.loss = losses.build(spec.objective.loss, embedding_dim=self.encoder.embedding_dim,
                                 **spec.objective.params).to(self.device)
        self.anchors = self.encoder.tokenize(data.anchors_train)
        self.positives = self.encoder.tokenize(data.positives_train)
        n = len(self.anchors)
        self.batch = min(spec.train.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        trained = [p for p in self.encoder.parameters() if p.requires_grad]
        self.opt = _optimizer(spec, trained + list(self.loss.parameters()))
        self.step = 0
        self.last_loss = float("nan")
        self.history: list[dict[str, Any]] = []

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

    def batch_loss(self, idx: Tensor) -> Tensor:
        """The loss of pairs ``idx``: anchors and positives are the two views."""
        a = self.anchors.select(idx).to(self.device)
        p = self.positives.select(idx).to(self.device)
        return self.loss(self.encoder.embed_tokens(a.ids, a.mask), self.encoder.embed_tokens(p.ids, p.mask))

    def _train_step(self, idx: Tensor) -> float:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.spec, self.step, self.steps_per_epoch)
        self.opt.zero_grad(set_to_none=True)
        loss = self.batch_loss(idx)
        loss.backward()
        value = loss.detach().item()
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {self.step}; lower train.lr or enable train.grad_clip")
        if self.spec.train.grad_clip:
            nn.utils.clip_grad_norm_([p for p in self.encoder.parameters() if p.requires_grad], self.spec.train.grad_clip)
        self.opt.step()
        self.step += 1
        return value

    def evaluate(self) -> dict[str, float]:
        """Retrieval over the test pairs, each pair a class of two (see the module docstring)."""
        names = self.spec.eval.metrics or catalog.TEXT_PAIRS["default_metrics"]
        texts = self.data.anchors_test + self.data.positives_test
        embeddings = embed_tokens(self.encoder, self.encoder.tokenize(texts), self.device)
        pair = torch.arange(len(self.data.anchors_test))
        return evaluate(names, train=None, test=(embeddings, torch.cat([pair, pair])),
                        recall_k=tuple(self.spec.eval.recall_k), seed=self.spec.train.seed)

def _optimizer(spec: JobSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def train_text(spec: JobSpec, data: TextPairs, callbacks: Callbacks | None = None, *, resume: bytes | None = None,
               device: torch.device | None = None) -> TrainResult:
    """Train `spec`'s text encoder on text pairs; with `resume`, continue from that checkpoint."""
    trainer = TextTrainer(spec, data, callbacks, device)
    if resume is not None:
        trainer.load_state(resume)
    return trainer.run()
