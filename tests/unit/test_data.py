"""Data loading: built-in sets, splits, user files, and refusing malformed files before training."""

from __future__ import annotations

import pathlib
import pickle
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

import embedmix.core.data.builtin as builtin
from embedmix.core.data import DataError, Dataset, load_dataset
from embedmix.core.spec import SpecError, validate_spec


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Every test gets its own empty dataset cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("EMBEDMIX_CACHE", str(path))
    return path


def make_spec(dataset: dict, **sections):
    return validate_spec({"dataset": dataset, **sections})


def load(dataset: dict, **sections) -> Dataset:
    return load_dataset(make_spec(dataset, **sections))


def load_file(path: pathlib.Path, **dataset) -> Dataset:
    sections = {k: dataset.pop(k) for k in ("objective", "model", "train", "eval") if k in dataset}
    return load({"path": str(path), **dataset}, **sections)


def refused(path: pathlib.Path, *fragments: str, **dataset) -> str:
    """Loading `path` raises DataError whose message holds every fragment; returns the message."""
    with pytest.raises(DataError) as info:
        load_file(path, **dataset)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def rows(*arrays) -> list[tuple]:
    """The rows of the given arrays as a sorted list, to compare sets of samples regardless of order."""
    x = np.concatenate([np.asarray(a, dtype=np.float32).reshape(len(a), -1) for a in arrays])
    return sorted(map(tuple, x.tolist()))


