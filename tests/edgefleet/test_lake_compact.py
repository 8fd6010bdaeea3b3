"""Compaction merges a partition's small files while the sink writes: no row lost, none doubled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgefleet.lake import append_to_lake, lake_files, read_lake
from edgefleet.lake_compact import LOCK_NAME, LakeBusyError, _partition_lock, compact_partition, lake_partitions
from edgefleet.routes import Message
from edgefleet_cli.cli import main
from edgehub.sink import LakeSink

pytestmark = pytest.mark.fast

DAY = "2026-11-20"
JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def rows(seqs: range, device: str = "dev-1", **columns: object) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "device_id": device,
            "seq": list(seqs),
            "ts": pd.Timestamp(f"{DAY}T12:00:00Z"),
            "temp": [float(s) for s in seqs],
            "label": float("nan"),
            "source_module": "sensor",
        }
    )
    for name, value in columns.items():
        frame[name] = value
    return frame


def small_files(lake: Path, n_files: int, rows_each: int = 10) -> None:
    for i in range(n_files):
        append_to_lake(lake, rows(range(i * rows_each, (i + 1) * rows_each)))


def keys_of_raw_read(partition: Path) -> list[tuple[str, int, str]]:
    """Every row's key as a plain parquet reader (what Spark does) sees the partition."""
    table = pq.ParquetDataset(partition).read(columns=["device_id", "seq", "source_module"])
    return list(zip(*(table.column(c).to_pylist() for c in ("device_id", "seq", "source_module")), strict=True))


def reading_message(seq: int, device: str) -> Message:
    body = {
        "schema": "edgefleet.telemetry/1",
        "device_id": device,
        "seq": seq,
        "ts": f"{DAY}T12:00:00Z",
        "features": {"temp": float(seq)},
    }
    return Message("edge1", "sensor", "telemetry", body=json.dumps(body).encode(), system_properties=JSON)


def test_small_files_merge_into_one_file_with_every_row_once(tmp_path: Path) -> None:
    small_files(tmp_path, 30)
    partition = tmp_path / f"date={DAY}"

    result = compact_partition(partition)

    assert (result.files_before, result.files_after, result.files_merged, result.rows) == (30, 1, 30, 300)
    assert len(list(partition.glob("*.parquet"))) == 1
    assert sorted(seq for _, seq, _ in keys_of_raw_read(partition)) == list(range(300))
    assert not list(partition.glob("_compacting-*")) and not list(partition.glob(".*.tmp"))
    assert compact_partition(partition).files_merged == 0  # nothing left to merge


def test_files_are_merged_into_files_of_about_the_target_size(tmp_path: Path) -> None:
    small_files(tmp_path, 40, rows_each=200)
    partition = tmp_path / f"date={DAY}"
    size = next(partition.glob("*.parquet")).stat().st_size

    result = compact_partition(partition, target_bytes=10 * size)

    assert result.files_written == 4 and result.files_after == 4
    assert len(read_lake(tmp_path)) == 8000


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    small_files(tmp_path, 5)
    before = sorted(tmp_path.glob("date=*/*.parquet"))

    result = compact_partition(tmp_path / f"date={DAY}", dry_run=True)

    assert (result.files_merged, result.files_after, result.rows) == (5, 1, 50)
    assert sorted(tmp_path.glob("date=*/*.parquet")) == before


def test_files_of_different_schemas_merge_into_their_union(tmp_path: Path) -> None:
    old = rows(range(0, 5)).drop(columns=["source_module"])  # an old file: no bookkeeping columns
    newer = rows(range(5, 10), humidity=0.5, message_id="m1")  # a feature and a message column more
    nulls = rows(range(10, 15), prediction_model_version=None)  # an all-null column (parquet type null)
    for frame in (old, newer, nulls):
        append_to_lake(tmp_path, frame)
    expected = read_lake(tmp_path, keep_duplicates=True).sort_values("seq", ignore_index=True)

    compact_partition(tmp_path / f"date={DAY}")

    merged = read_lake(tmp_path, keep_duplicates=True).sort_values("seq", ignore_index=True)
    assert len(list(tmp_path.glob("date=*/*.parquet"))) == 1
    assert merged.columns[:4].tolist() == ["device_id", "seq", "ts", "temp"]
    assert merged["humidity"].isna().sum() == 10 and merged["message_id"].tolist()[5:10] == ["m1"] * 5
    pd.testing.assert_frame_equal(merged[expected.columns], expected, check_dtype=False)


