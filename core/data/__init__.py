"""Data: built-in and user datasets, splits, and on-device augmentation.

`load_dataset(spec)` is the one entry point: it reads or generates the raw arrays,
checks them, splits them, and refuses data the spec's loss cannot train on, all
before any training starts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedmix.core import catalog
from embedmix.core.data.arrays import check_features, check_rows, labels_to_indices
from embedmix.core.data.builtin import load_builtin
from embedmix.core.data.dataset import Dataset, Outliers
from embedmix.core.data.files import read_file
from embedmix.core.data.modalities import SECOND, PairedDataset, paired_from_arrays, two_modality
from embedmix.core.data.split import VALIDATION_FIELD, carve_validation, carve_validation_rows, hold_out_outliers, split
from embedmix.core.data.text_pairs import TextPairs, read_text_pairs, split_pairs
from embedmix.core.errors import DataError, SpecError
from embedmix.core.spec import JobSpec, compatibility_errors

__all__ = ["DataError", "Dataset", "PairedDataset", "TextPairs", "class_count_problem", "dataset_from_arrays", "load_dataset",
           "text_pairs_for"]


def _labels(raw: dict[str, Any], where: str):
    """Map train and test labels together so string classes get one shared index."""
    if raw.get("y") is None:
        return None, None
    y_all = raw["y"] if "y_test" not in raw else np.concatenate([raw["y"], raw["y_test"]])
    idx, task, names = labels_to_indices(np.asarray(y_all), where)
    n = len(raw["y"])
    raw["y"] = idx[:n]
    if "y_test" in raw:
        raw["y_test"] = idx[n:]
    return task, names


def dataset_from_arrays(raw: dict[str, Any], spec: JobSpec, source: str) -> Dataset:
    """Check raw arrays against the spec, split them, and return the tensors to train on."""
    raw = dict(raw)
    raw["x"] = check_features(np.asarray(raw["x"]), f"{source}: x")
    check_rows(raw["x"], raw.get("y"), f"{source}: x/y")
    if raw.get("x_test") is not None:
        raw["x_test"] = check_features(np.asarray(raw["x_test"]), f"{source}: x_test")
        check_rows(raw["x_test"], raw.get("y_test"), f"{source}: x_test/y_test")
        if raw["x_test"].shape[1:] != raw["x"].shape[1:]:
            raise DataError(f"{source}: x_test samples have shape {raw['x_test'].shape[1:]}, x samples {raw['x'].shape[1:]}")
    task, names = _labels(raw, f"{source}: y")
    errors = compatibility_errors(spec, task=task, input_rank=raw["x"].ndim - 1)
    if errors:
        raise SpecError(errors)
    arrays, desc = split(raw, task, spec.dataset.split, spec.train.seed)
    outliers = None
    if _outlier_count(spec):
        arrays, held, held_desc = hold_out_outliers(arrays, _outlier_count(spec), names)
        desc |= held_desc
        outliers = Outliers(held_desc["outlier_classes"], _as_x(held["x_train"]), _as_x(held["x_test"]))
    fraction = spec.dataset.split.validation_fraction
    if fraction is not None:
        arrays, val_desc = carve_validation(arrays, task, fraction, spec.train.seed)
        desc |= val_desc
        if outliers is not None:
            pool, val = carve_validation_rows(outliers.x_train.numpy(), fraction, spec.train.seed)
            outliers = Outliers(outliers.classes, _as_x(pool), outliers.x_test, _as_x(val))
    _check_class_counts(arrays["y_train"], task, spec)
    as_y = (lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)))
    return Dataset(
        x_train=_as_x(arrays["x_train"]),
        y_train=as_y(arrays["y_train"]),
        x_test=_as_x(arrays["x_test"]),
        y_test=as_y(arrays["y_test"]),
        task=task, source=source, class_names=names, split=desc, outliers=outliers,
        x_val=_as_x(arrays["x_val"]) if fraction is not None else None,
        y_val=as_y(arrays["y_val"]) if fraction is not None else None,
    )


def _as_x(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _outlier_count(spec: JobSpec) -> int:
    """How many classes the run holds out of its data as a real outlier set (MixOE's outliers 'holdout'); 0 for none."""
    if spec.mixup is None or spec.mixup.params.get("outliers") != "holdout":
        return 0
    return int(spec.mixup.params["outlier_classes"])


def _check_class_counts(y_train: np.ndarray | None, task: str | None, spec: JobSpec) -> None:
    if task == "classification" and (problem := class_count_problem(Counter(y_train.tolist()), spec)):
        raise DataError(problem)


def class_count_problem(train_per_class: dict[int, int], spec: JobSpec) -> str | None:
    """Why the spec's loss cannot train on classes of these training sizes, or None.

    The worker checks the split it made; the service checks an upload's counts at submit.
    """
    loss = catalog.LOSSES[spec.objective.loss]
    if spec.objective.views == 2:
        return None  # a second view makes every sample its own positive
    need = loss.min_per_class
    small = sorted(c for c, k in train_per_class.items() if 0 < k < need)
    if small:
        return (f"classes {small[:10]} have fewer than {need} training samples; {loss.name!r} needs at least {need} "
                "per class (drop them, gather more, or train with objective.views = 2)")
    if sum(k > 0 for k in train_per_class.values()) < 2 and loss.labels == "class":
        return f"the training set has a single class; {loss.name!r} needs at least two"
    return None


def text_pairs_for(path: Path, spec: JobSpec, source: str) -> TextPairs:
    """A .jsonl file of text pairs, checked against the spec (text encoder, two-view loss) and split."""
    errors = compatibility_errors(spec, task=None, input_rank=0)
    if spec.dataset.split.validation_fraction is not None:
        errors.append({"field": VALIDATION_FIELD, "message": "text pairs carve no validation set; leave it out"})
    if errors:
        raise SpecError(errors)
    return split_pairs(read_text_pairs(path), spec.dataset.split, spec.train.seed, source)


def load_dataset(spec: JobSpec, *, file_path: str | Path | None = None) -> Dataset | TextPairs:
    """The spec's dataset: built-in by name, a local file by `dataset.path`, or `file_path` (an upload the caller resolved).

    A .jsonl file holds text pairs, which come back as `TextPairs` rather than arrays; two-modality
    data (an array `x2`, or a two-modality loss) comes back as a `PairedDataset`.
    """
    ds = spec.dataset
    if ds.name is not None:
        raw = load_builtin(ds.name, ds.size, ds.params)
        source = ds.name
    else:
        path = Path(file_path if file_path is not None else ds.path or "")
        if ds.path is None and file_path is None:
            raise DataError(f"dataset {ds.id} must be resolved to a file by the service before loading")
        if path.suffix == ".jsonl":
            return text_pairs_for(path, spec, ds.id or path.name)
        raw = read_file(path, ds.label_column)
        source = ds.id or path.name
    if raw.get(SECOND) is not None or two_modality(spec):
        return paired_from_arrays(raw, spec, source, dataset_from_arrays)
    return dataset_from_arrays(raw, spec, source)
