"""Built-in datasets: generated or bundled with a package, never downloaded."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np


RawArrays = dict[str, Any]  # x, y, optional x_test / y_test, optional class_names


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


def load_builtin(name: str, size: int | None, params: dict[str, Any]) -> RawArrays:
    """The arrays of a built-in dataset from a resolved spec's `dataset.size` and `dataset.params`."""
    opts = {**params, "size": size}
    makers: dict[str, Callable[[], RawArrays]] = {
        "mnist1d": lambda: mnist1d(int(opts["size"])),
        "digits": digits,
        "diabetes": diabetes,
        "blobs": lambda: blobs(int(opts["size"]), int(opts["num_classes"]), int(opts["num_features"]), float(opts["cluster_std"])),
    }
    return makers[name]()