@pytest.mark.parametrize(
    "sink_kwargs",
    [pytest.param({}, id="file-per-flush"), pytest.param({"roll_every_s": 3600, "roll_bytes": 3000}, id="rolling")],
)
def test_compaction_while_the_sink_writes_loses_and_doubles_no_row(tmp_path: Path, sink_kwargs: dict[str, Any]) -> None:
    written: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def write() -> None:
        with LakeSink(tmp_path, flush_every_s=60, flush_rows=25, **sink_kwargs) as sink:
            seq = 0
            while not stop.is_set() or seq < 2000:
                device = f"dev-{seq % 4}"
                sink(reading_message(seq, device))
                written.append((device, seq, "sensor"))
                seq += 1
                if seq % 100 == 0:
                    time.sleep(0.005)

    writer = threading.Thread(target=write)
    writer.start()
    partition = tmp_path / f"date={DAY}"
    merged = 0
    deadline = time.monotonic() + 20
    while (writer.is_alive() or merged == 0) and time.monotonic() < deadline:
        if partition.is_dir():
            merged += compact_partition(partition, target_bytes=64 * 1024).files_merged
            # Meanwhile every row once, even undeduplicated (the markers), and never a failure.
            seen = read_lake(tmp_path, keep_duplicates=True)
            assert not seen.duplicated(["device_id", "seq", "source_module"]).any()
        if len(written) >= 2000:
            stop.set()
    stop.set()
    writer.join()
    compact_partition(partition, target_bytes=64 * 1024)

    assert merged > 20
    raw = keys_of_raw_read(partition)
    assert len(raw) == len(set(raw)) and set(raw) == set(written)
    assert len(lake_files(tmp_path)) < 80  # flushes of 25 rows: 80+ files without compaction


def test_a_second_compaction_of_a_partition_refuses_while_the_first_runs(tmp_path: Path) -> None:
    small_files(tmp_path, 3)
    partition = tmp_path / f"date={DAY}"

    with _partition_lock(partition, wait=False):
        with pytest.raises(LakeBusyError, match=LOCK_NAME):
            compact_partition(partition)
        assert main(["lake", "compact", str(tmp_path)]) == 1
    assert compact_partition(partition).files_merged == 3


@pytest.mark.parametrize("state", ["writing", "committed"])
def test_read_lake_counts_each_row_once_while_a_compaction_is_midway(tmp_path: Path, state: str) -> None:
    small_files(tmp_path, 4)
    partition = tmp_path / f"date={DAY}"
    inputs = sorted(p.name for p in partition.glob("*.parquet"))
    merged = pa.concat_tables([pq.read_table(partition / name) for name in inputs])
    pq.write_table(merged, partition / "part-merged.parquet")
    marker = {"state": state, "inputs": inputs, "outputs": ["part-merged.parquet"]}
    (partition / "_compacting-x.json").write_text(json.dumps(marker))

    assert len(read_lake(tmp_path, keep_duplicates=True)) == 40
    result = compact_partition(partition)  # finishes (committed) or undoes (writing) the killed one first

    assert result.recovered == 1
    assert sorted(seq for _, seq, _ in keys_of_raw_read(partition)) == list(range(40))


def test_lake_compact_prints_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_files(tmp_path, 6)
    assert main(["lake", "compact", str(tmp_path), "--dry-run"]) == 0
    assert f"date={DAY}: 6 -> 1 files (would merge 6 into 1), 60 rows" in capsys.readouterr().out

    assert main(["lake", "compact", str(tmp_path), "--date", DAY]) == 0

    out = capsys.readouterr().out
    assert f"date={DAY}: 6 -> 1 files (merged 6 into 1), 60 rows" in out and " s\n" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["missing-lake"], "no lake at"),
        (["LAKE", "--date", "2026-13-01"], "is not a date"),
        (["LAKE", "--date", "2026-1-1"], "is not a date"),
        (["LAKE", "--date", "2026-11-21"], "has no partition date=2026-11-21"),
        (["LAKE", "--target-mb", "0"], "--target-mb must be positive"),
    ],
)
def test_lake_compact_mistakes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    small_files(tmp_path, 2)
    argv = [str(tmp_path) if a == "LAKE" else str(tmp_path / a) if a == "missing-lake" else a for a in argv]

    assert main(["lake", "compact", *argv]) == 2

    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_older_than_h_picks_the_days_that_ended_long_enough_ago(tmp_path: Path) -> None:
    for day in ("2026-11-18", "2026-11-19", "2026-11-20"):
        (tmp_path / f"date={day}").mkdir()
    now = pd.Timestamp("2026-11-20T07:00:00Z").to_pydatetime()

    found = lake_partitions(tmp_path, older_than_h=6, now=now)

    assert [p.name for p in found] == ["date=2026-11-18", "date=2026-11-19"]
    assert [p.name for p in lake_partitions(tmp_path, older_than_h=8, now=now)] == ["date=2026-11-18"]
