"""The session's plots are drawn beside the export and logging, and a drawing that fails is not lost."""

import pandas as pd
import pytest

from cloud_training.device_training import DeviceResult, results_frame
from cloud_training.report import start_plots

pytestmark = pytest.mark.fast


def results() -> pd.DataFrame:
    """Return a results table of six served devices, with device and fleet errors."""
    rows = [
        DeviceResult(
            device_id=f"d{i}",
            status="trained",
            kind="device" if i % 2 else "fleet",
            family="ridge" if i % 3 else "gradient_boosting",
            mse=0.1 * (i + 1),
            fleet_mse=0.2 * (i + 1),
            device_mse=0.1 * (i + 1),
        )
        for i in range(6)
    ]
    return results_frame(rows)


def test_start_plots_draws_both_pngs_in_another_process(tmp_path):
    drawn = start_plots(results(), tmp_path / "plots")

    paths = drawn()

    assert [p.name for p in paths] == ["holdout_error.png", "device_vs_fleet.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn() == paths  # waiting again returns the same files


def test_a_plot_that_cannot_be_written_raises_when_waited_for(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the plots directory should go")

    drawn = start_plots(results(), blocker / "plots")

    with pytest.raises(OSError):
        drawn()
