"""Starting a run from an earlier model (`model.init_from`, `train(..., init_weights=...)`).

The encoder must start from exactly the weights given (every tensor equal, the
momentum copy of MoCo included), refuse weights of another architecture naming
the field and the first key that differs, and leave a resumed run to its checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from embedmix.cli.main import app as cli_app
from embedmix.core.data import TextPairs, load_dataset
from embedmix.core.errors import SpecError
from embedmix.core.export import export, read_encoder_weights
from embedmix.core.spec import validate_spec
from embedmix.core.text_train import TextTrainer
from embedmix.core.train import NullCallbacks, train, trainer_for
from embedmix.store.sweeps import apply_params

BASE = {
    "name": "init",
    "dataset": {"name": "blobs", "size": 240, "params": {"num_classes": 4, "num_features": 12}},
    "model": {"encoder": "mlp", "embedding_dim": 16, "width": 32},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 2, "batch_size": 48, "lr": 0.01, "seed": 1, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    "export": {"formats": ["safetensors"]},
}


def _spec(**over):
    base = copy.deepcopy(BASE)
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(base)


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """A trained encoder's state dict (seed 7, so it differs from the fresh encoder of seed 1)."""
    spec = _spec(train={"seed": 7})
    return {k: v.clone() for k, v in train(spec, load_dataset(spec)).encoder.state_dict().items()}


def test_the_encoder_starts_from_exactly_the_given_weights(source):
    spec = _spec()
    data = load_dataset(spec)
    fresh = trainer_for(spec, data).net.encoder.state_dict()
    assert any(not torch.equal(fresh[k], source[k]) for k in source), "the test needs weights unlike a fresh start"
    trainer = trainer_for(spec, data, init_weights=source)
    _assert_same(trainer.net.encoder.state_dict(), source)
    # the optimizer holds the encoder's own parameters, now holding the given values
    optimised = {id(p) for group in trainer.opt.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in trainer.net.encoder.parameters())


def test_train_runs_from_the_given_weights(source):
    """train(init_weights=W) is the run of a trainer whose encoder was set to W, not a fresh one."""
    spec = _spec()
    data = load_dataset(spec)
    by_hand = trainer_for(spec, data)
    by_hand.net.encoder.load_state_dict(source)
    expected = by_hand.run().encoder.state_dict()
    _assert_same(train(spec, data, init_weights=source).encoder.state_dict(), expected)
    fresh = train(spec, data).encoder.state_dict()
    assert any(not torch.equal(fresh[k], expected[k]) for k in expected)


def test_moco_key_encoder_starts_from_the_given_weights():
    spec = _spec(objective={"loss": "ntxent", "views": 2}, mixup={"method": "moco", "params": {"queue_size": 48}})
    data = load_dataset(spec)
    weights = {k: v.clone() for k, v in trainer_for(_spec(objective={"loss": "ntxent", "views": 2},
                                                           train={"seed": 9}), data).net.encoder.state_dict().items()}
    trainer = trainer_for(spec, data, init_weights=weights)
    trainer.batch_loss(torch.arange(spec.train.batch_size))  # the key encoder is copied at the first batch
    # its parameters as given (batch norm's running statistics moved in that batch's own forward pass)
    key = dict(trainer.method.key_net.encoder.named_parameters())
    _assert_same(key, {name: weights[name] for name in key})
    assert len(key) == 10


def test_weights_of_another_architecture_name_the_field_and_the_first_key(source):
    spec = _spec(model={"width": 24})
    with pytest.raises(SpecError) as info:
        train(spec, load_dataset(spec), init_weights=source)
    (error,) = info.value.errors
    assert error["field"] == "model.init_from"
    assert "'blocks.0.1.weight' has shape (32, 12) there and (24, 12) here" in error["message"]


@pytest.mark.parametrize(("edit", "named"), [
    (lambda w: w.pop("embed.bias"), "'embed.bias' is missing"),
    (lambda w: w.update({"head.weight": torch.zeros(2)}), "they hold 'head.weight'"),
])
def test_missing_or_extra_keys_are_refused(source, edit, named):
    weights = dict(source)
    edit(weights)
    spec = _spec()
    with pytest.raises(SpecError, match=named) as info:
        trainer_for(spec, load_dataset(spec), init_weights=weights)
    assert info.value.errors[0]["field"] == "model.init_from"


