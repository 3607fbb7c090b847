"""`dataset.split.validation_fraction`: a seeded share of the training side, apart from the test split.

The validation rows come from training rows only (never a test row), stratified by
class; the plan from counts predicts the carve; evaluations during training read the
validation set alone (`eval/val/<metric>`) and the final metrics carry both, the test
ones under their usual names; a sweep chooses by the validation metric when its base
spec has a validation set; `cli/recipes.py`'s regime uses the same carve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from embedmix.cli.recipes import _train
from embedmix.core.data import load_dataset
from embedmix.core.data.split import VALIDATION_SEED_OFFSET, carve_validation, plan_split, split
from embedmix.core.errors import DataError, SpecError
from embedmix.core.spec import selection_metric
from embedmix.core.spec import SplitSpec, validate_spec
from embedmix.core.train import train


def body(validation: float | None = 0.25, **split: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": {"name": "mnist1d", "size": 300, "split": split},
                           "objective": {"loss": "supcon"}, "train": {"epochs": 2, "batch_size": 64},
                           "eval": {"every_epochs": 1, "metrics": ["precision_at_1"]}}
    if validation is not None:
        out["dataset"]["split"]["validation_fraction"] = validation
    return out


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.numpy()}


class Recorder:
    """Callbacks that keep every metric point."""

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, float]]] = []

    def on_progress(self, progress: Any) -> None: ...
    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None: ...
    def should_stop(self) -> bool:
        return False

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.points.append((epoch, values))


def test_the_resolved_spec_carries_the_fraction_and_leaves_it_null_by_default() -> None:
    assert validate_spec(body(None)).model_dump(mode="json")["dataset"]["split"]["validation_fraction"] is None
    assert validate_spec(body(0.25)).model_dump(mode="json")["dataset"]["split"]["validation_fraction"] == 0.25


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_a_fraction_that_leaves_a_side_empty_is_refused_naming_the_field(fraction: float) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(body(fraction))
    assert [e["field"] for e in err.value.errors] == ["dataset.split.validation_fraction"]


@pytest.mark.parametrize("split_spec", [{}, {"kind": "classes", "holdout_classes": [8, 9]}], ids=["random", "classes"])
def test_validation_rows_come_from_training_rows_only_and_never_overlap_test(split_spec: dict[str, Any]) -> None:
    whole = load_dataset(validate_spec(body(None, **split_spec)))
    carved = load_dataset(validate_spec(body(0.25, **split_spec)))
    assert torch.equal(carved.x_test, whole.x_test)  # the test split is the one drawn without a validation set
    val, train_rows, test = rows(carved.x_val), rows(carved.x_train), rows(carved.x_test)
    assert val and not val & test and not val & train_rows
    assert val | train_rows == rows(whole.x_train)
    assert carved.describe()["validation_rows"] == len(carved.x_val)


def test_the_carve_is_stratified_and_seeded_apart_from_the_test_draw() -> None:
    y = np.repeat(np.arange(4), 20)
    arrays = {"x_train": np.arange(80.0)[:, None], "y_train": y, "x_test": np.zeros((0, 1)), "y_test": y[:0]}
    carved, desc = carve_validation(arrays, "classification", 0.25, seed=3)
    assert np.bincount(carved["y_val"]).tolist() == [5, 5, 5, 5]
    assert desc["validation_seed"] == 3 + VALIDATION_SEED_OFFSET
    again, _ = carve_validation(arrays, "classification", 0.25, seed=3)
    assert np.array_equal(again["x_val"], carved["x_val"])
    as_test, _ = split({"x": arrays["x_train"], "y": y}, "classification", SplitSpec(test_fraction=0.25), 3)
    assert not np.array_equal(np.sort(as_test["x_test"].ravel()), np.sort(carved["x_val"].ravel()))


def test_a_carve_that_empties_a_side_is_a_data_error_naming_the_fraction() -> None:
    arrays = {"x_train": np.zeros((3, 1)), "y_train": None, "x_test": np.zeros((1, 1)), "y_test": None}
    with pytest.raises(DataError, match="validation_fraction of 0.1 of 3 rows leaves the validation set empty"):
        carve_validation(arrays, None, 0.1, seed=0)


@pytest.mark.parametrize("seed", range(4))
def test_the_plan_predicts_the_carve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(4, 30, size=5).tolist()
    y = rng.permutation(np.repeat(np.arange(5), counts))
    spec = SplitSpec(test_fraction=0.2, validation_fraction=0.3)
    arrays, _ = split({"x": rng.normal(size=(len(y), 2)), "y": y}, "classification", spec, seed)
    carved, _ = carve_validation(arrays, "classification", 0.3, seed)
    plan = plan_split(spec, counts, None, len(y), 0)
    assert (plan.train_rows, plan.validation_rows, plan.test_rows) == (
        len(carved["y_train"]), len(carved["y_val"]), len(carved["y_test"]))


def test_evaluations_during_training_read_validation_and_the_final_reports_both() -> None:
    spec = validate_spec(body(0.25))
    data = load_dataset(spec)
    recorder = Recorder()
    result = train(spec, data, recorder)
    evals = [(epoch, values) for epoch, values in recorder.points if any(k.startswith("eval/") for k in values)]
    assert [sorted(v) for _, v in evals[:-1]] == [["eval/val/precision_at_1"]]  # epoch 1: validation alone
    assert sorted(evals[-1][1]) == ["eval/precision_at_1", "eval/val/precision_at_1"]
    assert sorted(result.metrics) == ["precision_at_1", "val/precision_at_1"]
    on_val = train(spec, data.validation_view()).metrics["precision_at_1"]  # the same run, its test side = validation
    assert result.metrics["val/precision_at_1"] == pytest.approx(on_val)


def test_a_sweep_chooses_by_the_validation_metric_when_the_base_spec_has_one() -> None:
    with_val = validate_spec(body(0.25)).model_dump(mode="json")
    without = validate_spec(body(None)).model_dump(mode="json")
    assert selection_metric(with_val, "precision_at_1") == "val/precision_at_1"
    assert selection_metric(without, "precision_at_1") == "precision_at_1"


def test_the_recipes_regime_evaluates_on_the_core_carve_and_never_on_test() -> None:
    record, result = _train(body(None), smoke=False, device="cpu", validation=0.25)
    carved = load_dataset(validate_spec(body(0.25)))
    assert result.spec.dataset.split.validation_fraction == 0.25
    assert record["metrics"]["precision_at_1"] == pytest.approx(
        train(validate_spec(body(0.25)), carved.validation_view()).metrics["precision_at_1"])
    assert not any(k.startswith("val/") for k in record["metrics"])


def test_text_pairs_refuse_a_validation_set(tmp_path: Any) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(f'{{"anchor": "a{i}", "positive": "p{i}"}}\n' for i in range(20)))
    spec = validate_spec({"dataset": {"path": str(path), "split": {"validation_fraction": 0.2}},
                          "model": {"encoder": "minilm", "embedding_dim": 384}, "objective": {"loss": "ntxent", "views": 2},
                          "train": {"epochs": 1, "batch_size": 8}})
    with pytest.raises(SpecError) as err:
        load_dataset(spec)
    assert "dataset.split.validation_fraction" in [e["field"] for e in err.value.errors]
