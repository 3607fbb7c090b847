"""JobSpec: the one contract shared by the API, the worker and the CLI.

Every field has bounds and a default that works, unknown fields are refused, and
`validate_spec` adds the checks that need the catalog (names, parameters, whether
a loss can run on a dataset) so that a bad spec fails before any training starts,
with an error that names the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embedmix.core import catalog
from embedmix.core.errors import SpecError

class Strict(BaseModel):
    """Unknown fields are refused, and so are NaN and infinities in every number, params blocks included:
    a range check is false for NaN, and PostgreSQL's JSONB cannot store either."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SplitSpec(Strict):
    """How the test set is made: a random stratified share, held-out classes (open set), or the file's own test arrays;
    and, optionally, the validation share carved from what is left for training."""

    kind: Literal["random", "classes", "given"] = "random"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    holdout_classes: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, max_length=100_000)
    # A share of the training side held out (seeded, stratified by class) to choose settings on: evaluations
    # during training and a sweep's metric read it, as `val/<metric>`; the final test metrics are unchanged.
    validation_fraction: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _classes_need_holdout(self) -> SplitSpec:
        if self.kind == "classes" and not self.holdout_classes:
            raise ValueError("split kind 'classes' needs holdout_classes")
        if self.kind != "classes" and self.holdout_classes:
            raise ValueError("holdout_classes is only used with split kind 'classes'")
        return self


VALIDATION_PREFIX = "val/"  # a metric measured on the validation set (dataset.split.validation_fraction)


def selection_metric(spec: dict[str, Any], metric: str) -> str:
    """The name a run of the resolved `spec` reports `metric` under for choosing settings (a sweep's trials).

    With a validation set that is `val/<metric>`, measured on it, so no choice is
    made on the test split; without one, the test metric itself. During training
    the series is `eval/` + this name.
    """
    split = spec.get("dataset", {}).get("split", {})
    return f"{VALIDATION_PREFIX}{metric}" if split.get("validation_fraction") is not None else metric


