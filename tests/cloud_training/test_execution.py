"""Where a training session runs: the memory the history needs, from its footers, and masters the user asked for."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cloud_training import execution
from cloud_training.execution import choose_execution, count_parquet_work, is_local_master, local_workers
from cloud_training.settings import TrainSettings
from edgefleet.errors import EdgefleetError
from edgefleet.history import write_history
from edgefleet.lake import append_to_lake
from simulator.history import HistorySpec, generate_history


@pytest.fixture
def small_history(tmp_path: Path) -> Path:
    frame = generate_history(HistorySpec(n_devices=6, rows_per_device=50, seed=2))
    return write_history(frame, tmp_path / "h.parquet")


def test_auto_trains_a_fleet_that_fits_in_memory_in_process_and_says_how_big_it_is(small_history):
    choice = choose_execution(
        "auto", "local[*]", small_history, session_running=False, memory_available_bytes=8 * 10**9
    )
    columns = len(pq.read_schema(small_history).names)
    assert choice.in_process and (choice.devices, choice.device_rows) == (6, 300)
    assert choice.memory_estimate_bytes == 300 * columns * execution.IN_PROCESS_BYTES_PER_CELL
    assert choice.line.startswith(
        f"execution: in-process (6 devices x 50 rows x {columns} columns need ~0.0 GB of the 8.0 GB available; "
    )
    assert "--execution spark to force Spark" in choice.line
    assert choice.as_record()["chosen"] == "in_process"
    assert choice.as_record()["memory_available_bytes"] == 8 * 10**9


def test_auto_counts_only_the_columns_training_reads_when_the_features_are_named(small_history):
    choice = choose_execution(
        "auto",
        "local[*]",
        small_history,
        features=("temperature_c",),
        session_running=False,
        memory_available_bytes=8 * 10**9,
    )
    assert choice.memory_estimate_bytes == 300 * 4 * execution.IN_PROCESS_BYTES_PER_CELL


def test_auto_uses_spark_when_the_history_would_not_fit_in_the_memory_available(small_history):
    columns = len(pq.read_schema(small_history).names)
    estimate = 300 * columns * execution.IN_PROCESS_BYTES_PER_CELL
    just_too_little = int(estimate / execution.IN_PROCESS_MEMORY_SHARE) - 1

    choice = choose_execution(
        "auto", "local[2]", small_history, session_running=False, memory_available_bytes=just_too_little
    )

    assert not choice.in_process and choice.device_rows == 300
    assert choice.line.startswith(f"execution: Spark (300 device-rows x {columns} columns need ~0.0 GB in-process, ")
    assert choice.line.endswith("available; --execution local to force in-process)")
    enough = choose_execution(
        "auto", "local[2]", small_history, session_running=False, memory_available_bytes=just_too_little + 2
    )
    assert enough.in_process


def test_the_memory_available_is_read_from_this_machine():
    available = execution.available_memory_bytes()
    assert available is not None and 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("master", ["spark://10.0.0.5:7077", "sc://127.0.0.1:15002", "yarn", "k8s://https://k:443"])
def test_auto_never_replaces_a_cluster_master_the_user_named(small_history, master):
    choice = choose_execution("auto", master, small_history, session_running=False)
    assert choice.chosen == "spark" and master in choice.reason


def test_a_cluster_master_from_spark_master_is_kept_too(small_history, monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    settings = TrainSettings(history=small_history)
    choice = choose_execution(settings.execution, settings.master, settings.history, session_running=False)
    assert choice.chosen == "spark" and "spark://cluster:7077" in choice.reason


def test_auto_joins_a_spark_session_already_running_under_spark_submit(small_history, monkeypatch):
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40000")
    choice = choose_execution("auto", "local[*]", small_history)
    assert choice.chosen == "spark" and "already running" in choice.reason


def test_forcing_spark_uses_spark_even_for_a_tiny_fleet(small_history):
    choice = choose_execution("spark", "local[*]", small_history, session_running=False)
    assert choice.chosen == "spark" and choice.line == "execution: Spark (--execution spark on local[*])"


def test_csv_and_json_lines_stay_on_spark_under_auto_and_local_refuses_them(tmp_path):
    frame = generate_history(HistorySpec(n_devices=2, rows_per_device=20, seed=2))
    frame.to_csv(tmp_path / "h.csv", index=False)
    frame.to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    for name, fmt in (("h.csv", "CSV"), ("h.jsonl", "JSON")):
        choice = choose_execution("auto", "local[*]", tmp_path / name, session_running=False)
        assert choice.chosen == "spark" and choice.reason.startswith(f"{fmt} history: only Spark reads it")
        with pytest.raises(EdgefleetError, match="--execution local reads parquet and the lake only"):
            choose_execution("local", "local[*]", tmp_path / name)


def test_the_lake_is_counted_from_its_footers_across_date_partitions(tmp_path):
    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=200, seed=6, interval_s=900))
    append_to_lake(tmp_path / "lake", frame.assign(seq=range(len(frame))))
    assert len(list((tmp_path / "lake").glob("date=*"))) > 1
    assert count_parquet_work(tmp_path / "lake", count_devices=True) == (600, 3)
    assert choose_execution("auto", "local[2]", tmp_path / "lake", session_running=False).in_process


def test_local_masters_are_replaceable_and_give_their_slot_count():
    assert all(is_local_master(m) for m in ("local", "local[2]", "local[*]", "local[4,2]"))
    assert not any(is_local_master(m) for m in ("spark://h:7077", "sc://h", "yarn", "localhost"))
    assert (local_workers("local"), local_workers("local[3]"), local_workers("local[3,2]")) == (1, 3, 3)
    assert local_workers("local[*]") == os.cpu_count()
