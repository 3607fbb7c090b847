"""Two-modality data: each sample has inputs `x` and `x2` (of their own shapes), for two-modality losses (m3col).

A file gives them as npz arrays `x`, `x2` (and `x_test`, `x2_test` for its own
test rows); the built-in `paired_modalities` generates them by a known rule.
Both modalities are split by one draw: the row ids go through the same split
(and validation carve) as one-modality data, and both arrays are then taken by
those ids, so a sample's two inputs always land on the same side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from embedmix.core import catalog
from embedmix.core.data.arrays import check_features
from embedmix.core.data.dataset import Dataset
from embedmix.core.errors import DataError
from embedmix.core.spec import JobSpec

SECOND = "x2"  # the second modality's array; its test rows are x2_test
MAX_ROWS = 1 << 24  # row ids pass through the split as float32, exact below 2^24


def two_modality(spec: JobSpec) -> bool:
    """Whether the spec's loss trains on two modalities (its catalog entry says so)."""
    return catalog.LOSSES[spec.objective.loss].extra.get("modalities", 1) == 2


def paired_modalities(size: int, num_classes: int, latent_dim: int, num_features: int, num_features_2: int,
                      noise: float, seed: int = 0) -> dict[str, Any]:
    """Two views of one class-conditional latent: the rule is known, so what each modality can tell is too.

    Latent u = c_y + N(0, I) with class centres c on a sphere of radius 2.5 in
    latent_dim dimensions. Modality 1 is x = u A + noise N(0, I), modality 2 is
    x2 = tanh(u B) + noise N(0, I), with fixed random maps A (latent_dim x
    num_features) and B (latent_dim x num_features_2) scaled to unit gain. Each
    modality alone sees the latent through its own noise, so the two agree on the
    class only through u: what a cross-modal objective can align.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, latent_dim))
    centres *= 2.5 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(size) % num_classes
    rng.shuffle(y)
    latent = centres[y] + rng.normal(size=(size, latent_dim))
    a = rng.normal(size=(latent_dim, num_features)) / np.sqrt(latent_dim)
    b = rng.normal(size=(latent_dim, num_features_2)) / np.sqrt(latent_dim)
    x = latent @ a + noise * rng.normal(size=(size, num_features))
    x2 = np.tanh(latent @ b) + noise * rng.normal(size=(size, num_features_2))
    return {"x": x.astype(np.float32), "x2": x2.astype(np.float32), "y": y.astype(np.int64)}


@dataclass
class PairedDataset(Dataset):
    """A Dataset whose samples have a second input, `x2_*`, row for row with `x_*` (one split for both)."""

    x2_train: torch.Tensor | None = None
    x2_test: torch.Tensor | None = None
    x2_val: torch.Tensor | None = None

    @property
    def input_shape_2(self) -> tuple[int, ...]:
        return tuple(self.x2_train.shape[1:])

    def validation_view(self) -> PairedDataset:
        """The one-modality view, with the second modality's validation rows where its test rows were."""
        view = super().validation_view()  # type: ignore[misc]
        return replace(view, x2_test=self.x2_val, x2_val=None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "modalities": 2, "input_shape_2": list(self.input_shape_2)}


def check_second(raw: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """`x2` (and `x2_test`) checked against `x` (and `x_test`): numeric, finite, one row per sample."""
    if raw.get(SECOND) is None:
        raise DataError(f"{source}: {SECOND}: the loss trains on two modalities; give the second one as an array "
                        f"{SECOND!r} (one row per row of x; x2_test for x_test), or use the built-in paired_modalities")
    out = {}
    for first, second in (("x", SECOND), ("x_test", "x2_test")):
        if raw.get(first) is None:
            if raw.get(second) is not None:
                raise DataError(f"{source}: {second}: given without {first}; give both or neither")
            continue
        if raw.get(second) is None:
            raise DataError(f"{source}: {second}: the file has {first} but no {second}; every sample needs both modalities")
        arr = check_features(np.asarray(raw[second]), f"{source}: {second}")
        if len(arr) != len(raw[first]):
            raise DataError(f"{source}: {second}: {len(arr)} rows, but {first} has {len(raw[first])}; one row per sample")
        out[second] = arr
    rows = len(raw["x"]) + (len(raw["x_test"]) if raw.get("x_test") is not None else 0)
    if rows >= MAX_ROWS:
        raise DataError(f"{source}: {SECOND}: two-modality data may have at most {MAX_ROWS - 1} rows, got {rows}")
    return out


def _row_ids(start: int, count: int, rank: int) -> np.ndarray:
    """Row ids shaped as samples of the input's rank, so the split's checks see the first modality's rank."""
    return np.arange(start, start + count, dtype=np.float32).reshape((count,) + (1,) * rank)


def paired_from_arrays(raw: dict[str, Any], spec: JobSpec, source: str,
                       one_modality: Callable[[dict[str, Any], JobSpec, str], Dataset]) -> PairedDataset:
    """Two-modality raw arrays checked, split once through `one_modality` (on the row ids), and taken by id."""
    if not two_modality(spec):
        raise DataError(f"{source}: {SECOND}: the data has two modalities, which only a two-modality loss trains on "
                        f"(objective.loss {sorted(n for n, e in catalog.LOSSES.items() if e.extra.get('modalities') == 2)})")
    second = check_second(raw, source)
    x = check_features(np.asarray(raw["x"]), f"{source}: x")
    x_test = None if raw.get("x_test") is None else check_features(np.asarray(raw["x_test"]), f"{source}: x_test")
    rank = x.ndim - 1
    ids = {**raw, "x": _row_ids(0, len(x), rank)}
    if x_test is not None:
        ids["x_test"] = _row_ids(len(x), len(x_test), rank)
    ids.pop(SECOND, None)
    ids.pop("x2_test", None)
    split = one_modality(ids, spec, source)
    firsts = x if x_test is None else np.concatenate([x, x_test])
    seconds = second[SECOND] if x_test is None else np.concatenate([second[SECOND], second["x2_test"]])
    take = {name: _take(getattr(split, f"x_{name}", None), firsts, seconds) for name in ("train", "test", "val")}
    base = {f.name: getattr(split, f.name) for f in fields(split)}
    for name, pair in take.items():
        if pair is not None:
            base[f"x_{name}"], base[f"x2_{name}"] = pair
    return PairedDataset(**base)


def _take(ids: torch.Tensor | None, firsts: np.ndarray, seconds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
    if ids is None:
        return None
    rows = ids.reshape(len(ids), -1)[:, 0].long().numpy()
    as_x = (lambda a: torch.from_numpy(np.ascontiguousarray(a[rows], dtype=np.float32)))
    return as_x(firsts), as_x(seconds)