def test_a_resume_checkpoint_wins_over_the_starting_weights(source):
    """Resumed, the run continues from its checkpoint; the starting weights are not even loaded (these do not fit)."""
    spec = _spec()
    data = load_dataset(spec)
    checkpoints = []

    class Keep(NullCallbacks):
        def on_checkpoint(self, state, step, epoch):
            checkpoints.append(state)

    train(spec, data, Keep(), init_weights=source)
    misfit = {k: torch.zeros(1) for k in source}
    resumed = train(spec, data, resume=checkpoints[0], init_weights=misfit).encoder.state_dict()
    _assert_same(resumed, train(spec, data, resume=checkpoints[0]).encoder.state_dict())


def test_an_exported_file_reads_back_as_the_encoder_state(source, tmp_path: Path):
    spec = _spec()
    data = load_dataset(spec)
    result = train(spec, data, init_weights=source)
    card = export(result, data, tmp_path)
    path = tmp_path / card["files"]["safetensors"]["file"]
    _assert_same(read_encoder_weights(path), result.encoder.state_dict())
    _assert_same(read_encoder_weights(path.read_bytes()), result.encoder.state_dict())
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SpecError) as info:
        read_encoder_weights(tmp_path / "bad.safetensors")
    assert info.value.errors[0]["field"] == "model.init_from"


def test_init_from_is_kept_in_the_resolved_spec_and_takes_one_source():
    assert _spec(model={"init_from": {"job": "job_" + "a" * 20}}).model.init_from.job == "job_" + "a" * 20
    with pytest.raises(SpecError) as info:
        _spec(model={"init_from": {"job": "job_" + "a" * 20, "path": "m.safetensors"}})
    assert info.value.errors[0]["field"] == "model.init_from"


def test_a_text_encoder_starts_from_the_given_weights(tmp_path: Path):
    lines = [json.dumps({"anchor": f"text {i}", "positive": f"the text {i}"}) for i in range(20)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    spec = validate_spec({
        "dataset": {"path": str(tmp_path / "pairs.jsonl")},
        "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 16}},
        "objective": {"loss": "mnrl"}, "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    })
    data = load_dataset(spec)
    assert isinstance(data, TextPairs)
    first = TextTrainer(spec, data)
    weights = {k: v + 0.5 if v.is_floating_point() else v for k, v in first.encoder.state_dict().items()}
    _assert_same(TextTrainer(spec, data, init_weights=weights).encoder.state_dict(), weights)


def test_sweep_trials_keep_the_starting_weights():
    """A trial's spec is the sweep's resolved spec with its parameters set: init_from goes through unchanged."""
    spec = _spec(model={"init_from": {"job": "job_" + "b" * 20}})
    trial = validate_spec(apply_params(spec.model_dump(mode="json"), {"train.lr": 0.05}))
    assert trial.model.init_from == spec.model.init_from and trial.train.lr == 0.05


def _cli_train(spec: dict, tmp_path: Path, out: str) -> Result:
    """`embedmix train` in this process (typer's runner), so the test pays no interpreter start-up."""
    path = tmp_path / f"{out}.json"
    path.write_text(json.dumps(spec))
    return CliRunner().invoke(cli_app, ["train", str(path), "--out", str(tmp_path / out)])


CLI_SPEC = {**BASE, "name": "cli-init"}


def test_local_train_starts_from_an_exported_file_and_refuses_a_job_id(source, tmp_path: Path):
    spec = _spec()
    data = load_dataset(spec)
    source_dir = tmp_path / "source"
    card = export(train(spec, data, init_weights=source), data, source_dir)
    source_file = source_dir / card["files"]["safetensors"]["file"]
    tuned = {**CLI_SPEC, "model": {**CLI_SPEC["model"], "init_from": {"path": str(source_file)}}}
    done = _cli_train(tuned, tmp_path, "tuned")
    assert done.exit_code == 0, done.output
    expected = train(validate_spec(tuned), data, init_weights=read_encoder_weights(source_file)).encoder.state_dict()
    _assert_same(read_encoder_weights(tmp_path / "tuned" / "model.safetensors"), expected)

    by_job = {**CLI_SPEC, "model": {**CLI_SPEC["model"], "init_from": {"job": "job_" + "c" * 20}}}
    refused = _cli_train(by_job, tmp_path, "by-job")
    assert refused.exit_code == 2 and "model.init_from.job names a job in the service" in " ".join(refused.output.split())
    assert not (tmp_path / "by-job").exists(), "refused before anything is written"
