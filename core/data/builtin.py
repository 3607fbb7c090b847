"""Built-in datasets: generated or bundled with a package, never downloaded."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedmix.core.data.modalities import paired_modalities
from embedmix.core.errors import DataError


RawArrays = dict[str, Any]  # x, y, optional x_test / y_test, optional class_names; two modalities: x2 (x2_test)


def cache_dir() -> Path:
    path = Path(os.environ.get("EMBEDMIX_CACHE", Path.home() / ".cache" / "embedmix"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def mnist1d(size: int, seed: int = 42) -> RawArrays:
    """MNIST-1D from the package's own generator; pooled train+test so our split decides.

    Generation takes seconds, so the arrays are cached as a plain npz keyed by size and
    seed (the generator is deterministic given both).
    """
    path = cache_dir() / f"mnist1d-{size}-{seed}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return {"x": f["x"], "y": f["y"]}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = size, seed
    # make_dataset reseeds the global `random` and `np.random` generators; keep the
    # caller's states so loading (a cache miss or a hit) leaves no trace on them.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(path)
    return {"x": x, "y": y}


def digits() -> RawArrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    return {"x": d.images.astype(np.float32)[:, None, :, :], "y": d.target.astype(np.int64)}


def diabetes() -> RawArrays:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return {"x": d.data.astype(np.float32), "y": d.target.astype(np.float32)}


def blobs(size: int, num_classes: int, num_features: int, cluster_std: float, seed: int = 0) -> RawArrays:
    """Gaussian clusters with centres on a sphere of radius 4 so classes overlap a little."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, num_features))
    centres *= 4.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(size) % num_classes
    rng.shuffle(y)
    x = centres[y] + cluster_std * rng.normal(size=(size, num_features))
    return {"x": x.astype(np.float32), "y": y.astype(np.int64)}


LONG_TAIL_SEED = 0  # the draw of which rows a long-tailed subsample keeps: fixed, so the data are a function of the spec
LONG_TAIL_TEST_SHARE = 5  # a long-tailed set's balanced test split takes 1/5 of the smallest class's rows per class
LONG_TAIL_FIELD = "dataset.params.imbalance_ratio"


def long_tail(raw: RawArrays, ratio: float, seed: int = LONG_TAIL_SEED) -> RawArrays:
    """A long-tailed training set with a balanced test set, as CIFAR-10-LT is made from CIFAR-10.

    With n the smallest class's row count, every class first gives n // 5 rows to the
    test set (x_test/y_test, which split kind 'given' tests on); of the rest, class c of
    C (in id order) keeps round(h * ratio ** (-c / (C - 1))) rows, h = n - n // 5: class 0
    is the head with h rows, the last class the tail with h / ratio, the counts decaying
    geometrically in between. The rows are drawn by a generator seeded with `seed`.
    """
    x, y = raw["x"], raw["y"]
    classes, counts = np.unique(y, return_counts=True)
    n = int(counts.min())
    test_rows = n // LONG_TAIL_TEST_SHARE
    head = n - test_rows
    keep = [int(round(head * ratio ** (-c / (len(classes) - 1)))) for c in range(len(classes))]
    if test_rows < 1 or keep[-1] < 1:
        raise DataError(f"{LONG_TAIL_FIELD}: {ratio:g} over classes of {n} rows leaves the tail class "
                        f"{keep[-1]} training rows and {test_rows} test rows; use a smaller ratio or a larger size")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, count in zip(classes, keep):
        rows = rng.permutation(np.flatnonzero(y == label))
        test.append(rows[:test_rows])
        train.append(rows[test_rows:test_rows + count])
    tr, te = np.concatenate(train), np.concatenate(test)
    return {"x": x[tr], "y": y[tr], "x_test": x[te], "y_test": y[te]}


def _maybe_long_tail(raw: RawArrays, ratio: float) -> RawArrays:
    return raw if ratio == 1 else long_tail(raw, ratio)


def load_builtin(name: str, size: int | None, params: dict[str, Any]) -> RawArrays:
    """The arrays of a built-in dataset from a resolved spec's `dataset.size` and `dataset.params`."""
    opts = {**params, "size": size}
    makers: dict[str, Callable[[], RawArrays]] = {
        "mnist1d": lambda: _maybe_long_tail(mnist1d(int(opts["size"])), float(opts.get("imbalance_ratio", 1.0))),
        "digits": digits,
        "diabetes": diabetes,
        "blobs": lambda: blobs(int(opts["size"]), int(opts["num_classes"]), int(opts["num_features"]), float(opts["cluster_std"])),
        "paired_modalities": lambda: paired_modalities(
            int(opts["size"]), int(opts["num_classes"]), int(opts["latent_dim"]), int(opts["num_features"]),
            int(opts["num_features_2"]), float(opts["noise"])),
    }
    return makers[name]()
