"""mnist1d's `imbalance_ratio`: a long-tailed training set (geometric class counts) with a balanced test set,
drawn with a fixed seed; ratios out of range, or too large for the data, are refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from embedmix.core.data import load_dataset
from embedmix.core.data.builtin import LONG_TAIL_FIELD, load_builtin, long_tail, mnist1d
from embedmix.core.errors import DataError, SpecError
from embedmix.core.spec import validate_spec


def _raw(per_class: int = 50, classes: int = 10) -> dict:
    y = np.repeat(np.arange(classes), per_class)
    return {"x": np.arange(len(y), dtype=np.float32)[:, None], "y": y}  # x holds the row's own index


def test_counts_decay_geometrically_from_the_head_to_the_tail():
    out = long_tail(_raw(), 10.0)
    # 50 rows per class: 50 // 5 = 10 to the test set, head h = 40, class c keeps round(40 * 10 ** (-c / 9))
    assert np.bincount(out["y"]).tolist() == [40, 31, 24, 19, 14, 11, 9, 7, 5, 4]
    assert np.bincount(out["y_test"]).tolist() == [10] * 10


def test_rows_are_real_disjoint_and_of_their_class():
    raw = _raw()
    out = long_tail(raw, 10.0)
    train, test = out["x"][:, 0].astype(int), out["x_test"][:, 0].astype(int)
    assert not set(train) & set(test) and len(set(train)) == len(train)
    assert (raw["y"][train] == out["y"]).all() and (raw["y"][test] == out["y_test"]).all()


def test_the_draw_is_seeded():
    a, b, c = long_tail(_raw(), 10.0), long_tail(_raw(), 10.0), long_tail(_raw(), 10.0, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], c["x"])  # another seed keeps other rows (the same counts)
    assert np.bincount(a["y"]).tolist() == np.bincount(c["y"]).tolist()


def test_ratio_one_leaves_the_generated_data_as_it_is():
    plain = load_builtin("mnist1d", 200, {"imbalance_ratio": 1.0})
    assert set(plain) == {"x", "y"} and np.array_equal(plain["x"], mnist1d(200)["x"])


def test_a_spec_trains_on_the_tail_and_tests_on_the_balanced_set():
    spec = validate_spec({"dataset": {"name": "mnist1d", "size": 200, "params": {"imbalance_ratio": 4},
                                      "split": {"kind": "given"}}})
    data = load_dataset(spec)
    # 20 rows per class: 4 to test, head 16, class c keeps round(16 * 4 ** (-c / 9))
    assert np.bincount(data.y_train.numpy()).tolist() == [16, 14, 12, 10, 9, 7, 6, 5, 5, 4]
    assert np.bincount(data.y_test.numpy()).tolist() == [4] * 10


@pytest.mark.parametrize("ratio", [0.5, 0, -3, 1001])
def test_ratios_out_of_range_are_refused_naming_the_field(ratio):
    with pytest.raises(SpecError) as err:
        validate_spec({"dataset": {"name": "mnist1d", "params": {"imbalance_ratio": ratio}}})
    assert LONG_TAIL_FIELD in str(err.value)


def test_a_ratio_that_leaves_the_tail_empty_is_refused_naming_the_field():
    with pytest.raises(DataError) as err:
        long_tail(_raw(per_class=10), 1000.0)  # head 8, tail round(0.008) = 0
    assert LONG_TAIL_FIELD in str(err.value) and "0 training rows" in str(err.value)