def labelled(n_per_class: dict[int, int], dim: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first column encodes the class (so x and y can be checked to stay paired) plus noise."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in n_per_class.items()])
    x = rng.normal(size=(len(y), dim)).astype(np.float32)
    x[:, 0] = y * 100 + np.arange(len(y)) * 1e-3  # unique rows, class readable from column 0
    return x, y


def assert_paired(data: Dataset):
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert torch.equal(torch.div(x[:, 0], 100, rounding_mode="floor").long(), y)


# --- built-in datasets --------------------------------------------------------------------------


def test_mnist1d_size_shape_and_labels(cache):
    data = load({"name": "mnist1d", "size": 200})
    assert len(data.x_train) + len(data.x_test) == 200
    assert len(data.x_test) == 40  # 20 per class, 0.2 of each
    assert data.input_shape == (40,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert sorted(torch.cat([data.y_train, data.y_test]).unique().tolist()) == list(range(10))
    assert data.task == "classification" and data.num_classes == 10 and data.source == "mnist1d"
    assert torch.isfinite(data.x_train).all()
    assert (cache / "mnist1d-200-42.npz").is_file()


def test_mnist1d_size_param_and_field_agree():
    a = load({"name": "mnist1d", "size": 300})
    b = load({"name": "mnist1d", "params": {"size": 300}})
    assert len(a.x_train) + len(a.x_test) == 300
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_mnist1d_is_deterministic_across_fresh_caches(tmp_path, monkeypatch):
    first = builtin.mnist1d(200)
    monkeypatch.setenv("EMBEDMIX_CACHE", str(tmp_path / "other-cache"))
    second = builtin.mnist1d(200)  # generated again, not read from the first cache
    assert (tmp_path / "other-cache" / "mnist1d-200-42.npz").is_file()
    np.testing.assert_array_equal(first["x"], second["x"])
    np.testing.assert_array_equal(first["y"], second["y"])
    assert first["x"].shape == (200, 40) and first["x"].dtype == np.float32
    # the generator's seed matters: another seed gives other samples
    assert not np.array_equal(builtin.mnist1d(200, seed=7)["x"], first["x"])


def test_mnist1d_cache_file_is_reused(cache, monkeypatch):
    first = builtin.mnist1d(200)
    cached = cache / "mnist1d-200-42.npz"
    with np.load(cached) as f:
        np.testing.assert_array_equal(f["x"], first["x"])
    # a second load must not run the generator at all
    import mnist1d.data

    def boom(*a, **k):
        raise AssertionError("generator ran although the cache holds the arrays")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    again = builtin.mnist1d(200)
    np.testing.assert_array_equal(again["x"], first["x"])
    # and what it returns is the cached file's content
    np.savez(cached, x=np.full((200, 40), 7.0, dtype=np.float32), y=np.zeros(200, dtype=np.int64))
    assert (builtin.mnist1d(200)["x"] == 7.0).all()
    assert not list(cache.glob("*.tmp*")), "temporary files left in the cache"


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    builtin.mnist1d(100)  # a cache miss runs mnist1d's generator, which reseeds the global RNGs
    assert (np.random.rand(), random.random()) == expected


def test_digits_are_images():
    data = load({"name": "digits"}, model={"encoder": "conv2d"})
    assert data.input_shape == (1, 8, 8)
    assert data.x_train.ndim == 4
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.num_classes == 10
    assert float(data.x_train.max()) == 16.0 and float(data.x_train.min()) == 0.0


def test_diabetes_is_regression_with_float_targets():
    data = load({"name": "diabetes"}, objective={"loss": "barlow_twins"})
    assert data.task == "regression" and data.num_classes is None and data.class_names is None
    assert data.y_train.dtype == torch.float32
    assert len(data.x_train) + len(data.x_test) == 442
    assert data.input_shape == (10,)
    y = torch.cat([data.y_train, data.y_test])
    assert not torch.equal(y, y.round()) or len(y.unique()) > 100  # real-valued targets, not classes
    assert 20 <= float(y.min()) and float(y.max()) <= 400
    assert data.split["stratified"] is False
    assert len(data.x_test) == round(0.2 * 442)


@pytest.mark.parametrize("size,classes,features", [(10, 2, 1), (37, 3, 5), (5000, 10, 32)])
def test_blobs_any_size(size, classes, features):
    data = load({"name": "blobs", "size": size, "params": {"num_classes": classes, "num_features": features}},
                objective={"loss": "ntxent"})  # two views: no per-class minimum for tiny sizes
    assert len(data.x_train) + len(data.x_test) == size
    assert data.input_shape == (features,)
    assert set(torch.cat([data.y_train, data.y_test]).tolist()) == set(range(classes))


def test_blobs_clusters_are_separable():
    raw = builtin.blobs(600, 3, 8, cluster_std=0.1)
    centres = np.stack([raw["x"][raw["y"] == c].mean(0) for c in range(3)])
    nearest = np.argmin(((raw["x"][:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == raw["y"]).all()


# --- splits ---------------------------------------------------------------------------------------


def test_random_split_is_stratified(tmp_path):
    x, y = labelled({0: 10, 1: 33, 2: 57, 3: 100})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    fraction = 0.3
    data = load_file(tmp_path / "d.npz", split={"kind": "random", "test_fraction": fraction})
    train, test = Counter(data.y_train.tolist()), Counter(data.y_test.tolist())
    for c, n in {0: 10, 1: 33, 2: 57, 3: 100}.items():
        assert abs(test[c] - fraction * n) <= 1, (c, test[c])
        assert train[c] + test[c] == n
    assert data.split == {"kind": "random", "test_fraction": 0.3, "seed": 0, "stratified": True}
    assert_paired(data)
    assert rows(data.x_train, data.x_test) == rows(x)


def test_random_split_is_deterministic_for_the_seed(tmp_path):
    x, y = labelled({0: 40, 1: 40, 2: 40})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a = load_file(tmp_path / "d.npz", train={"seed": 5})
    b = load_file(tmp_path / "d.npz", train={"seed": 5})
    c = load_file(tmp_path / "d.npz", train={"seed": 6})
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)
    assert a.split["seed"] == 5


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_random_split_respects_test_fraction(fraction):
    data = load({"name": "blobs", "size": 1000, "params": {"num_classes": 4},
                 "split": {"kind": "random", "test_fraction": fraction}})
    assert len(data.x_train) + len(data.x_test) == 1000
    assert abs(len(data.x_test) - fraction * 1000) <= 4  # within one sample per class


def test_random_split_of_unlabelled_regression_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "u.npz", x=x)
    data = load_file(tmp_path / "u.npz", objective={"loss": "barlow_twins"}, split={"test_fraction": 0.2})
    assert data.task is None and data.y_train is None and data.y_test is None
    assert len(data.x_test) == 10 and len(data.x_train) == 40
    assert rows(data.x_train, data.x_test) == rows(x)


def test_class_holdout_puts_exactly_those_classes_in_test():
    data = load({"name": "blobs", "size": 500, "split": {"kind": "classes", "holdout_classes": [7, 8, 9]}})
    assert set(data.y_test.tolist()) == {7, 8, 9}
    assert set(data.y_train.tolist()) == set(range(7))
    assert len(data.x_train) + len(data.x_test) == 500
    assert len(data.x_test) == 150  # blobs has 50 of each of its 10 classes
    assert data.split == {"kind": "classes", "holdout_classes": [7, 8, 9]}


def test_class_holdout_of_a_missing_class_fails():
    with pytest.raises(DataError, match=r"holdout_classes \[42\] do not occur"):
        load({"name": "blobs", "size": 100, "split": {"kind": "classes", "holdout_classes": [3, 42]}})


def test_class_holdout_of_every_class_fails():
    with pytest.raises(DataError, match="every class"):
        load({"name": "blobs", "size": 100, "params": {"num_classes": 2}, "split": {"kind": "classes", "holdout_classes": [0, 1]}})


def test_given_split_uses_the_files_own_test_arrays(tmp_path):
    x, y = labelled({0: 20, 1: 20}, seed=1)
    xt, yt = labelled({0: 5, 1: 7}, seed=2)
    xt[:, 1] += 1000  # mark the test rows
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    data = load_file(tmp_path / "d.npz", split={"kind": "given"})
    assert torch.equal(data.x_train, torch.from_numpy(x)) and torch.equal(data.y_train, torch.from_numpy(y))
    assert torch.equal(data.x_test, torch.from_numpy(xt)) and torch.equal(data.y_test, torch.from_numpy(yt))
    assert data.split == {"kind": "given"}
    # a random split of the same file pools both parts and draws afresh
    pooled = load_file(tmp_path / "d.npz", split={"kind": "random", "test_fraction": 0.5})
    assert len(pooled.x_train) + len(pooled.x_test) == 52
    assert rows(pooled.x_train, pooled.x_test) == rows(x, xt)


def test_given_split_without_test_arrays_fails(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    refused(tmp_path / "d.npz", "'given' needs a test set", split={"kind": "given"})
    with pytest.raises(DataError, match="'given' needs a test set"):
        load({"name": "blobs", "size": 100, "split": {"kind": "given"}})


def test_empty_side_of_a_random_split_fails(tmp_path):
    x, y = labelled({0: 2, 1: 2})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    refused(tmp_path / "d.npz", "2 classes over 4 rows", "round(0.1 x its rows)", "leave the test set empty",
            split={"test_fraction": 0.1}, objective={"loss": "ntxent"})


# --- files ----------------------------------------------------------------------------------------


def test_npz_with_x_and_y(tmp_path):
    x, y = labelled({0: 15, 1: 15, 4: 15}, dim=6)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    data = load_file(tmp_path / "mine.npz")
    assert data.source == "mine.npz" and data.task == "classification"
    assert data.input_shape == (6,) and data.class_names is None
    assert set(data.y_train.tolist()) == {0, 1, 4}  # integer labels keep their values
    assert data.num_classes == 5
    assert rows(data.x_train, data.x_test) == rows(x)
    assert_paired(data)
    d = data.describe()
    assert (d["train_rows"], d["test_rows"], d["input_shape"], d["input_dtype"]) == (36, 9, [6], "float32")


def test_npz_float64_and_integer_features_become_float32(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=(x * 10).astype(np.int32), y=y)
    data = load_file(tmp_path / "d.npz")
    assert data.x_train.dtype == torch.float32
    assert rows(data.x_train, data.x_test) == rows((x * 10).astype(np.int32))


def test_npz_string_labels(tmp_path):
    x, y = labelled({0: 10, 1: 10, 2: 10})
    names = np.array(["zebra", "ant", "moth"])[y]
    np.savez(tmp_path / "d.npz", x=x, y=names)
    data = load_file(tmp_path / "d.npz")
    assert data.class_names == ["ant", "moth", "zebra"]
    for xs, ys in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        original = np.array(["zebra", "ant", "moth"])[(xs[:, 0] // 100).long().numpy()]
        assert [data.class_names[i] for i in ys.tolist()] == original.tolist()


def test_npz_image_features(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 6, 6)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "img.npz", x=x, y=y)
    data = load_file(tmp_path / "img.npz", model={"encoder": "conv2d"})
    assert data.input_shape == (3, 6, 6)
    with pytest.raises(SpecError) as info:
        load_file(tmp_path / "img.npz", model={"encoder": "conv1d"})
    assert [e["field"] for e in info.value.errors] == ["model.encoder"]


def _frame(n_per_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = [name for name, n in n_per_class.items() for _ in range(n)]
    code = {name: i for i, name in enumerate(sorted(n_per_class))}
    return pd.DataFrame({
        "f0": [code[l] * 100 + i * 1e-3 for i, l in enumerate(labels)],  # sorted-order index * 100
        "f1": rng.normal(size=len(labels)),
        "f2": rng.integers(0, 5, size=len(labels)),
        "label": labels,
    })


def test_csv_with_string_labels(tmp_path):
    frame = _frame({"dog": 12, "cat": 15, "ant": 10})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_file(tmp_path / "t.csv")
    assert data.class_names == ["ant", "cat", "dog"]  # sorted order
    assert data.input_shape == (3,) and data.task == "classification"
    assert len(data.x_train) + len(data.x_test) == 37
    assert_paired(data)  # index i of class_names is the i-th name in sorted order
    counts = Counter(torch.cat([data.y_train, data.y_test]).tolist())
    assert counts == {0: 10, 1: 15, 2: 12}
    assert data.describe()["class_names"] == ["ant", "cat", "dog"]


def test_csv_named_label_column(tmp_path):
    frame = _frame({"a": 10, "b": 10}).rename(columns={"label": "species"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_file(tmp_path / "t.csv", label_column="species")
    assert data.class_names == ["a", "b"] and data.input_shape == (3,)


def test_csv_split_column(tmp_path):
    frame = _frame({"x": 10, "y": 10})
    frame["split"] = ["test" if i % 5 == 0 else "train" for i in range(len(frame))]
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_file(tmp_path / "t.csv", split={"kind": "given"})
    assert len(data.x_test) == 4 and len(data.x_train) == 16
    expected_test = frame[frame.split == "test"][["f0", "f1", "f2"]].to_numpy(dtype=np.float32)
    assert torch.equal(data.x_test, torch.from_numpy(expected_test))
    assert data.input_shape == (3,)  # the split column is not a feature
    assert_paired(data)


def test_csv_split_column_with_only_training_rows_has_no_test_set(tmp_path):
    frame = _frame({"x": 10, "y": 10})
    frame["split"] = "train"
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert len(load_file(tmp_path / "t.csv").x_test) == 4  # a random split still works
    refused(tmp_path / "t.csv", "'given' needs a test set", split={"kind": "given"})


def test_csv_integer_labels_and_float_targets(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame["label"] = (frame.f0 // 100).astype(int) + 3
    frame.to_csv(tmp_path / "ints.csv", index=False)
    data = load_file(tmp_path / "ints.csv")
    assert data.class_names is None and set(data.y_train.tolist()) == {3, 4}
    frame["label"] = frame.f1 * 2.5
    frame.to_csv(tmp_path / "floats.csv", index=False)
    data = load_file(tmp_path / "floats.csv", objective={"loss": "barlow_twins"})
    assert data.task == "regression" and data.y_train.dtype == torch.float32
    with pytest.raises(SpecError) as info:
        load_file(tmp_path / "floats.csv", objective={"loss": "supcon"})
    assert [e["field"] for e in info.value.errors] == ["objective.loss"]


def test_parquet(tmp_path):
    frame = _frame({"dog": 12, "cat": 15, "ant": 10})
    frame.to_parquet(tmp_path / "t.parquet")
    data = load_file(tmp_path / "t.parquet")
    assert data.class_names == ["ant", "cat", "dog"]
    assert data.source == "t.parquet" and data.input_shape == (3,)
    assert rows(data.x_train, data.x_test) == rows(frame[["f0", "f1", "f2"]].to_numpy())
    assert_paired(data)


def test_parquet_nullable_integer_features(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame["f2"] = frame["f2"].astype("Int64")
    frame.to_parquet(tmp_path / "t.parquet")
    data = load_file(tmp_path / "t.parquet")
    assert data.x_train.dtype == torch.float32 and data.input_shape == (3,)


# --- malformed files fail with a clear DataError before any training --------------------------------


def test_x_and_y_rows_differ(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y[:-1])
    refused(tmp_path / "d.npz", "d.npz", "20 feature rows but 19 labels")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_in_npz(tmp_path, bad):
    x, y = labelled({0: 10, 1: 10})
    x[7, 2] = bad
    np.savez(tmp_path / "d.npz", x=x, y=y)
    refused(tmp_path / "d.npz", "NaN or infinite", "row 7")


def test_non_finite_test_features_in_npz(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    xt = x[:4].copy()
    xt[2, 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=y[:4])
    refused(tmp_path / "d.npz", "x_test", "NaN or infinite", split={"kind": "given"})


def test_nan_and_inf_in_csv(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame.loc[3, "f1"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    refused(tmp_path / "nan.csv", "empty (NaN)", "f1")
    frame.loc[3, "f1"] = np.inf
    frame.to_csv(tmp_path / "inf.csv", index=False)
    refused(tmp_path / "inf.csv", "NaN or infinite")


def test_missing_label_column(tmp_path):
    frame = _frame({"a": 10, "b": 10}).drop(columns=["label"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(tmp_path / "t.csv", "no label column", "dataset.label_column")
    refused(tmp_path / "t.csv", "label column 'target' not found", label_column="target")


def test_empty_labels_in_csv(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame.loc[4, "label"] = None
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(tmp_path / "t.csv", "label column 'label' has 1 empty values")


def test_non_numeric_feature_column(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame["colour"] = "red"
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(tmp_path / "t.csv", "must be numeric", "colour")


def test_bad_split_column_values(tmp_path):
    frame = _frame({"a": 10, "b": 10})
    frame["split"] = "validation"
    frame.to_csv(tmp_path / "t.csv", index=False)
    refused(tmp_path / "t.csv", "'split' may only hold", "validation")


def test_class_too_small_for_the_loss(tmp_path):
    x, y = labelled({0: 10, 1: 10, 2: 1})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    refused(tmp_path / "d.npz", "classes [2]", "fewer than 2", "'supcon'", objective={"loss": "supcon"})
    # with two views every sample is its own positive, so the same file is fine
    data = load_file(tmp_path / "d.npz", objective={"loss": "supcon", "views": 2})
    assert 2 in data.y_train.tolist()


def test_single_class_fails_for_a_class_loss(tmp_path):
    x, y = labelled({3: 20})
    np.savez(tmp_path / "d.npz", x=x, y=y)
    refused(tmp_path / "d.npz", "single class", objective={"loss": "multi_similarity"})


class WritesMarker:
    """Unpickling this object creates a file: proof of whether anything was unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_marker_works_when_actually_unpickled(tmp_path):
    """Control for the test below: unpickling really would create the marker."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", ["x", "y", "x_test"])
def test_pickled_object_array_is_refused_and_never_unpickled(tmp_path, where):
    marker = tmp_path / "unpickled"
    x, y = labelled({0: 10, 1: 10})
    arrays = {"x": x, "y": y, "x_test": x[:4], "y_test": y[:4]}
    evil = np.empty(len(arrays[where]), dtype=object)
    evil[:] = [WritesMarker(marker) for _ in range(len(evil))]
    arrays[where] = evil if where != "x" else evil.reshape(-1, 1)
    np.savez(tmp_path / "evil.npz", **arrays)
    refused(tmp_path / "evil.npz", "pickled object array", "never loaded")
    assert not marker.exists(), "the npz's pickle was executed"


def test_truncated_npz(tmp_path):
    x, y = labelled({0: 30, 1: 30})
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    blob = (tmp_path / "ok.npz").read_bytes()
    for n in (0, 3, 100, len(blob) // 2, len(blob) - 10):
        (tmp_path / "cut.npz").write_bytes(blob[:n])
        refused(tmp_path / "cut.npz", "cut.npz", "not a readable npz")


def test_corrupt_npz(tmp_path):
    x, y = labelled({0: 30, 1: 30})
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    blob = bytearray((tmp_path / "ok.npz").read_bytes())
    for i in range(80, 300):  # inside the first member's data
        blob[i] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(blob))
    refused(tmp_path / "bad.npz", "not a readable npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not an archive at all")
    refused(tmp_path / "junk.npz", "not a readable npz")


def test_npy_saved_under_an_npz_name(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 3)))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    refused(tmp_path / "a.npz", "not a readable npz")


def test_unknown_npz_keys(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    refused(tmp_path / "d.npz", "unknown arrays ['labels']", "x, y, x_test, y_test")


def test_npz_without_x(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", features=x, y=y)
    refused(tmp_path / "d.npz", "needs an array named 'x'", "features")


def test_npz_test_arrays_must_come_in_pairs(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=x[:4])
    refused(tmp_path / "a.npz", "both x_test and y_test")
    np.savez(tmp_path / "b.npz", x=x, x_test=x[:4], y_test=y[:4])
    refused(tmp_path / "b.npz", "y_test without y")


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data.pkl", "data.npy", "data"])
def test_unsupported_suffix(tmp_path, name):
    (tmp_path / name).write_bytes(b"1,2,3\n")
    refused(tmp_path / name, "unsupported file type")


def test_missing_file(tmp_path):
    refused(tmp_path / "nowhere.npz", "no such file")


def test_negative_integer_labels(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y - 1)
    refused(tmp_path / "d.npz", "must be >= 0", "found -1")


def test_huge_integer_labels(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y * 10_000_000)
    refused(tmp_path / "d.npz", "too large")


def test_mismatched_x_test_shape(tmp_path):
    x, y = labelled({0: 10, 1: 10}, dim=3)
    xt, yt = labelled({0: 3, 1: 3}, dim=4)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    refused(tmp_path / "d.npz", "x_test samples have shape (4,)", "(3,)", split={"kind": "given"})


def test_x_test_and_y_test_rows_differ(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:5], y_test=y[:4])
    refused(tmp_path / "d.npz", "5 feature rows but 4 labels")


def test_features_of_rank_one_and_strings_are_refused(tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.arange(20.0), y=np.arange(20) % 2)
    refused(tmp_path / "flat.npz", "features need shape (rows, ...)")
    np.savez(tmp_path / "str.npz", x=np.array([["a", "b"]] * 20), y=np.arange(20) % 2)
    refused(tmp_path / "str.npz", "features must be numeric")


def test_two_dimensional_labels(tmp_path):
    x, y = labelled({0: 10, 1: 10})
    np.savez(tmp_path / "d.npz", x=x, y=y[:, None])
    refused(tmp_path / "d.npz", "labels need shape (rows,)")


def test_non_finite_float_targets(tmp_path):
    x, _ = labelled({0: 10, 1: 10})
    t = np.linspace(0, 1, 20)
    t[5] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=t)
    refused(tmp_path / "d.npz", "labels are NaN or infinite", objective={"loss": "barlow_twins"})


def test_uploaded_dataset_id_must_be_resolved_first():
    with pytest.raises(DataError, match="resolved to a file"):
        load_dataset(make_spec({"id": "ds_abc"}))
