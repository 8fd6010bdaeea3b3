import json

import numpy as np
import pandas as pd
import pytest

from edgefleet.errors import HistoryError
from edgefleet.history import read_history, write_history
from edgefleet.lake import append_to_lake
from simulator.history import DATA_FAULTS, HistorySpec, generate_history
from simulator.physics import FEATURES

pytestmark = pytest.mark.fast


def test_generate_history_is_seeded_and_sized():
    spec = HistorySpec(n_devices=4, rows_per_device=50, seed=9)
    first, again = generate_history(spec), generate_history(spec)
    pd.testing.assert_frame_equal(first, again)
    assert first.groupby("device_id").size().tolist() == [50] * 4
    assert not first.equals(generate_history(HistorySpec(n_devices=4, rows_per_device=50, seed=10)))


def test_bad_fraction_damages_that_share_of_devices_with_every_fault_kind():
    frame = generate_history(HistorySpec(n_devices=60, rows_per_device=40, seed=1, bad_fraction=1.0))
    per_device = frame.groupby("device_id")
    few_rows = (per_device.size() == 3).sum()
    nan_labels = per_device["label"].apply(lambda s: s.isna().any()).sum()
    constant = per_device["label"].apply(lambda s: s.notna().all() and s.nunique() == 1).sum()
    broken = per_device["temperature_c"].apply(lambda s: (s == 1e300).all()).sum()
    newest = per_device["ts"].max()
    stale = (newest < newest.max() - pd.Timedelta(days=60)).sum()
    assert min(few_rows, nan_labels, constant, broken, stale) >= 1
    assert few_rows + nan_labels + constant + broken + stale == 60
    assert len(DATA_FAULTS) == 5


def test_read_history_reads_parquet_csv_and_json_lines_alike(tmp_path):
    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=20, seed=2))
    write_history(frame, tmp_path / "h.parquet")
    frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(tmp_path / "h.csv", index=False)
    with (tmp_path / "h.jsonl").open("w") as fh:
        for row in frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dict("records"):
            fh.write(json.dumps(row) + "\n")
    loaded = [read_history(tmp_path / name) for name in ("h.parquet", "h.csv", "h.jsonl")]
    for data, features in loaded:
        assert features == FEATURES
        np.testing.assert_allclose(data["label"], frame["label"])
        assert (data["ts"] == frame["ts"]).all()


def test_read_history_reads_the_lake_layout_and_ignores_prediction_columns(tmp_path):
    frame = generate_history(HistorySpec(n_devices=2, rows_per_device=400, seed=2, interval_s=600))
    lake_rows = frame.assign(seq=np.arange(len(frame)), prediction_value=1.0, edge_latency_ms=2.0)
    written = append_to_lake(tmp_path / "lake", lake_rows)
    assert len(written) >= 2  # 400 readings x 10 min span several days
    assert all(p.parent.name.startswith("date=") for p in written)
    data, features = read_history(tmp_path / "lake")
    assert features == FEATURES
    assert len(data) == len(frame)


def test_read_history_names_missing_columns(tmp_path):
    pd.DataFrame({"device_id": ["a"], "ts": ["2026-01-01"], "x": [1.0]}).to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(HistoryError, match=r"lacks column.*label"):
        read_history(tmp_path / "h.csv")


def test_read_history_rejects_unknown_file_type_and_missing_path(tmp_path):
    (tmp_path / "h.xlsx").write_text("x")
    with pytest.raises(HistoryError, match=r"\.parquet, \.csv or \.jsonl"):
        read_history(tmp_path / "h.xlsx")
    with pytest.raises(HistoryError, match="not found"):
        read_history(tmp_path / "nope.parquet")
