"""What a job will cost in memory, estimated from its resolved spec and its data's shape, before it runs.

The service admits a job only if its estimated peak fits what its workers declare
(`estimate(...).total` against a setting), so a spec within every size limit can no
longer take a worker down by needing more memory than the machine has. The estimate
is the sum of the parts that live at once at the peak of a training step:

* data: the raw arrays while they are made or parsed (float64 and copies: `LOAD_FACTOR`
  bytes of peak per stored float32 byte), then the float32 train/test tensors;
* model: weights, gradients and two AdamW moments (4 floats per parameter), counted
  on PyTorch's meta device, so estimating a huge model allocates nothing;
* activations: every module's output for one batch of `batch_size x views` rows, kept
  for the backward with its input (`ACTIVATION_COPIES`; counted on the meta device), doubled when a mixing method runs a
  second (mixed) forward; with the cached loss, only a chunk's;
* loss: the (B, B + Q) similarity, weight and gradient matrices of pair losses
  (`LOSS_MATRICES` of them), Q a queue;
* evaluation: train and test embeddings and one block of the retrieval similarities.

It errs on the high side by design: an estimate that is too low is caught by the
worker's memory ceiling (the job fails `out_of_memory`), one that is too high only
asks the user to shrink a spec that would have fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from embedmix.core import catalog
from embedmix.core.models import Standardize, TrainingNet, build_encoder
from embedmix.core.spec import JobSpec

FLOAT = 4
LOAD_FACTOR = 6  # peak bytes while loading per byte of float32 data kept (float64 generation or parsing, copies)
OPTIMIZER_FLOATS = 4  # weight, gradient, AdamW's two moments
ACTIVATION_COPIES = 2  # a module's backward keeps its input as well as its output (batch norm, ReLU masks)
LOSS_MATRICES = 8  # similarities, exp, masks, pair weights and their gradients, (B, B + Q) each
EVAL_BLOCK = 1024  # query rows per retrieval block (core.evaluate)
TEXT_LAYERS, TEXT_HIDDEN, TEXT_HEADS, TEXT_PARAMS = 6, 384, 12, 22_700_000  # all-MiniLM-L6-v2
TEXT_SAVED_PER_HIDDEN = 16  # floats per token and hidden unit a BERT layer keeps for its backward (MLP is 4x wide)
WHAT_TO_SHRINK = {"data": "dataset.size", "model": "model.width", "activations": "train.batch_size",
                  "loss": "train.batch_size", "evaluation": "dataset.size"}


@dataclass(frozen=True)
class DataShape:
    """What the estimate needs of a dataset: rows (train + test), one sample's shape, classes (None: not classes)."""

    rows: int
    input_shape: tuple[int, ...]
    num_classes: int | None = None


@dataclass(frozen=True)
class Estimate:
    """Peak bytes by part; `total` is what admission compares with a worker's memory."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self) -> tuple[str, str]:
        """(the largest part, the spec field that shrinks it)."""
        part = max(self.parts, key=lambda name: self.parts[name])
        return part, WHAT_TO_SHRINK[part]


def rank_budget(worker_memory: int, devices: int) -> int:
    """The memory each of a job's ``devices`` ranks may use of what a worker offers the job: an equal share.

    Each rank is a process of its own holding its own copy of the data and the
    model, so N ranks need N budgets; a rank's peak is at most the one-device
    peak of the global batch (`estimate`: its share of the activations, its
    rows against the gathered batch in the loss), so a job fits when that
    estimate fits one share.
    """
    return worker_memory // devices


def describe_bytes(size: int) -> str:
    """A size as people read it in an error message."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def builtin_shape(spec: JobSpec) -> DataShape:
    """The shape of a resolved spec's built-in dataset, known without generating it."""
    entry = catalog.DATASETS[spec.dataset.name or ""]
    shape = tuple(int(spec.dataset.params[d]) if isinstance(d, str) else int(d) for d in entry.extra["input_shape"])
    classes = spec.dataset.params.get("num_classes", entry.extra.get("num_classes"))
    rows = spec.dataset.size if spec.dataset.size is not None else int(entry.extra["rows"])
    return DataShape(rows=int(rows), input_shape=shape, num_classes=None if classes is None else int(classes))


def estimate(spec: JobSpec, data: DataShape) -> Estimate:
    """The peak memory of training and evaluating a resolved spec on data of this shape."""
    if catalog.ENCODERS[spec.model.encoder].extra.get("input") == "text":
        return _text_estimate(spec, data)
    elements = data.rows * math.prod(data.input_shape)
    views = spec.objective.views or 1
    batch = min(spec.train.batch_size, data.rows)
    rows_in_memory = min(batch, spec.train.grad_cache_chunk or batch) * views
    params, per_row = _model_size(spec, data.input_shape)
    mixing = 2 if spec.mixup is not None else 1
    references = batch * views + _queue(spec)
    return Estimate({
        "data": elements * FLOAT * LOAD_FACTOR,
        "model": params * FLOAT * OPTIMIZER_FLOATS,
        "activations": rows_in_memory * per_row * FLOAT * ACTIVATION_COPIES * mixing,
        "loss": batch * views * references * FLOAT * LOSS_MATRICES,
        "evaluation": data.rows * spec.model.embedding_dim * FLOAT + _retrieval_block(spec, data.rows),
    })


def _retrieval_block(spec: JobSpec, rows: int) -> int:
    """Retrieval scores `EVAL_BLOCK` test queries against all test rows at once: a buffer and its ranked copy."""
    split = spec.dataset.split
    test_rows = math.ceil(rows * split.test_fraction) if split.kind == "random" else rows
    return 2 * EVAL_BLOCK * test_rows * FLOAT


def _queue(spec: JobSpec) -> int:
    return int(spec.mixup.params.get("queue_size", 0)) if spec.mixup is not None else 0


def _model_size(spec: JobSpec, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, floats of module outputs per input row) of the spec's network, on the meta device."""
    with torch.device("meta"):
        zeros = torch.zeros(input_shape)
        encoder = build_encoder(spec.model, input_shape, Standardize(zeros, zeros + 1))
        net = TrainingNet(encoder, spec.model.projection_dim)
        outputs = [0]

        def count(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and not list(module.children()):
                outputs[0] += output[0].numel()

        hooks = [m.register_forward_hook(count) for m in net.modules()]
        try:
            net.eval()
            net(torch.zeros((2, *input_shape)))
        finally:
            for hook in hooks:
                hook.remove()
    return sum(p.numel() for p in net.parameters()), outputs[0]


def _text_estimate(spec: JobSpec, data: DataShape) -> Estimate:
    tokens = int(spec.model.params["max_length"])
    batch = min(spec.train.batch_size, data.rows)
    rows_in_memory = min(batch, spec.train.grad_cache_chunk or batch) * 2
    return Estimate({
        "data": data.rows * 2 * tokens * 5 * LOAD_FACTOR,  # int32 ids and int8 mask per token, anchors and positives
        "model": TEXT_PARAMS * FLOAT * OPTIMIZER_FLOATS,
        "activations": rows_in_memory * tokens * TEXT_LAYERS * (TEXT_SAVED_PER_HIDDEN * TEXT_HIDDEN + TEXT_HEADS * tokens) * FLOAT,
        "loss": batch * 2 * batch * 2 * FLOAT * LOSS_MATRICES,
        "evaluation": data.rows * 2 * TEXT_HIDDEN * FLOAT + 2 * _retrieval_block(spec, data.rows),
    })
