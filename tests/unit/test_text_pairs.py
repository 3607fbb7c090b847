"""Text pairs without a model: the .jsonl reader, its split, the mnrl loss, and spec validation."""

from __future__ import annotations

import json
import tracemalloc
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embedmix.core.data import DataError, TextPairs, load_dataset
from embedmix.core.data.text_pairs import MAX_REPORTED_LINES, MAX_TEXT_CHARS, count_text_pairs, read_text_pairs, split_pairs
from embedmix.core.losses import build
from embedmix.core.spec import SpecError, SplitSpec, validate_spec

TEXT_SPEC = {
    "dataset": {"path": "pairs.jsonl"},
    "model": {"encoder": "minilm", "embedding_dim": 384},
    "objective": {"loss": "mnrl"},
    "export": {"formats": ["safetensors", "onnx", "torchscript"]},
}


def _write(tmp_path: Path, lines: list[str], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pairs(n: int) -> list[str]:
    return [json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) for i in range(n)]


def test_reads_pairs_labels_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = _pairs(3) + ["", "   ", json.dumps({"anchor": "é ünïcode", "positive": "p", "label": 7})]
    raw = read_text_pairs(_write(tmp_path, lines))
    assert raw.anchors == ["question 0", "question 1", "question 2", "é ünïcode"]
    assert raw.positives[:2] == ["answer 0", "answer 1"]
    assert raw.labels == [None, None, None, "7"]
    assert count_text_pairs(tmp_path / "pairs.jsonl") == 4


@pytest.mark.parametrize(
    "bad,message",
    [
        ("not json", "line 3: not valid JSON"),
        ('["anchor", "positive"]', "line 3: expected a JSON object"),
        ('{"anchor": "a"}', "line 3: missing field 'positive'"),
        ('{"anchor": "a", "positive": "  "}', "line 3: 'positive' is empty"),
        ('{"anchor": 5, "positive": "p"}', "line 3: 'anchor' must be a string"),
        ('{"anchor": "a", "positive": "p", "extra": 1}', r"line 3: unknown fields \['extra'\]"),
        ('{"anchor": "a", "positive": "p", "label": true}', "line 3: 'label' must be a string or an integer"),
        ('{"anchor": "a", "positive": "p", "label": [1]}', "line 3: 'label' must be a string or an integer"),
        (json.dumps({"anchor": "x" * (MAX_TEXT_CHARS + 1), "positive": "p"}), "line 3: 'anchor' has"),
    ],
)
def test_a_bad_line_is_refused_with_its_number(tmp_path: Path, bad: str, message: str) -> None:
    path = _write(tmp_path, _pairs(2) + [bad] + _pairs(3))
    with pytest.raises(DataError, match=message):
        read_text_pairs(path)
    with pytest.raises(DataError, match=message):
        count_text_pairs(path)


