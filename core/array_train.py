"""The array modality: an encoder over tensors (vectors, sequences, images), any loss, any mixing method.

Data lives on the training device as tensors when it fits (else in host memory,
copied batch by batch through pinned memory); views are augmented batched on that
device; a mixing method, when the spec has one, replaces the plain batch loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from embedmix.core import catalog, losses, mixup
from embedmix.core.distributed import (ShardedNet, average_gradients, class_balanced_order, class_groups,
                              current_ranks, sharded, synchronise_batchnorm)
from embedmix.core.errors import UnsupportedSpec
from embedmix.core.data import Dataset
from embedmix.core.data.augment import augment
from embedmix.core.evaluate import USES_TRAIN, evaluate
from embedmix.core.export import ExportInputs, array_export_inputs, pair_export_inputs
from embedmix.core.losses.grad_cache import cached_backward, embedding_loss_grad
from embedmix.core.loop import (Callbacks, GroupCallbacks, InitWeights, NullCallbacks, TrainingLoop, epoch_order,
                       load_init_weights, pick_device, seed_everything)
from embedmix.core.mixup import Batch
from embedmix.core.models import Encoder, EncoderPair, build_net, fuse
from embedmix.core.spec import VALIDATION_PREFIX, JobSpec

# Share of the free accelerator memory the training data may take before it stays in host memory.
DEVICE_DATA_SHARE = 0.5
log = logging.getLogger(__name__)


@torch.no_grad()
def embed(encoder: Encoder, x: torch.Tensor, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """Normalised embeddings of raw inputs, in eval mode, in batches; returned on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = [encoder(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embedding_dim)


def data_fits(nbytes: int, device: torch.device) -> bool:
    """Whether training arrays of `nbytes` should live on `device` (always on the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_SHARE * free


def configure_gpu(net: nn.Module, device: torch.device) -> bool:
    """TF32 matmuls and convolutions on CUDA; channels_last when the net has 2-D convolutions. Returns the latter."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    if any(isinstance(m, nn.Conv2d) for m in net.modules()):
        net.to(memory_format=torch.channels_last)
        return True
    return False


class CompiledForward:
    """`torch.compile(net)` that falls back to eager `net` (once, calling `on_fallback`) when compilation fails.

    Compilation can fail when the model is compiled or at any call that triggers a
    (re)compile; either way the run continues eagerly rather than dying on an
    optimisation it did not need.
    """

    def __init__(self, net: nn.Module, on_fallback: Callable[[BaseException], None]):
        self.net, self.on_fallback = net, on_fallback
        self.compiled: Callable[..., torch.Tensor] | None = None
        try:
            self.compiled = torch.compile(net)
        except Exception as exc:  # noqa: BLE001 - any failure to compile means: run eagerly
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        self.on_fallback(exc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
        return self.net(x)


class ArrayTrainer(TrainingLoop):
    """One array run's state; `run()` trains from the current step to the end or a stop.

    In a process group of N ranks (torch.distributed.run) every rank builds the same
    run and draws the same global batches; the network's forward is split over the
    ranks (`core.distributed`), so the run is the one-device computation.
    """

    def __init__(self, spec: JobSpec, data: Dataset, callbacks: Callbacks | None = None, device: torch.device | None = None,
                 init_weights: InitWeights | None = None):
        self.spec, self.data = spec, data
        self.ranks = current_ranks()
        self.cb = callbacks or NullCallbacks()
        if self.ranks.distributed:
            self.cb = GroupCallbacks(self.cb, self.ranks)
        self.device = device or pick_device(spec)
        seed_everything(spec.train.seed)
        self.net = build_net(spec.model, data.x_train).to(self.device)
        if init_weights is not None:
            load_init_weights(self.net.encoder, init_weights)
        if self.ranks.distributed and spec.resources.sync_batchnorm:
            synchronise_batchnorm(self.net)
        out_dim = spec.model.projection_dim or spec.model.embedding_dim
        self.loss = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=out_dim,
                                 num_samples=len(data.x_train), **spec.objective.params).to(self.device)
        # A two-modality loss (m3col) trains a second encoder, of the spec's kind, on the data's x2: one of its
        # parameters, so the optimizer and the checkpoint hold it with the loss; the export carries both encoders.
        self.second: Encoder | None = None
        if getattr(self.loss, "modalities", 1) == 2:
            self.second = build_net(spec.model, data.x2_train).encoder.to(self.device)
            self.loss.use_second_encoder(self.second)
        self.views = spec.objective.views
        self.use_labels = catalog.LOSSES[spec.objective.loss].labels != "none" and not (self.views == 2 and self.loss.two_view)
        self.augment = spec.augment.enabled
        self.channels_last = configure_gpu(self.net, self.device)
        self._place_data(data)
        n = self._epoch_rows()
        self.batch = min(spec.train.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        if hasattr(self.loss, "fit_targets"):
            self.loss.fit_targets(data.y_train)
        self.method = mixup.build(spec, self.loss, num_classes=data.num_classes, embedding_dim=out_dim)
        if self.method is not None:
            self.method.to(self.device)
        if hasattr(self.method, "use_outliers"):  # MixOE's real outlier pool (held-out classes), kept where the data is
            self.method.use_outliers(data.outliers, self.x.device)
        params = list(self.net.parameters()) + list(self.loss.parameters())
        params += list(self.method.parameters()) if self.method is not None else []
        reduce = partial(average_gradients, ranks=self.ranks) if self.ranks.distributed else None
        clipped = list(self.net.parameters()) + (list(self.second.parameters()) if self.second is not None else [])
        self._start(params, clipped=clipped, reduce_gradients=reduce)
        self.gen = torch.Generator(device=self.device).manual_seed(spec.train.seed + 1)
        # Handed over once: the run's generator to a loss that draws (decoupled_softmax's sampled positives),
        # the training set to a method that draws partners from it (C-Mixup's train_set pool).
        if hasattr(self.loss, "use_generator"):
            self.loss.use_generator(self.gen)
        if hasattr(self.method, "use_train_set"):
            self.method.use_train_set(self.y, lambda idx: self._fetch(idx)[0])
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.net
        if spec.train.compile:
            self.forward = CompiledForward(self.net, self._compile_failed)
        self.method_net: nn.Module | ShardedNet = self.net
        if self.ranks.distributed:
            self.forward = partial(sharded, self.forward, ranks=self.ranks)
            self.method_net = ShardedNet(self.net, self.ranks)

    def _place_data(self, data: Dataset) -> None:
        """Training arrays on the device when they fit, so batches are drawn by index there; otherwise in host memory."""
        nbytes = data.x_train.nbytes + (data.y_train.nbytes if data.y_train is not None else 0)
        self.data_on_device = data_fits(nbytes, self.device)
        home = self.device if self.data_on_device else torch.device("cpu")
        self.x = data.x_train.to(home)
        self.y = data.y_train.to(home) if data.y_train is not None else None
        self.x2 = data.x2_train.to(home) if self.second is not None else None

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's inputs and labels on the device (idx lives where the data does).

        From host memory a batch is gathered into pinned memory (only the batch: pinning
        a data set too large for the GPU would tie up as much page-locked RAM) and copied
        without blocking, so the copy overlaps the work already queued on the GPU.
        """
        x = self.x[idx]
        y = self.y[idx] if self.y is not None else None
        if not self.data_on_device:
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True) if y is not None else None
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _compile_failed(self, exc: BaseException) -> None:
        """Report through the callbacks (a metric the caller stores) and the log, then carry on eagerly."""
        log.warning("train.compile: torch.compile failed (%s: %s); training continues without compilation",
                    type(exc).__name__, exc)
        self.cb.on_metrics(self.step, self.step // self.steps_per_epoch, {"train/compile_fallback": 1.0})

    # -- checkpoints -------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "loss": self.loss.state_dict(),
            "method": self.method.state_dict() if self.method is not None else {},
            "rng_gen": self.gen.get_state(),
        }

    def _load_own_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        self.gen.set_state(state["rng_gen"].cpu() if self.device.type == "cpu" else state["rng_gen"])

    def _epoch_rows(self) -> int:
        """Rows an epoch visits: all of them, or the whole per-class groups of class-balanced batches."""
        per_class = self.spec.train.samples_per_class
        if per_class is None:
            return len(self.x)
        if self.y is None or self.y.is_floating_point() or self.spec.train.batch_size % per_class:
            raise UnsupportedSpec("train.samples_per_class: needs class labels and a batch_size that is a multiple of it")
        return class_groups(self.y, per_class)

    def _batch_order(self, epoch: int) -> torch.Tensor:
        per_class = self.spec.train.samples_per_class
        if per_class is None:
            return epoch_order(self.spec.train.seed, epoch, len(self.x)).to(self.x.device)
        return class_balanced_order(self.y, per_class, self.spec.train.seed, epoch).to(self.x.device)

    def _trained_encoder(self) -> nn.Module:
        self.net.train()
        return self.net.encoder

    def export_inputs(self) -> ExportInputs:
        if self.second is not None:
            return pair_export_inputs(EncoderPair(self.net.encoder, self.second), self.spec, self.data)
        return array_export_inputs(self.net.encoder, self.spec, self.data)

    # -- the batch loss ----------------------------------------------------------
    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.spec.augment, self.gen) if self.augment else x

    def batch_loss(self, idx: torch.Tensor) -> torch.Tensor:
        x, y = self._fetch(idx)
        x = self.net.encoder.preprocess(x)
        if self.second is not None:
            return self._two_modality_loss(x, y, idx)
        if self.method is not None and self.mixing():
            batch = Batch(x=x, y=y, gen=self.gen, view=lambda: self._view(x), step=self.step, total_steps=self.total_steps)
            with self.autocast:
                return self.method.batch_loss(self.method_net, batch).float()
        xs = [self._view(x) for _ in range(self.views)]
        with self.autocast:
            zs = [self.forward(v).float() for v in xs]
        if not self.use_labels:
            # a loss with per-sample state (isogclr) is told which training rows the batch holds
            return self.loss(zs[0], zs[1], *([idx] if getattr(self.loss, "indexed", False) else []))
        if len(zs) == 2:
            return self.loss(torch.cat(zs), torch.cat([y, y]))
        return self.loss(zs[0], y)

    def _two_modality_loss(self, h: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Both encoders' embeddings of the batch (the second modality's rows by the same ids) into the loss."""
        x2 = self.x2[idx]
        if not self.data_on_device:
            x2 = x2.pin_memory().to(self.device, non_blocking=True)
        with self.autocast:
            z_a = self.forward(h).float()
            z_b = self.second.embed_from(self.second.preprocess(x2)).float()
        return self.loss(z_a, z_b, y, epoch=self.step // self.steps_per_epoch, epochs=self.spec.train.epochs)

    def _embed(self, data: Dataset, side: str) -> torch.Tensor:
        """One side's evaluated embeddings: the encoder's, or with two modalities their fusion (`fuse`)."""
        z = embed(self.net.encoder, getattr(data, f"x_{side}"), self.device)
        if self.second is None:
            return z
        return fuse(z, embed(self.second, getattr(data, f"x2_{side}"), self.device))

    def _autocast_forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.forward(x)

    def cached_loss(self, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        """The plain objective's loss with its gradient already accumulated, `chunk` rows at a time.

        The views are drawn for the whole batch first, as the plain path draws
        them, so the cached run sees the same inputs.
        """
        x, y = self._fetch(idx)
        x = self.net.encoder.preprocess(x)
        inputs = torch.cat([self._view(x) for _ in range(self.views)])
        labels = y.repeat(self.views) if self.use_labels else None
        return cached_backward(self.net, self._autocast_forward, inputs, chunk,
                               lambda z: embedding_loss_grad(self.loss, z, labels, chunk))

    def after_step(self) -> None:
        if self.method is not None and self.mixing():
            self.method.after_step(self.net)

    def evaluate(self) -> dict[str, float]:
        """The spec's metrics on the test split; with a validation set, on it (as `val/<metric>`) instead.

        Evaluations during training read the validation set alone, so nothing chosen
        from them (a sweep's pruning, its best trial) has seen the test split; the
        final evaluation reports both, the test metrics under their usual names.
        """
        if self.ranks.rank != 0:
            return {}  # rank 0 reports for the group; the weights are the same on every rank
        values: dict[str, float] = {}
        if self.data.x_val is not None:
            values = {f"{VALIDATION_PREFIX}{k}": v for k, v in self._metrics_on(self.data.validation_view()).items()}
        if self.data.x_val is None or self.step >= self.total_steps:
            values |= self._metrics_on(self.data)
        if hasattr(self.loss, "extra_metrics"):
            values |= self.loss.extra_metrics()  # a loss's own state (isogclr's temperatures)
        return values

    def _metrics_on(self, data: Dataset) -> dict[str, float]:
        """The spec's metrics with `data`'s test side as the queries (its training side is the gallery)."""
        # Metrics a mixing method owns (ECE of its head, utilization, ...) come from the method.
        names = [m for m in self.spec.eval.metrics if not catalog.METRICS[m].extra.get("from_methods")]
        train = None
        if USES_TRAIN & set(names):
            train = (self._embed(data, "train"), data.y_train)
        test_emb = self._embed(data, "test")
        values = evaluate(names, train=train, test=(test_emb, data.y_test),
                          recall_k=tuple(self.spec.eval.recall_k), knn_k=self.spec.eval.knn_k,
                          knn_temperature=self.spec.eval.knn_temperature, seed=self.spec.train.seed)
        if self.method is not None:
            values |= self.method.extra_metrics(self.net.encoder, data, self.device)
        return values
