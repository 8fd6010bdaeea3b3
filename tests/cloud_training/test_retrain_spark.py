"""Spark wiring of retraining, the parts that need no JVM: what a Spark error tells the user."""

from __future__ import annotations

import pytest

from cloud_training.retrain_spark import spark_error_text

pytestmark = pytest.mark.fast


def test_a_spark_error_is_reported_by_its_jvm_causes_without_the_stack_trace():
    err = RuntimeError(
        "An error occurred while calling o42.parquet.\n"
        ": org.apache.spark.sql.AnalysisException: [PATH_NOT_FOUND] Path does not exist: file:/lake.\n"
        "\tat org.apache.spark.sql.errors.QueryCompilationErrors$.dataPathNotExistError(...)\n"
        "Caused by: java.io.IOException: disk gone\n"
        "Caused by: java.io.IOException: disk gone\n"
    )
    assert spark_error_text(err) == "[PATH_NOT_FOUND] Path does not exist: file:/lake.; disk gone"


def test_an_error_without_a_jvm_cause_is_reported_by_its_first_line():
    assert spark_error_text(RuntimeError("Python worker exited\nmore")) == "Python worker exited"
    assert spark_error_text(RuntimeError("")) == "RuntimeError"
