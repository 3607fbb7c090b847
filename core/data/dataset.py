"""The in-memory dataset the engine trains on."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

Task = Literal["classification", "regression"]


@dataclass
class Outliers:
    """Rows of classes held out of the in-distribution data as a real outlier set (MixOE's outliers 'holdout').

    `classes` are their class indices (the largest of the data's); `x_train` (their
    training-split rows) is the pool mixed in training, `x_test` (their test-split
    rows) the out-of-distribution test set. None of these rows is in x_train / x_test.
    """

    classes: list[int]
    x_train: torch.Tensor
    x_test: torch.Tensor
    x_val: torch.Tensor | None = None  # the pool's share held out with the validation set (validation_fraction)


@dataclass
class Dataset:
    """Train and test arrays as CPU tensors, plus what the model card must record about them.

    `y_*` are int64 class indices for classification, float32 targets for regression,
    or None for unlabelled data. `class_names[i]` is the original label of index i.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    task: Task | None
    source: str
    class_names: list[str] | None = None
    split: dict[str, Any] = field(default_factory=dict)
    outliers: Outliers | None = None
    # The validation set carved from the training side (dataset.split.validation_fraction), or None.
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def validation_view(self) -> Dataset:
        """This data with the validation set where the test set was: what evaluations that choose settings read.

        Training rows are unchanged, the test split is gone from the view, and
        a real outlier set's validation share stands in for its test rows.
        """
        if self.x_val is None:
            raise ValueError("the data has no validation set (dataset.split.validation_fraction is not set)")
        outliers = self.outliers
        if outliers is not None and outliers.x_val is not None:
            outliers = replace(outliers, x_test=outliers.x_val, x_val=None)
        return replace(self, x_test=self.x_val, y_test=self.y_val, x_val=None, y_val=None, outliers=outliers,
                       source=f"{self.source} (validation)", split={**self.split, "evaluated_on": "validation"})

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.task != "classification" or self.y_train is None:
            return None
        return int(max(self.y_train.max(), self.y_test.max() if self.y_test is not None and len(self.y_test) else 0)) + 1

    def describe(self) -> dict[str, Any]:
        """What the model card and the API show about the data."""
        return {
            "source": self.source,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "input_dtype": str(self.x_train.dtype).removeprefix("torch."),
            "train_rows": len(self.x_train),
            "test_rows": len(self.x_test),
            **({"validation_rows": len(self.x_val)} if self.x_val is not None else {}),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "split": self.split,
        }
