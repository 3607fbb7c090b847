"""train.compile: when torch.compile fails, the run reports it and trains eagerly to the same result."""

from __future__ import annotations

import logging

import pytest
import torch

from embedmix.core.data import load_dataset
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train


def _spec(compile_: bool):
    return validate_spec({
        "name": "compile",
        "dataset": {"name": "blobs", "size": 160, "params": {"num_classes": 4, "num_features": 8}},
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "supcon"},
        "train": {"epochs": 1, "batch_size": 32, "seed": 2, "compile": compile_},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    })


class Metrics:
    def __init__(self):
        self.values: dict[str, float] = {}

    def on_progress(self, progress):
        pass

    def on_metrics(self, step, epoch, values):
        self.values |= values

    def on_checkpoint(self, state, step, epoch):
        pass

    def should_stop(self):
        return False


def _refuse_to_compile(model, *args, **kwargs):
    raise RuntimeError("no compiler here")


def _fail_on_first_call(model, *args, **kwargs):
    def compiled(*inputs):
        raise RuntimeError("backend failed while compiling the first call")
    return compiled


@pytest.mark.parametrize("broken", [_refuse_to_compile, _fail_on_first_call], ids=["at_compile", "at_first_call"])
def test_failed_compile_falls_back_to_eager(monkeypatch, caplog, broken):
    """torch.compile is replaced by one that fails: the fallback, not the compiler, is under test."""
    spec, eager_spec = _spec(True), _spec(False)
    data = load_dataset(spec)
    eager = train(eager_spec, data).encoder.state_dict()
    monkeypatch.setattr(torch, "compile", broken)
    callbacks = Metrics()
    with caplog.at_level(logging.WARNING, logger="embedmix.core.train"):
        result = train(spec, data, callbacks)
    assert callbacks.values.get("train/compile_fallback") == 1.0
    assert "torch.compile failed" in caplog.text
    for key, value in eager.items():
        assert torch.equal(result.encoder.state_dict()[key], value), key


def test_compile_is_called_when_asked(monkeypatch):
    """With a compile that works (here: identity), no fallback is reported."""
    calls = []

    def identity(model, *args, **kwargs):
        calls.append(model)
        return model

    monkeypatch.setattr(torch, "compile", identity)
    callbacks = Metrics()
    train(_spec(True), load_dataset(_spec(True)), callbacks)
    assert len(calls) == 1 and "train/compile_fallback" not in callbacks.values


def test_compile_refused_with_a_mixing_method():
    with pytest.raises(SpecError) as err:
        validate_spec({"dataset": {"name": "mnist1d"}, "objective": {"loss": "multi_similarity"},
                       "mixup": {"method": "metrix"}, "train": {"compile": True}})
    assert [e["field"] for e in err.value.errors] == ["train.compile"]