def test_invalid_utf8_too_few_and_too_many_pairs(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"anchor": "a", "positive": "b"}\n{"anchor": "caf\xe9", "positive": "b"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        read_text_pairs(path)
    with pytest.raises(DataError, match="3 pairs; at least 4"):
        read_text_pairs(_write(tmp_path, _pairs(3)))
    with pytest.raises(DataError, match="3 pairs; at least 4"):
        count_text_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(DataError, match="line 6: more than 5 pairs"):
        read_text_pairs(_write(tmp_path, _pairs(6)), max_pairs=5)


def test_split_is_seeded_and_keeps_pairs_together(tmp_path: Path) -> None:
    raw = read_text_pairs(_write(tmp_path, _pairs(20)))
    first = split_pairs(raw, SplitSpec(test_fraction=0.25), seed=3, source="s")
    again = split_pairs(raw, SplitSpec(test_fraction=0.25), seed=3, source="s")
    assert first.anchors_test == again.anchors_test and len(first.anchors_test) == 5
    assert len(first.anchors_train) == 15
    for anchor, positive in zip(first.anchors_train + first.anchors_test, first.positives_train + first.positives_test):
        assert anchor.split()[1] == positive.split()[1]
    assert sorted(first.anchors_train + first.anchors_test) == sorted(raw.anchors)
    with pytest.raises(DataError, match="split at random"):
        split_pairs(raw, SplitSpec(kind="given"), seed=0, source="s")


def test_load_dataset_returns_text_pairs_for_a_text_spec(tmp_path: Path) -> None:
    path = _write(tmp_path, _pairs(10))
    data = load_dataset(validate_spec({**TEXT_SPEC, "dataset": {"path": str(path)}}))
    assert isinstance(data, TextPairs)
    assert data.describe()["kind"] == "text_pairs" and data.describe()["train_rows"] == 8
    with pytest.raises(SpecError, match="use a text encoder"):
        load_dataset(validate_spec({"dataset": {"path": str(path)}, "objective": {"loss": "mnrl"}}))


def test_mnrl_is_in_batch_cross_entropy_of_scaled_cosines() -> None:
    torch.manual_seed(0)
    a, p = torch.randn(6, 8), torch.randn(6, 8)
    loss = build("mnrl")
    assert loss.scale == 20.0
    cos = F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).T
    by_hand = -torch.log_softmax(20.0 * cos, dim=1).diagonal().mean()
    assert torch.allclose(loss(a, p), by_hand)
    assert loss(a, a * 3).item() < loss(a, p).item(), "matching pairs cost less than random ones"
    assert math.isclose(build("mnrl", scale=1.0)(a, a).item(),
                        -torch.log_softmax(F.normalize(a, dim=-1) @ F.normalize(a, dim=-1).T, 1).diagonal().mean().item(),
                        rel_tol=1e-6)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"model": {"encoder": "minilm"}}, "model.embedding_dim"),
        ({"model": {"encoder": "minilm", "embedding_dim": 384, "projection_dim": 16}}, "model.projection_dim"),
        ({"train": {"compile": True}}, "train.compile"),
        ({"dataset": {"name": "mnist1d"}}, "model.encoder"),
    ],
)
def test_spec_refuses_what_a_text_encoder_cannot_do(change: dict, field: str) -> None:
    with pytest.raises(SpecError) as refused:
        validate_spec({**TEXT_SPEC, **change})
    assert field in [e["field"] for e in refused.value.errors]


def test_text_pairs_need_a_two_view_loss_random_split_and_pair_metrics(tmp_path: Path) -> None:
    path = str(_write(tmp_path, _pairs(10)))
    for change, field in [
        ({"objective": {"loss": "supcon"}}, "objective.loss"),
        ({"eval": {"metrics": ["knn_accuracy"]}}, "eval.metrics"),
        ({"dataset": {"path": path, "split": {"kind": "given"}}}, "dataset.split.kind"),
    ]:
        spec = validate_spec({**TEXT_SPEC, "dataset": {"path": path}, **change})
        with pytest.raises(SpecError) as refused:
            load_dataset(spec)
        assert field in [e["field"] for e in refused.value.errors]


def test_every_bad_line_is_reported_at_once_up_to_a_cap(tmp_path: Path) -> None:
    lines = _pairs(2) + ["not json", '{"anchor": "a"}'] + _pairs(2) + ['{"anchor": "a", "positive": ""}']
    with pytest.raises(DataError) as raised:
        count_text_pairs(_write(tmp_path, lines))
    message = str(raised.value)
    assert "3 bad lines: line 3: not valid JSON" in message
    assert "line 4: missing field 'positive'" in message and "line 7: 'positive' is empty" in message
    many = _pairs(1) + ["not json"] * (MAX_REPORTED_LINES + 10)
    with pytest.raises(DataError) as raised:
        read_text_pairs(_write(tmp_path, many))
    assert f"{MAX_REPORTED_LINES} bad lines (the first {MAX_REPORTED_LINES}" in str(raised.value)
    assert f"line {MAX_REPORTED_LINES + 1}:" in str(raised.value)
    assert f"line {MAX_REPORTED_LINES + 2}:" not in str(raised.value)


def test_a_line_longer_than_the_limit_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    from embedmix.core.data.text_pairs import MAX_LINE_BYTES

    huge = '{"anchor": "' + "x" * (MAX_LINE_BYTES * 40) + '", "positive": "p"}'
    path = _write(tmp_path, _pairs(2) + [huge] + _pairs(3))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"line 3: longer than {MAX_LINE_BYTES} bytes") as raised:
            count_text_pairs(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "line 4" not in str(raised.value)  # the rest of the long line is skipped, not read as more lines
    assert peak < 8 * MAX_LINE_BYTES  # far below the 2.6 MB line
