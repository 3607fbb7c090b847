"""The sweep's pruner is built with the settings its body gave (``pruner_options``), Optuna's defaults otherwise."""

from __future__ import annotations

import optuna
import pytest

from embedmix.api.schemas import PrunerOptionsIn
from embedmix.api.sweeps import PRUNER_SETTINGS
from embedmix.worker.sweeps import MEDIAN_STARTUP_TRIALS, make_pruner


def test_the_median_pruner_has_the_given_settings() -> None:
    pruner = make_pruner({"pruner": "median",
                          "pruner_options": {"n_startup_trials": 5, "n_warmup_steps": 3, "interval_steps": 2}})
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps, pruner._interval_steps) == (5, 3, 2)


def test_a_median_pruner_without_options_keeps_the_service_default() -> None:
    for config in ({"pruner": "median"}, {"pruner": "median", "pruner_options": None},
                   {"pruner": "median", "pruner_options": {"n_warmup_steps": 1}}):
        assert make_pruner(config)._n_startup_trials == MEDIAN_STARTUP_TRIALS


def test_the_successive_halving_pruner_has_the_given_settings() -> None:
    pruner = make_pruner({"pruner": "successive_halving",
                          "pruner_options": {"min_resource": 2, "reduction_factor": 3, "min_early_stopping_rate": 1}})
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor, pruner._min_early_stopping_rate) == (2, 3, 1)
    assert make_pruner({"pruner": "successive_halving"})._min_resource is None  # Optuna's "auto"


def test_no_pruner_prunes_nothing() -> None:
    assert isinstance(make_pruner({"pruner": "none", "pruner_options": None}), optuna.pruners.NopPruner)


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_every_setting_the_api_lets_through_is_an_argument_of_its_optuna_pruner(pruner: str) -> None:
    assert set().union(*PRUNER_SETTINGS.values()) == set(PrunerOptionsIn.model_fields)
    options = {name: 2 for name in PRUNER_SETTINGS[pruner]}
    make_pruner({"pruner": pruner, "pruner_options": options})  # a wrong name would be a TypeError
