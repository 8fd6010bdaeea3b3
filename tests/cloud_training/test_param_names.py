"""Parameter names kept per class are the names scikit-learn reads from the class's signature."""

import pytest
from sklearn.base import BaseEstimator
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeRegressor

from cloud_training.fast_paths import original_of
from cloud_training.param_names import kept_param_names

pytestmark = pytest.mark.fast


def scikit_learns_names():
    return original_of("sklearn.base", "BaseEstimator._get_param_names")


class Thermostat(BaseEstimator):
    def __init__(self, setpoint_c=20.0, band_c=0.5):
        self.setpoint_c = setpoint_c
        self.band_c = band_c


class Loose(BaseEstimator):
    def __init__(self, *knobs):
        self.knobs = knobs


@pytest.mark.parametrize(
    "cls", [DecisionTreeRegressor, RandomForestRegressor, GradientBoostingRegressor, Ridge, Pipeline, Thermostat]
)
def test_kept_names_are_scikit_learns_names(cls):
    names = kept_param_names(scikit_learns_names())

    assert names(cls) == names(cls) == scikit_learns_names()(cls)


def test_a_caller_changing_its_list_does_not_change_the_next_answer():
    names = kept_param_names(scikit_learns_names())
    names(Thermostat).append("intruder")

    assert names(Thermostat) == ["band_c", "setpoint_c"]


def test_a_class_given_a_new_init_is_read_again(monkeypatch):
    names = kept_param_names(scikit_learns_names())
    names(Thermostat)

    def init(self, setpoint_c=20.0, band_c=0.5, hysteresis_s=30.0):
        pass

    monkeypatch.setattr(Thermostat, "__init__", init)

    assert names(Thermostat) == ["band_c", "hysteresis_s", "setpoint_c"]


def test_a_class_scikit_learn_refuses_is_refused_every_time():
    names = kept_param_names(scikit_learns_names())

    for _ in range(2):
        with pytest.raises(RuntimeError, match="varargs"):
            names(Loose)


def test_clone_and_get_params_use_the_kept_names():
    forest = RandomForestRegressor(n_estimators=3, random_state=2)

    assert forest.get_params()["n_estimators"] == 3
    assert BaseEstimator._get_param_names.__func__.__wrapped__ is scikit_learns_names()
