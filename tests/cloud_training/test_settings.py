import pytest
from pydantic import ValidationError

from cloud_training.settings import TrainSettings

pytestmark = pytest.mark.fast


def test_spark_master_and_mlflow_uri_come_from_their_usual_environment_variables(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    settings = TrainSettings(history="h.parquet")
    assert (settings.master, settings.tracking_uri) == ("spark://cluster:7077", "http://mlflow:5000")


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    assert TrainSettings(history="h.parquet", master="local[2]").master == "local[2]"


def test_defaults_are_local_spark_and_a_sqlite_store_in_the_working_dir(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = TrainSettings(history="h.parquet")
    assert (settings.master, settings.tracking_uri, settings.tracking) == (
        "local[*]",
        "sqlite:///mlflow.db",
        "scalable",
    )


def test_unknown_settings_are_rejected_not_ignored():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainSettings(history="h.parquet", famlies=("ridge",))
