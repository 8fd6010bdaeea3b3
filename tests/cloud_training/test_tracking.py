import random

import pytest
from mlflow.exceptions import RestException

from cloud_training.tracking import is_transient, with_backoff

pytestmark = pytest.mark.fast


def rest_error(code: str) -> RestException:
    return RestException({"error_code": code, "message": code})


def test_backoff_retries_rate_limits_and_server_errors_then_succeeds():
    failures = [rest_error("REQUEST_LIMIT_EXCEEDED"), rest_error("TEMPORARILY_UNAVAILABLE")]
    delays = []

    def call():
        if failures:
            raise failures.pop(0)
        return "ok"

    assert with_backoff(call, sleep=delays.append, rng=random.Random(0), base_s=1.0) == "ok"
    assert len(delays) == 2
    assert 0 <= delays[0] <= 1.0 and 0 <= delays[1] <= 2.0  # full jitter under an exponential cap


def test_backoff_gives_up_at_once_on_a_client_error():
    delays = []

    def call():
        raise rest_error("INVALID_PARAMETER_VALUE")

    with pytest.raises(RestException):
        with_backoff(call, sleep=delays.append)
    assert delays == []


def test_backoff_stops_after_its_attempts():
    calls = []

    def call():
        calls.append(1)
        raise rest_error("REQUEST_LIMIT_EXCEEDED")

    with pytest.raises(RestException):
        with_backoff(call, attempts=4, sleep=lambda _: None)
    assert len(calls) == 4


def test_locked_sqlite_store_counts_as_transient():
    assert is_transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(ValueError("bad value"))