class DatasetSpec(Strict):
    """Exactly one of: a built-in `name`, an uploaded dataset `id`, or a local `path` (CLI only)."""

    name: str | None = Field(None, max_length=64)
    id: str | None = Field(None, pattern=r"^ds_[A-Za-z0-9]{1,64}$")
    path: str | None = Field(None, max_length=4096)
    label_column: str | None = Field(None, min_length=1, max_length=256)
    size: int | None = Field(None, ge=10, le=10_000_000)
    params: dict[str, float | int] = Field(default_factory=dict, max_length=16)
    split: SplitSpec = Field(default_factory=SplitSpec)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("name", "id", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of name, id or path (got {given or 'none'})")
        return self


INIT_FROM_FIELD = "model.init_from"  # the field errors about a run's starting weights name


class InitFromSpec(Strict):
    """Where a run's encoder starts: exactly one of a finished job's trained encoder or an exported file.

    The weights are loaded as they are (strictly: every tensor, with its shape), so
    the model must have the same architecture and input shape as the one that made them.
    """

    job: str | None = Field(None, min_length=1, max_length=64,
                            description="a succeeded job of the same owner in the service (job_...), whose "
                                        "exported safetensors encoder the run starts from")
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="an exported encoder .safetensors file, for the local `embedmix train` only")

    @model_validator(mode="after")
    def _one_source(self) -> InitFromSpec:
        given = [k for k in ("job", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of job or path (got {given or 'none'})")
        return self


class ModelSpec(Strict):
    encoder: str = "mlp"
    embedding_dim: int = Field(128, ge=2, le=8192)
    width: int | None = Field(None, ge=4, le=8192, description="hidden units (mlp) or channels (conv); None: the encoder's default "
                                                                "(text encoders have a fixed architecture: leave it out)")
    params: dict[str, float | int] = Field(default_factory=dict, max_length=16)
    projection_dim: int | None = Field(None, ge=2, le=8192, description="training-only projection head; None for none")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_from: InitFromSpec | None = Field(None, description="start the encoder from these trained weights (the same "
                                                             "architecture and input shape); None: a fresh encoder "
                                                             "(or a text encoder's pretrained weights)")


class ObjectiveSpec(Strict):
    loss: str = "supcon"
    params: dict[str, float | int | bool | str] = Field(default_factory=dict, max_length=16)
    views: Literal[1, 2] | None = Field(None, description="views per sample; None takes the loss's default")


_COMMON = "None: the method's default (GET /v1/catalog); refused where the method does not use it"


class MixupUntilSpec(Strict):
    """When mixing stops ("The Benefits of Mixup for Feature Learning": early-stopped mixup): exactly one of
    an epoch or a fraction of the run's steps. From then on the run trains on the objective's plain loss."""

    epoch: int | None = Field(None, ge=1, le=10_000, description="mix during the first `epoch` epochs; below train.epochs")
    fraction: float | None = Field(None, gt=0.0, lt=1.0, description="mix while the step is below fraction x total steps")

    @model_validator(mode="after")
    def _one_point(self) -> MixupUntilSpec:
        given = [k for k in ("epoch", "fraction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of epoch or fraction (got {given or 'none'})")
        return self


class MixupSpec(Strict):
    """The mixing method; `alpha`, `level` and `weight` are common fields that only some methods use."""

    method: str
    alpha: float | None = Field(None, gt=0.0, le=100.0, description=_COMMON)
    level: Literal["input", "manifold", "feature", "embedding"] | None = Field(None, description=_COMMON)
    weight: float | None = Field(None, ge=0.0, le=100.0, description=_COMMON)
    params: dict[str, float | int | bool | str] = Field(default_factory=dict, max_length=16)
    until: MixupUntilSpec | None = Field(None, description="stop mixing at an epoch or a fraction of training and "
                                                           "train unmixed after it; None: mix throughout")


class AugmentSpec(Strict):
    """Batched, on-device augmentations that make the views of two-view objectives."""

    enabled: bool | None = Field(None, description="None: on exactly when the objective uses two views")
    noise_std: float = Field(0.05, ge=0.0, le=10.0)
    max_shift: float = Field(0.1, ge=0.0, le=0.5, description="fraction of the length / side")
    scale_range: float = Field(0.1, ge=0.0, le=0.9)
    mask_fraction: float = Field(0.0, ge=0.0, le=0.9)
    flip: bool = False


class TrainSpec(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=2, le=65_536)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0, le=1000.0)
    step_epochs: int = Field(30, ge=1, le=10_000, description="step schedule: epochs between decays")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    grad_clip: float | None = Field(None, gt=0.0, le=1e6)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast; only on CUDA")
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10_000_000, description="None: once per epoch")
    max_attempts: int = Field(3, ge=1, le=20)
    grad_cache_chunk: int | None = Field(
        None, ge=2, le=65_536,
        description="cached loss (GradCache): embed and backpropagate this many rows at a time, with the whole "
                    "batch's gradient, so batch_size can exceed what fits in memory; None: off")
    compile: bool = Field(False, description="torch.compile the network; if compilation fails, train eagerly and report it")
    samples_per_class: int | None = Field(
        None, ge=1, le=1024,
        description="class-balanced batches: each batch is whole groups of this many same-class samples (batch_size "
                    "a multiple of it), on one device and across ranks alike; None: a random order of all rows")


class EvalSpec(Strict):
    metrics: list[str] | None = Field(None, max_length=32, description="None: the task's defaults")
    every_epochs: int = Field(1, ge=0, le=10_000, description="0: only at the end")
    recall_k: list[Annotated[int, Field(ge=1, le=1000)]] = Field(default_factory=lambda: [1, 4], min_length=1, max_length=8)
    knn_k: int = Field(20, ge=1, le=1000)
    knn_temperature: float = Field(0.07, gt=0.0, le=10.0)


class ExportSpec(Strict):
    formats: list[Literal[tuple(catalog.EXPORT_FORMATS)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(catalog.DEFAULT_EXPORT_FORMATS), min_length=1,
        description="files to export, of catalog.EXPORT_FORMATS")
    onnx_opset: int = Field(18, ge=17, le=23)


class ResourcesSpec(Strict):
    """What a job asks of the workers' hardware; a job asking for more than the service offers is refused at submit."""

    devices: int = Field(1, ge=1, le=64, description="ranks (one per device) that train the job together; "
                         "1 trains in the worker's own process, more launch torch.distributed ranks over one global batch")
    sync_batchnorm: bool = Field(True, description="with devices > 1, batch norm uses the statistics of all ranks' rows "
                                 "(as one device would); off: each rank's own rows")


class JobSpec(Strict):
    name: str = Field("job", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    mixup: MixupSpec | None = None
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


# The DESIGN.md example, verbatim: the API shows it on its /docs page, and
# tests/unit/test_spec.py checks it equals examples/mnist1d-ms-metrix.json.
EXAMPLE_SPEC: dict[str, Any] = {
    "name": "mnist1d-ms-metrix",
    "dataset": {"name": "mnist1d", "split": {"kind": "random", "test_fraction": 0.2}},
    "model": {"encoder": "conv1d", "embedding_dim": 64},
    "objective": {"loss": "multi_similarity"},
    "mixup": {"method": "metrix", "alpha": 2.0, "level": "feature", "weight": 0.4},
    "train": {"epochs": 10, "batch_size": 256, "lr": 0.001, "seed": 0},
    "eval": {"metrics": ["precision_at_1", "map_at_r", "recall_at_k"]},
    "export": {"formats": ["safetensors", "onnx"]},
}


# pydantic names the member of a union (a params value: float | int | bool | str) in the error's location
_UNION_MEMBERS = {"float", "int", "bool", "str"}


def _pydantic_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One error per field, as a dotted path; of a union's failed members, the first one's message."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[-1] in _UNION_MEMBERS:
            loc = loc[:-1]
        field = ".".join(loc) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.setdefault(field, msg)
    return [{"field": field, "message": msg} for field, msg in out.items()]


def _check_params(field: str, given: dict[str, Any], entry: catalog.Entry) -> list[dict[str, str]]:
    errors = []
    known = {p.name: p for p in entry.params}
    for key, value in given.items():
        p = known.get(key)
        where = f"{field}.{key}"
        if p is None:
            errors.append({"field": where, "message": f"unknown parameter for {entry.name!r}; known: {sorted(known) or 'none'}"})
            continue
        ok_type = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}[p.type]
        if isinstance(value, bool) and p.type != "bool" or not isinstance(value, ok_type):
            errors.append({"field": where, "message": f"must be {p.type}"})
        elif p.choices and value not in p.choices:
            errors.append({"field": where, "message": f"must be one of {list(p.choices)}"})
        elif p.min is not None and value < p.min or p.max is not None and value > p.max:
            errors.append({"field": where, "message": f"must be within [{p.min}, {p.max}]"})
    return errors


def _lookup(field: str, name: str, table: dict[str, catalog.Entry]) -> list[dict[str, str]]:
    if name in table:
        return []
    return [{"field": field, "message": f"unknown name {name!r}; choose one of {sorted(table)}"}]


def _size_errors(size: int | None, ds: catalog.Entry) -> list[dict[str, str]]:
    """`dataset.size` is the dataset's own `size` parameter, so it obeys that parameter's range."""
    if size is None:
        return []
    p = next((p for p in ds.params if p.name == "size"), None)
    if p is None:
        return [{"field": "dataset.size", "message": f"{ds.name!r} has a fixed size; leave size out"}]
    if p.min is not None and size < p.min or p.max is not None and size > p.max:
        return [{"field": "dataset.size", "message": f"must be within [{p.min}, {p.max}] for {ds.name!r}"}]
    return []


def _name_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Every name the spec uses exists in the catalog (resolution needs them)."""
    errors = _lookup("model.encoder", spec.model.encoder, catalog.ENCODERS)
    errors += _lookup("objective.loss", spec.objective.loss, catalog.LOSSES)
    if spec.dataset.name is not None:
        errors += _lookup("dataset.name", spec.dataset.name, catalog.DATASETS)
    if spec.mixup is not None:
        errors += _lookup("mixup.method", spec.mixup.method, catalog.MIXUPS)
    for m in spec.eval.metrics or []:
        errors += _lookup("eval.metrics", m, catalog.METRICS)
    return errors


def _usage_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Fields the spec gives that its choices do not use: refused, never ignored (checked before resolution)."""
    errors = []
    if spec.mixup is not None:
        mix = catalog.MIXUPS[spec.mixup.method]
        used = [p.name for p in mix.common]
        for name in ("alpha", "level", "weight"):
            if getattr(spec.mixup, name) is not None and name not in used:
                errors.append({"field": f"mixup.{name}",
                               "message": f"{mix.name!r} does not use {name} (it uses {', '.join(used) or 'none of alpha, level, weight'}); "
                                          "remove it"})
    if spec.dataset.size is not None and "size" in spec.dataset.params:
        errors.append({"field": "dataset.params.size", "message": "give the size once, as dataset.size"})
    return errors


def semantic_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Checks of a resolved spec that need the catalog: parameters fit, the combination can run."""
    loss = catalog.LOSSES[spec.objective.loss]
    errors = _check_params("objective.params", spec.objective.params, loss)
    errors += _check_params("model.params", spec.model.params, catalog.ENCODERS[spec.model.encoder])
    if _is_text_encoder(spec):
        errors += _text_encoder_errors(spec)
    errors += _export_errors(spec)
    if spec.dataset.name is not None:
        ds = catalog.DATASETS[spec.dataset.name]
        errors += _check_params("dataset.params", spec.dataset.params, ds)
        errors += _size_errors(spec.dataset.size, ds)
        errors += compatibility_errors(spec, task=ds.task, input_rank=len(ds.extra["input_shape"]))
    if loss.labels == "none" and spec.objective.views != 2:
        errors.append({"field": "objective.views", "message": f"{loss.name!r} compares two views of each sample; views must be 2"})
    errors += _loss_need_errors(spec, loss)
    errors += _modality_errors(spec, loss)
    if spec.mixup is not None:
        errors += _mixup_errors(spec)
        errors += _block_errors(spec)
        errors += _paired_param_errors(spec)
        errors += _engine_errors(spec)
    errors += _method_metric_errors(spec)
    errors += _batching_errors(spec)
    if spec.train.batch_size < 2 * loss.min_per_class:
        errors.append({"field": "train.batch_size",
                       "message": f"{loss.name!r} needs at least {loss.min_per_class} samples per class in a batch; batch_size must be >= {2 * loss.min_per_class}"})
    return errors


def _batching_errors(spec: JobSpec) -> list[dict[str, str]]:
    """How batches are cut and spread over ranks: what the training loop would otherwise refuse mid-run."""
    errors = []
    per_class = spec.train.samples_per_class
    if per_class is not None and spec.train.batch_size % per_class:
        errors.append({"field": "train.samples_per_class",
                       "message": f"a batch is whole groups of {per_class} same-class samples; "
                                  f"train.batch_size ({spec.train.batch_size}) must be a multiple of it"})
    if spec.resources.devices > 1 and _is_text_encoder(spec):
        errors.append({"field": "resources.devices",
                       "message": "text encoders train on one device; resources.devices must be 1"})
    return errors


def _loss_need_errors(spec: JobSpec, loss: catalog.Entry) -> list[dict[str, str]]:
    """What a loss's catalog entry asks of the run: a fixed view count, ordered parameters, sample indices."""
    errors = []
    if loss.extra.get("fixed_views") and spec.objective.views != loss.views:
        errors.append({"field": "objective.views", "message": f"{loss.name!r} works on {loss.views} views of each sample; views must be {loss.views}"})
    ordered = loss.extra.get("ordered", [])
    values = [spec.objective.params.get(name) for name in ordered]
    for (low, a), (high, b) in zip(zip(ordered, values), zip(ordered[1:], values[1:])):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > b:
            errors.append({"field": f"objective.params.{high}", "message": f"must be >= {low} ({a}) for {loss.name!r}"})
    if loss.extra.get("sample_index") and spec.train.grad_cache_chunk is not None:
        errors.append({"field": "train.grad_cache_chunk",
                       "message": f"{loss.name!r} updates per-sample state once per batch; the cached loss cannot run it, remove this field"})
    return errors


def _modality_errors(spec: JobSpec, loss: catalog.Entry) -> list[dict[str, str]]:
    """Two-modality losses (m3col) and two-modality data go together; such a run trains its own pair of encoders.

    The loss mixes its own embeddings and embeds each modality itself, so the switches that wrap one
    encoder's forward pass (mixing methods, a projection head, augmented views, the cached loss, several
    devices) are refused; so are the export formats that cannot carry both encoders.
    """
    two = loss.extra.get("modalities") == 2
    data = catalog.DATASETS.get(spec.dataset.name or "")
    if not two:
        if data is not None and data.extra.get("modalities") == 2:
            losses = sorted(n for n, e in catalog.LOSSES.items() if e.extra.get("modalities") == 2)
            return [{"field": "objective.loss",
                     "message": f"{data.name!r} has two modalities; train it with a two-modality loss: {losses}"}]
        return []
    errors = []
    if data is not None and data.extra.get("modalities") != 2:
        two_sets = sorted(n for n, e in catalog.DATASETS.items() if e.extra.get("modalities") == 2)
        errors.append({"field": "dataset.name",
                       "message": f"{loss.name!r} trains on two modalities; {data.name!r} has one (use {two_sets}, "
                                  "or upload an npz with arrays x and x2)"})
    refused = {"mixup.method": spec.mixup is not None, "model.projection_dim": spec.model.projection_dim is not None,
               "augment.enabled": spec.augment.enabled, "train.grad_cache_chunk": spec.train.grad_cache_chunk is not None,
               "resources.devices": spec.resources.devices > 1}
    errors += [{"field": field, "message": f"{loss.name!r} embeds and mixes both modalities itself; remove this "
                                           "field (or set it to its default)"} for field, given in refused.items() if given]
    formats = loss.extra.get("export_formats", [])
    errors += [{"field": "export.formats", "message": f"{f!r} cannot carry {loss.name!r}'s two encoders; use {formats}"}
               for f in spec.export.formats if f not in formats]
    return errors


def _mixup_errors(spec: JobSpec) -> list[dict[str, str]]:
    """The mixing method's own parameters, and whether it can mix at this level with this loss."""
    mix = catalog.MIXUPS[spec.mixup.method]
    errors = _check_params("mixup.params", spec.mixup.params, mix)
    losses = mix.extra.get("losses", [])
    if spec.objective.loss not in losses:
        errors.append({"field": "mixup.method",
                       "message": f"{mix.name!r} cannot be combined with objective.loss {spec.objective.loss!r}; it works with {losses}"})
    levels = list(mix.levels())
    if spec.mixup.level is not None and spec.mixup.level not in levels:
        errors.append({"field": "mixup.level", "message": f"{mix.name!r} mixes at {levels}, not {spec.mixup.level!r}"})
    if mix.views == 2 and spec.objective.views != 2:
        errors.append({"field": "mixup.method", "message": f"{mix.name!r} works on two views of each sample; use objective.views = 2"})
    until = spec.mixup.until
    if until is not None and until.epoch is not None and until.epoch >= spec.train.epochs:
        errors.append({"field": "mixup.until.epoch",
                       "message": f"the run has {spec.train.epochs} epochs, so mixing until epoch {until.epoch} never stops; "
                                  f"choose an epoch below {spec.train.epochs}, or leave until out to mix throughout"})
    return errors


def _paired_param_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Method parameters that mean something only with another one's value: refused, never ignored."""
    p = spec.mixup.params
    errors = []
    if p.get("mixed_pairs") is False and p.get("pos_pairs") == "all":
        errors.append({"field": "mixup.params.pos_pairs",
                       "message": "chooses which mix-pos pairs are made; with mixed_pairs false none are: remove it"})
    classes = p.get("outlier_classes", 0)
    if type(classes) is not int:
        return errors  # _check_params reports it
    field = "mixup.params.outlier_classes"
    if p.get("outliers") != "holdout":
        if classes:
            errors.append({"field": field, "message": "is only used with outliers 'holdout'; remove it or set outliers to 'holdout'"})
        return errors
    if classes == 0:  # a negative count is _check_params' to report
        errors.append({"field": field, "message": "outliers 'holdout' needs outlier_classes >= 1: how many classes "
                                                  "(the largest class ids) are held out of training as the outlier set"})
    known = _builtin_class_count(spec.dataset)
    if known is not None and classes > known - 2:
        errors.append({"field": field, "message": f"{spec.dataset.name!r} has {known} classes; holding out {classes} "
                                                  f"leaves fewer than 2 to train on (at most {known - 2})"})
    if spec.dataset.split.kind == "classes":
        errors.append({"field": "dataset.split.kind",
                       "message": "outliers 'holdout' scores the head on its own classes' test rows; split kind 'classes' "
                                  "tests on classes the head never saw: use 'random' or 'given'"})
    return errors


def _builtin_class_count(ds: DatasetSpec) -> int | None:
    """The number of classes of a built-in dataset, where the catalog or its parameters say it; None otherwise."""
    if ds.name is None:
        return None
    count = ds.params.get("num_classes", catalog.DATASETS[ds.name].extra.get("num_classes"))
    return None if count is None else int(count)


# The blocks core.models.encoders builds, which a mixing method's `block` parameter indexes:
# `depth` of them, plus a final pooling block for the convolutional encoders; resnet18's are fixed.
_BLOCKS_AFTER_DEPTH = {"mlp": 0, "conv1d": 1, "conv2d": 1}
_FIXED_BLOCKS = {"resnet18": 6}


def _block_errors(spec: JobSpec) -> list[dict[str, str]]:
    """A `block` the encoder has: found here rather than as an internal error at the first training step."""
    block = spec.mixup.params.get("block")
    count = _encoder_blocks(spec.model)
    if type(block) is not int or count is None or block < count:
        return []  # a block of the wrong type is _check_params' to report
    return [{"field": "mixup.params.block",
             "message": f"{spec.model.encoder!r} has {count} blocks here (0..{count - 1}); "
                        f"choose one of them, or -1 to draw one per step"}]


def _encoder_blocks(model: ModelSpec) -> int | None:
    """How many blocks the resolved model's encoder has; None for an encoder without blocks to mix (text)."""
    if model.encoder in _FIXED_BLOCKS:
        return _FIXED_BLOCKS[model.encoder]
    if model.encoder not in _BLOCKS_AFTER_DEPTH:
        return None
    return int(model.params["depth"]) + _BLOCKS_AFTER_DEPTH[model.encoder]


def _engine_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Engine switches that wrap the plain objective's forward pass; a mixing method runs its own."""
    errors = []
    if spec.train.grad_cache_chunk is not None:
        errors.append({"field": "train.grad_cache_chunk",
                       "message": "the cached loss works on the plain objective; remove the mixup block or this field"})
    if spec.train.compile:
        errors.append({"field": "train.compile", "message": "compilation applies to the plain objective; remove the mixup block or this field"})
    return errors


def _method_metric_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Metrics that only a mixing method can compute (it owns the classifier head or the mixed points)."""
    method = spec.mixup.method if spec.mixup is not None else None
    errors = []
    for m in spec.eval.metrics or []:
        owners = catalog.METRICS[m].extra.get("from_methods")
        if owners and method not in owners:
            errors.append({"field": "eval.metrics", "message": f"{m!r} is computed by the mixing methods {owners}; set mixup.method to one of them"})
    return errors


def label_need(spec: JobSpec) -> str:
    """The labels the run needs: a mixing method that works on regression targets overrides its loss's need."""
    if spec.mixup is not None and catalog.MIXUPS[spec.mixup.method].labels == "target":
        return "target"
    return catalog.LOSSES[spec.objective.loss].labels


def compatibility_errors(spec: JobSpec, *, task: str | None, input_rank: int) -> list[dict[str, str]]:
    """Whether the loss, encoder, mixing method and metrics can run on data of this task and input rank.

    `task` is 'classification', 'regression' or None (no labels); rank 0 is text.
    Used for built-in datasets at validation time and for files once they are loaded.
    """
    if input_rank == 0 or _is_text_encoder(spec):
        return text_pair_errors(spec, is_text=input_rank == 0)
    errors = _label_errors(spec, task) + _rank_errors(spec, input_rank)
    if spec.train.samples_per_class is not None and task != "classification":
        errors.append({"field": "train.samples_per_class",
                       "message": f"class-balanced batches need class labels, but the dataset has {task or 'no labels'}"})
    if spec.mixup is not None:
        errors += _mixup_data_errors(spec, task, input_rank)
    return errors + _metric_task_errors(spec, task)


def _label_errors(spec: JobSpec, task: str | None) -> list[dict[str, str]]:
    """The labels the loss (or the mixing method) needs, against the data's."""
    loss = catalog.LOSSES[spec.objective.loss]
    need = label_need(spec)
    errors = []
    if need == "target" and task != "regression":
        errors.append({"field": "objective.loss" if spec.mixup is None else "mixup.method",
                       "message": f"the run needs regression targets, but the dataset has {task or 'no labels'}"})
    if need == "class" and task != "classification":
        what = "regression targets" if task == "regression" else "no labels"
        errors.append({"field": "objective.loss", "message": f"{loss.name!r} needs class labels, but the dataset has {what}"})
    if loss.labels == "optional" and spec.objective.views == 1 and task != "classification":
        errors.append({"field": "objective.views",
                       "message": f"{loss.name!r} with one view uses class labels as positives; the dataset has none, so use views = 2"})
    return errors


def _rank_errors(spec: JobSpec, input_rank: int) -> list[dict[str, str]]:
    ranks = catalog.ENCODERS[spec.model.encoder].extra["input_rank"]
    if ranks == "any" or input_rank in ranks:
        return []
    return [{"field": "model.encoder",
             "message": f"{spec.model.encoder!r} takes inputs of rank {ranks}, the dataset's samples have rank {input_rank}"}]


def _mixup_data_errors(spec: JobSpec, task: str | None, input_rank: int) -> list[dict[str, str]]:
    """What the mixing method mixes (class labels, targets; images) against the data."""
    mix = catalog.MIXUPS[spec.mixup.method]
    errors = []
    need = {"class": "classification", "target": "regression"}.get(mix.labels)
    if need is not None and task != need:
        errors.append({"field": "mixup.method",
                       "message": f"{mix.name!r} mixes {'class labels' if need == 'classification' else 'regression targets'}; "
                                  f"the dataset is {task or 'unlabelled'}"})
    ranks = mix.extra.get("input_rank")
    if ranks is not None and input_rank not in ranks:
        errors.append({"field": "mixup.method",
                       "message": f"{mix.name!r} mixes inputs of rank {ranks} (images: channels, height, width); "
                                  f"the dataset's samples have rank {input_rank}"})
    return errors


def _metric_task_errors(spec: JobSpec, task: str | None) -> list[dict[str, str]]:
    errors = []
    for m in spec.eval.metrics or []:
        need = catalog.METRICS[m].task
        if need is not None and need != task:
            errors.append({"field": "eval.metrics", "message": f"{m!r} is a {need} metric; the dataset is {task or 'unlabelled'}"})
    return errors


def _is_text_encoder(spec: JobSpec) -> bool:
    return catalog.ENCODERS[spec.model.encoder].extra.get("input") == "text"


def text_pair_errors(spec: JobSpec, *, is_text: bool) -> list[dict[str, str]]:
    """Text pairs and text encoders go together, with a two-view loss, no mixing, and pair metrics.

    ``is_text``: the dataset is text pairs (each sample one string, rank 0).
    """
    pairs = catalog.TEXT_PAIRS
    if not is_text:
        return [{"field": "model.encoder",
                 "message": f"{spec.model.encoder!r} encodes text; train it on an uploaded .{pairs['format']} "
                            "text-pairs dataset (dataset.id)"}]
    if not _is_text_encoder(spec):
        text = sorted(n for n, e in catalog.ENCODERS.items() if e.extra.get("input") == "text")
        return [{"field": "model.encoder", "message": f"the dataset is text pairs; use a text encoder: {text}"}]
    errors = []
    if spec.objective.loss not in pairs["losses"]:
        errors.append({"field": "objective.loss",
                       "message": f"text pairs train a two-view loss (anchor and positive): one of {pairs['losses']}"})
    if spec.mixup is not None:
        errors.append({"field": "mixup.method", "message": "mixing methods do not apply to text pairs; remove the mixup block"})
    if spec.dataset.split.kind != "random":
        errors.append({"field": "dataset.split.kind", "message": "text pairs are split at random; use kind 'random'"})
    for m in spec.eval.metrics or []:
        if m not in pairs["metrics"]:
            errors.append({"field": "eval.metrics", "message": f"{m!r} does not apply to text pairs; use {pairs['metrics']}"})
    return errors


def _text_encoder_errors(spec: JobSpec) -> list[dict[str, str]]:
    """What a text encoder cannot do, whatever the data: other sizes, the array-engine switches."""
    entry = catalog.ENCODERS[spec.model.encoder]
    errors = []
    if spec.model.embedding_dim != entry.extra["embedding_dim"]:
        errors.append({"field": "model.embedding_dim",
                       "message": f"{entry.name!r} embeds into {entry.extra['embedding_dim']} dimensions; set embedding_dim to that"})
    for field in ("width", "projection_dim"):
        if getattr(spec.model, field) is not None:
            errors.append({"field": f"model.{field}", "message": f"{entry.name!r} has a fixed architecture; leave {field} out"})
    if spec.model.dropout:
        errors.append({"field": "model.dropout", "message": f"{entry.name!r} keeps its own dropout (0.1); leave dropout at 0"})
    if spec.train.compile:
        errors.append({"field": "train.compile", "message": f"not available for {entry.name!r}; leave it out"})
    return errors


def _export_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Formats only a text encoder can write (a sentence-transformers folder holds a transformer and its tokenizer)."""
    if _is_text_encoder(spec):
        return []
    text_only = [f for f in spec.export.formats if catalog.EXPORT_FORMATS[f].text_only]
    text = sorted(n for n, e in catalog.ENCODERS.items() if e.extra.get("input") == "text")
    return [{"field": "export.formats", "message": f"{f!r} is exported by text encoders ({text}) only; "
                                                   f"{spec.model.encoder!r} is not one"} for f in text_only]


# ------------------------------------------------------------------ resolution


def resolve(spec: JobSpec) -> JobSpec:
    """The spec with every default the catalog states written into it: what a job stores and runs.

    Loss, encoder, dataset and mixing-method parameters, the method's common fields
    (alpha, level, weight: only those it uses), encoder width, views, whether views
    are augmented, and the evaluation metrics where the task is known without the
    data (built-in datasets, text encoders; `resolve_for_task` fills them once an
    upload or file says its task). Builders read only the resolved spec, so this is
    the one place a default reaches a run. Idempotent; names must exist.
    """
    loss = catalog.LOSSES[spec.objective.loss]
    views = spec.objective.views or loss.views
    update: dict[str, Any] = {
        "dataset": _resolved_dataset(spec.dataset),
        "model": resolve_model(spec.model),
        "objective": spec.objective.model_copy(update={"params": loss.complete(spec.objective.params), "views": views}),
        "augment": spec.augment.model_copy(update={
            "enabled": views == 2 if spec.augment.enabled is None else spec.augment.enabled}),
    }
    if spec.mixup is not None:
        mix = catalog.MIXUPS[spec.mixup.method]
        given = {name: getattr(spec.mixup, name) for name in mix.common_defaults() if getattr(spec.mixup, name) is not None}
        update["mixup"] = spec.mixup.model_copy(update={**mix.common_defaults(), **given, "params": mix.complete(spec.mixup.params)})
    resolved = spec.model_copy(update=update)
    if _is_text_encoder(spec):
        return _with_metrics(resolved, catalog.TEXT_PAIRS["default_metrics"])
    if spec.dataset.name is not None:
        return resolve_for_task(resolved, catalog.DATASETS[spec.dataset.name].task)
    return resolved


def resolve_model(model: ModelSpec) -> ModelSpec:
    """The encoder's parameters and width completed (also for model files exported before specs were resolved)."""
    encoder = catalog.ENCODERS[model.encoder]
    return model.model_copy(update={"params": encoder.complete(model.params),
                                    "width": model.width or encoder.extra.get("default_width")})


def resolve_for_task(spec: JobSpec, task: str | None) -> JobSpec:
    """A resolved spec with the evaluation metrics of data of this task when it asks for none."""
    return _with_metrics(spec, catalog.default_metrics(task))


def _with_metrics(spec: JobSpec, metrics: list[str]) -> JobSpec:
    if spec.eval.metrics is not None:
        return spec
    return spec.model_copy(update={"eval": spec.eval.model_copy(update={"metrics": list(metrics)})})


def _resolved_dataset(ds: DatasetSpec) -> DatasetSpec:
    """A built-in dataset's parameters completed; its size, a parameter of some, lives in `dataset.size`."""
    if ds.name is None:
        return ds
    params = catalog.DATASETS[ds.name].complete(ds.params)
    size = params.pop("size", None)
    return ds.model_copy(update={"params": params, "size": ds.size if ds.size is not None else size})


def validate_spec(data: dict[str, Any] | str | bytes) -> JobSpec:
    """Parse, resolve and fully validate a spec; return the resolved spec or raise SpecError naming each bad field."""
    try:
        spec = JobSpec.model_validate_json(data) if isinstance(data, (str, bytes)) else JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_errors(exc)) from None
    errors = _name_errors(spec)
    if errors:
        raise SpecError(errors)
    resolved = resolve(spec)
    errors = _usage_errors(spec) + semantic_errors(resolved)
    if errors:
        raise SpecError(errors)
    return resolved


def load_spec_file(path: str | Path) -> JobSpec:
    text = Path(path).read_text()
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([{"field": "spec", "message": f"not valid JSON: {exc}"}]) from None
    return validate_spec(text)
