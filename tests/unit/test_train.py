"""The training loop: resume is bit-exact, callbacks see everything, stops keep a checkpoint."""

from __future__ import annotations

import pytest
import torch

from embedmix.core.data import load_dataset
from embedmix.core.evaluate import retrieval_metrics
from embedmix.core.spec import validate_spec
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.step import lr_at
from embedmix.core.train import train


def _spec(**over):
    base = {
        "name": "t",
        "dataset": {"name": "blobs", "size": 320, "params": {"num_classes": 8, "num_features": 12}},
        "model": {"encoder": "mlp", "embedding_dim": 16, "width": 32, "dropout": 0.1, "projection_dim": 8},
        "objective": {"loss": "supcon"},
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 3},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 1},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(base)


class Recorder:
    """Callbacks that keep everything and can ask the loop to stop after a given step."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.progress, self.metrics, self.checkpoints = [], [], []
        self.step = 0

    def on_progress(self, p):
        self.step = p.step
        self.progress.append(p)

    def on_metrics(self, step, epoch, values):
        self.metrics.append((step, epoch, values))

    def on_checkpoint(self, state, step, epoch):
        self.checkpoints.append((step, state))

    def should_stop(self):
        return self.stop_after is not None and self.step >= self.stop_after


def _final_state(spec, resume_at: int | None):
    data = load_dataset(spec)
    if resume_at is None:
        return train(spec, data).encoder.state_dict()
    first = Recorder(stop_after=resume_at)
    result = train(spec, data, first)
    assert result.stopped and result.step == resume_at
    step, blob = first.checkpoints[-1]
    assert step == resume_at
    return train(spec, data, resume=blob).encoder.state_dict()


@pytest.mark.parametrize("over", [
    {},
    {"objective": {"loss": "ntxent", "views": 2}, "model": {"encoder": "conv1d"},
     "dataset": {"name": "mnist1d", "size": 300, "params": {}}},
], ids=["supcon-dropout", "ntxent-two-views-augmented"])
def test_resume_is_bit_exact(over):
    spec = _spec(**over)
    total = spec.train.epochs * (int(len(load_dataset(spec).x_train)) // spec.train.batch_size)
    straight = _final_state(spec, None)
    resumed = _final_state(spec, total // 2 + 1)  # mid-epoch, so the data position matters too
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_callbacks_report_progress_metrics_and_checkpoints():
    spec = _spec()
    rec = Recorder()
    result = train(spec, load_dataset(spec), rec)
    steps = [p.step for p in rec.progress]
    assert steps == list(range(1, result.step + 1))
    assert rec.progress[-1].fraction == 1.0 and rec.progress[-1].eta_s == 0.0
    names = {name for _, _, values in rec.metrics for name in values}
    assert {"train/loss", "eval/precision_at_1"} <= names
    evals = [(s, e) for s, e, v in rec.metrics if "eval/precision_at_1" in v]
    assert [e for _, e in evals] == [1, 2, 3, 4]
    assert len(rec.checkpoints) == spec.train.epochs
    assert 0.0 <= result.metrics["precision_at_1"] <= 1.0


def test_training_reduces_the_loss_and_learns():
    """Class structure becomes far clearer in the embedding than in the raw inputs."""
    spec = _spec(train={"epochs": 20}, model={"dropout": 0.0}, eval={"metrics": ["map_at_r"]}, dataset={"size": 800})
    rec = Recorder()
    result = train(spec, load_dataset(spec), rec)
    losses = [v["train/loss"] for _, _, v in rec.metrics if "train/loss" in v]
    assert losses[-1] < losses[0]
    data = load_dataset(spec)
    raw = retrieval_metrics(data.x_test, data.y_test)
    assert result.metrics["map_at_r"] > raw["map_at_r"] + 0.12


def test_stop_keeps_a_checkpoint_and_reports_stopped():
    spec = _spec()
    rec = Recorder(stop_after=3)
    result = train(spec, load_dataset(spec), rec)
    assert result.stopped and result.step == 3
    assert rec.checkpoints[-1][0] == 3


def test_tampered_checkpoint_is_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    spec = _spec()
    trainer = ArrayTrainer(spec, load_dataset(spec))
    with pytest.raises(Exception):
        trainer.load_state(pickle.dumps(Evil()))
    assert not marker.exists()


def test_lr_schedule_warmup_then_cosine_to_zero():
    spec = _spec(train={"epochs": 10, "warmup_epochs": 1.0, "lr": 0.1})
    spe = 10
    assert lr_at(spec, 0, spe) == pytest.approx(0.01)
    assert lr_at(spec, 9, spe) == pytest.approx(0.1)
    assert lr_at(spec, 10, spe) == pytest.approx(0.1)
    assert lr_at(spec, 55, spe) == pytest.approx(0.05)
    assert lr_at(spec, 100, spe) == pytest.approx(0.0, abs=1e-12)
    step = _spec(train={"schedule": "step", "step_epochs": 3, "step_gamma": 0.5, "lr": 0.1})
    assert lr_at(step, 3 * spe, spe) == pytest.approx(0.05)


def test_method_metrics_come_from_the_method_and_params_are_optimised_once():
    spec = _spec(mixup={"method": "metrix", "alpha": 2.0, "weight": 0.4}, objective={"loss": "proxy_anchor"},
                 eval={"metrics": ["precision_at_1", "utilization"]}, train={"epochs": 1})
    trainer = ArrayTrainer(spec, load_dataset(spec))
    params = [p for group in trainer.opt.param_groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params})
    result = trainer.run()
    assert set(result.metrics) == {"precision_at_1", "utilization"}
