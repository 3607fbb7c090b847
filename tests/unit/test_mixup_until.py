"""Early-stopped mixup (spec.mixup.until): after the switch a run takes exactly the steps of the unmixed spec from the
same state, reports the switch once, keeps to it across a resume, and validation refuses switch points it cannot reach."""

from __future__ import annotations

import pytest
import torch

from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.loop import MIXING_STOPPED
from embedmix.core.spec import SpecError, validate_spec

BLOBS = {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 8}}
STEPS_PER_EPOCH = 5  # 160 training rows, batches of 32


def spec_of(until: dict | None = None, *, mixup: bool = True, epochs: int = 2) -> dict:
    spec = {
        "name": "until",
        "dataset": BLOBS,
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "supcon"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, "seed": 2, "device": "cpu"},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    }
    if mixup:
        spec["mixup"] = {"method": "input", "alpha": 1.0, **({"until": until} if until is not None else {})}
    return spec


class Recorder:
    """Callbacks that keep the checkpoints by step and the switch points, and stop at a step if asked."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.step, self.checkpoints, self.switches = stop_at, 0, {}, []

    def on_progress(self, p):
        self.step = p.step

    def on_metrics(self, step, epoch, values):
        if MIXING_STOPPED in values:
            self.switches.append((step, epoch, values[MIXING_STOPPED]))

    def on_checkpoint(self, state, step, epoch):
        self.checkpoints[step] = state

    def should_stop(self):
        return self.stop_at is not None and self.step >= self.stop_at


def weights(trainer: ArrayTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.net.state_dict().items()}


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data():
    return load_dataset(validate_spec(spec_of()))


@pytest.fixture(scope="module")
def early(data):
    """Run A: input mixup until epoch 1 of 2, straight through."""
    spec = validate_spec(spec_of({"epoch": 1}))
    record = Recorder()
    trainer = ArrayTrainer(spec, data, record)
    trainer.run()
    assert trainer.steps_per_epoch == STEPS_PER_EPOCH
    return trainer, record


def test_after_the_switch_the_steps_are_the_unmixed_runs(data, early):
    trainer, record = early
    unmixed = ArrayTrainer(validate_spec(spec_of(mixup=False)), data)
    unmixed.load_state(record.checkpoints[STEPS_PER_EPOCH])  # run A's state at the switch
    unmixed.run()  # its second epoch
    assert_equal_weights(weights(trainer), weights(unmixed))
    assert torch.equal(trainer.gen.get_state(), unmixed.gen.get_state())  # and no mixing draws after the switch
    # the switch mattered: mixing through both epochs ends elsewhere
    throughout = ArrayTrainer(validate_spec(spec_of()), data)
    throughout.run()
    assert not all(torch.equal(v, weights(trainer)[k]) for k, v in throughout.net.state_dict().items())


def test_the_switch_is_reported_once_with_its_step_and_epoch(early):
    _, record = early
    assert record.switches == [(STEPS_PER_EPOCH, 1, 1.0)]


def test_a_fraction_switches_at_that_share_of_the_steps(data):
    record = Recorder()
    ArrayTrainer(validate_spec(spec_of({"fraction": 0.3})), data, record).run()
    assert record.switches == [(3, 0, 1.0)]  # mixes steps 0, 1, 2 of 10


@pytest.mark.parametrize("stop_at,switches", [(3, [(STEPS_PER_EPOCH, 1, 1.0)]), (7, [])],
                         ids=["resumed-before-the-switch", "resumed-after-it"])
def test_a_resumed_run_keeps_to_the_switch(data, early, stop_at, switches):
    trainer, _ = early
    spec = validate_spec(spec_of({"epoch": 1}))
    first = Recorder(stop_at)
    assert ArrayTrainer(spec, data, first).run().stopped
    again = Recorder()
    resumed = ArrayTrainer(spec, data, again)
    resumed.load_state(first.checkpoints[stop_at])
    resumed.run()
    assert again.switches == switches
    assert_equal_weights(weights(trainer), weights(resumed))


def fields_of(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    return [e["field"] for e in info.value.errors]


@pytest.mark.parametrize("until,field", [
    ({"epoch": 2}, "mixup.until.epoch"),
    ({"epoch": 0}, "mixup.until.epoch"),
    ({"epoch": 1.5}, "mixup.until.epoch"),
    ({"fraction": 1.0}, "mixup.until.fraction"),
    ({"fraction": 0.0}, "mixup.until.fraction"),
    ({"epoch": 1, "fraction": 0.5}, "mixup.until"),
    ({}, "mixup.until"),
    ({"step": 3}, "mixup.until.step"),
], ids=["at-the-end", "zero", "not-an-int", "whole-run", "no-mixing", "both", "neither", "unknown"])
def test_validation_refuses_switch_points_it_cannot_reach(until, field):
    assert field in fields_of(spec_of(until))


def test_the_message_says_how_many_epochs_the_run_has():
    with pytest.raises(SpecError) as info:
        validate_spec(spec_of({"epoch": 5}, epochs=3))
    assert "3 epochs" in info.value.errors[0]["message"]


def test_until_survives_resolution():
    spec = validate_spec(spec_of({"fraction": 0.5}))
    assert spec.mixup.until.fraction == 0.5 and spec.mixup.until.epoch is None
    assert validate_spec(spec.model_dump()) == spec
