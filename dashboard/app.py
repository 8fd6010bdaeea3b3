"""The Bokeh server app: fleet overview, a sortable device table and one device's live view.

Every browser tab is a Bokeh session with its own document, and each session's periodic callback
pulls from one shared `SnapshotCache`, so ten open tabs cost one fleet snapshot per second, not
ten. A session sends only what changed: throughput and latency are streamed point by point with
a rollover, the table is capped at `TABLE_ROWS` rows and is resent only when its rows changed,
and the device view is resent only when the selected device got new points.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from functools import partial
from html import escape
from typing import Any, Final

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, FactorRange, Row
from bokeh.models.widgets import DataTable, Div, NumberFormatter, Select, TableColumn, TextInput
from bokeh.plotting import figure
from bokeh.server.server import Server

from dashboard.state import STATUSES, TABLE_COLUMNS, FleetState, Overview

logger = logging.getLogger(__name__)

__all__ = ["SnapshotCache", "build_server", "make_document"]

UPDATE_MS: Final = 1000
TABLE_ROWS: Final = 200
ROLLOVER_POINTS: Final = 300
STATUS_COLORS: Final = {
    "device_model": "#2ca02c",
    "fleet_corrected": "#1f77b4",
    "fallback": "#ff7f0e",
    "drifting": "#d62728",
    "silent": "#7f7f7f",
}
KPIS: Final = (
    ("devices", "Devices"),
    ("predictions", "Predictions"),
    ("fleet_corrected", "Fleet + correction"),
    ("readings", "Raw readings"),
    ("fallbacks", "Fallbacks"),
    ("deadletters", "Dead letters"),
    ("drift_alerts", "Drift alerts"),
    ("malformed", "Malformed"),
    ("p50", "Latency p50 (ms)"),
    ("p99", "Latency p99 (ms)"),
)
SORT_LABELS: Final = {
    "last_seen_s_ago": "last seen",
    "status": "status",
    "readings": "readings",
    "predictions": "predictions",
    "fallbacks": "fallbacks",
    "deadletters": "dead letters",
    "mse": "residual MSE",
    "device_id": "device id",
}

SORT_OPTIONS: Final[list[str | tuple[Any, str]]] = [(name, SORT_LABELS[name]) for name in TABLE_COLUMNS]
ORDER_OPTIONS: Final[list[str | tuple[Any, str]]] = ["ascending", "descending"]


# BokehJS (3.x) redraws a DataTable only when its row count changes: replacing `data` with as many
# rows leaves the old cells on screen. Redraw the grid whenever its source's data is replaced.
_REDRAW_TABLE_JS: Final = "const view = Bokeh.index.find_one(table); if (view != null) view.updateGrid();"


def _redraw_on_change(table: DataTable) -> None:
    """Make the browser redraw `table` whenever its source's data is replaced."""
    table.source.js_on_change("data", CustomJS(args={"table": table}, code=_REDRAW_TABLE_JS))


class SnapshotCache:
    """Share fleet snapshots between sessions: recompute at most once per `max_age_s`."""

    def __init__(self, state: FleetState, max_age_s: float = 0.9) -> None:
        self.state = state
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._overview: tuple[float, Overview] | None = None
        self._tables: dict[tuple[str, bool, int], tuple[float, dict[str, list[Any]]]] = {}

    def overview(self) -> Overview:
        """Return a fleet overview no older than `max_age_s`."""
        now_s = time.monotonic()
        with self._lock:
            if self._overview is None or now_s - self._overview[0] > self.max_age_s:
                self._overview = (now_s, self.state.overview())
            return self._overview[1]

    def table(self, sort_by: str, descending: bool, limit: int) -> dict[str, list[Any]]:
        """Return the device table for one sort order, no older than `max_age_s`."""
        now_s = time.monotonic()
        key = (sort_by, descending, limit)
        with self._lock:
            cached = self._tables.get(key)
            if cached is None or now_s - cached[0] > self.max_age_s:
                cached = (now_s, self.state.device_table(sort_by, descending, limit))
                self._tables[key] = cached
            return cached[1]


def _format_number(value: float | int) -> str:
    """Return a compact display form of a counter or a latency."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.1f}"
    return f"{value:,}"


def _kpi_html(label: str, value: str) -> str:
    return (
        f'<div style="padding:4px 12px;border-left:3px solid #1f77b4">'
        f'<div style="font-size:11px;color:#555">{label}</div><b style="font-size:20px">{value}</b></div>'
    )


class _Session:
    """One browser session's models and its periodic update."""

    def __init__(self, doc: Document, state: FleetState, cache: SnapshotCache, update_ms: int) -> None:
        self.state = state
        self.cache = cache
        self.kpis = {key: Div(name=f"kpi_{key}", text=_kpi_html(label, "–")) for key, label in KPIS}
        self.kpi_labels = dict(KPIS)
        charts = self._build_fleet_charts()
        reason_bars = self._build_reason_bars()
        sort_controls = self._build_device_table()
        device_view = self._build_device_view()
        self.alerts_div = Div(text="", width=900, name="drift_alerts")

        doc.title = "edgefleet — fleet dashboard"
        doc.add_root(
            column(
                Div(text="<h2 style='margin:4px 0'>edgefleet fleet</h2>"),
                row(*self.kpis.values()),
                charts,
                reason_bars,
                sort_controls,
                self.table,
                row(self.device_input, self.device_info),
                device_view,
                self.alerts_div,
            )
        )
        self.tick()
        doc.add_periodic_callback(self.tick, update_ms)

    # -- layout ------------------------------------------------------------------------------

    def _build_fleet_charts(self) -> Row:
        """Return devices by status, throughput and latency, side by side."""
        self.status_source = ColumnDataSource(
            {"status": list(STATUSES), "count": [0] * len(STATUSES), "color": [STATUS_COLORS[s] for s in STATUSES]},
            name="status_source",
        )
        status_plot = figure(
            title="Devices by status",
            x_range=FactorRange(factors=list(STATUSES)),
            height=220,
            width=360,
            toolbar_location=None,
        )
        status_plot.vbar(x="status", top="count", color="color", width=0.8, source=self.status_source)

        self.throughput_source = ColumnDataSource({"t_ms": [], "readings_per_s": [], "predictions_per_s": []})
        self.last_throughput_ms = -math.inf
        throughput_plot = figure(
            title="Throughput (per second)", x_axis_type="datetime", height=220, width=460, toolbar_location=None
        )
        throughput_plot.line("t_ms", "predictions_per_s", source=self.throughput_source, legend_label="predictions")
        throughput_plot.line(
            "t_ms", "readings_per_s", source=self.throughput_source, color="#999999", legend_label="raw readings"
        )
        throughput_plot.legend.location = "top_left"

        self.latency_source = ColumnDataSource({"t_ms": [], "p50": [], "p99": []})
        latency_plot = figure(
            title="Edge latency (ms)", x_axis_type="datetime", height=220, width=460, toolbar_location=None
        )
        latency_plot.line("t_ms", "p50", source=self.latency_source, legend_label="p50")
        latency_plot.line("t_ms", "p99", source=self.latency_source, color="#d62728", legend_label="p99")
        latency_plot.legend.location = "top_left"
        return row(status_plot, throughput_plot, latency_plot)

    def _build_reason_bars(self) -> Row:
        """Return dead letters and fleet-model fallbacks by reason."""
        self.deadletter_source = ColumnDataSource({"reason": [], "count": []})
        self.deadletter_plot = figure(
            title="Dead letters by reason", y_range=FactorRange(), height=220, width=360, toolbar_location=None
        )
        self.deadletter_plot.hbar(y="reason", right="count", height=0.7, source=self.deadletter_source, color="#9467bd")
        self.fallback_source = ColumnDataSource({"reason": [], "count": []})
        self.fallback_plot = figure(
            title="Fleet-model fallbacks by reason", y_range=FactorRange(), height=220, width=360, toolbar_location=None
        )
        self.fallback_plot.hbar(y="reason", right="count", height=0.7, source=self.fallback_source, color="#ff7f0e")
        return row(self.deadletter_plot, self.fallback_plot)

    def _build_device_table(self) -> Row:
        """Build the sortable device table (`self.table`); return its sort controls."""
        self.sort_select = Select(
            title="Sort devices by",
            value="last_seen_s_ago",
            options=SORT_OPTIONS,
            width=160,
        )
        self.order_select = Select(title="Order", value="ascending", options=ORDER_OPTIONS, width=120)
        self.table_source = ColumnDataSource({name: [] for name in TABLE_COLUMNS}, name="table_source")
        self.table_key: tuple[Any, ...] | None = None
        number = NumberFormatter(format="0,0")
        columns = [
            TableColumn(field="device_id", title="device"),
            TableColumn(field="status", title="status"),
            TableColumn(field="readings", title="readings", formatter=number),
            TableColumn(field="predictions", title="predictions", formatter=number),
            TableColumn(field="fallbacks", title="fallbacks", formatter=number),
            TableColumn(field="deadletters", title="dead letters", formatter=number),
            TableColumn(field="mse", title="residual MSE", formatter=NumberFormatter(format="0.0000", nan_format="–")),
            TableColumn(field="last_seen_s_ago", title="last seen (s ago)", formatter=NumberFormatter(format="0.0")),
        ]
        self.table = DataTable(
            source=self.table_source,
            columns=columns,
            width=900,
            height=320,
            index_position=None,
            name="device_table",
        )
        _redraw_on_change(self.table)
        self.table_source.selected.on_change("indices", self._on_row_selected)
        self.sort_select.on_change("value", self._on_sort_changed)
        self.order_select.on_change("value", self._on_sort_changed)
        return row(self.sort_select, self.order_select)

    def _build_device_view(self) -> Row:
        """Build the device picker (`self.device_input`, `self.device_info`); return one device's charts."""
        self.device_input = TextInput(title="Device", placeholder="click a row or type a device id", width=260)
        self.device_input.on_change("value", self._on_device_changed)
        self.device_info = Div(text="", width=620, name="device_info")
        self.device_source = ColumnDataSource({"ts_ms": [], "actual": [], "predicted": [], "residual": []})
        self.device_key: tuple[str, int] | None = None
        device_plot = figure(
            title="Actual vs predicted", x_axis_type="datetime", height=240, width=560, toolbar_location=None
        )
        device_plot.line("ts_ms", "actual", source=self.device_source, legend_label="actual", color="#333333")
        device_plot.line("ts_ms", "predicted", source=self.device_source, legend_label="predicted", color="#1f77b4")
        device_plot.legend.location = "top_left"
        residual_plot = figure(
            title="Residual (actual − predicted)",
            x_axis_type="datetime",
            x_range=device_plot.x_range,
            height=180,
            width=560,
            toolbar_location=None,
        )
        residual_plot.scatter("ts_ms", "residual", source=self.device_source, size=4, color="#d62728")
        self.feature_source = ColumnDataSource({"name": [], "value": []})
        feature_table = DataTable(
            source=self.feature_source,
            columns=[
                TableColumn(field="name", title="feature"),
                TableColumn(field="value", title="last value", formatter=NumberFormatter(format="0.000")),
            ],
            width=300,
            height=420,
            index_position=None,
        )
        _redraw_on_change(feature_table)
        return row(column(device_plot, residual_plot), feature_table)

    # -- updates -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Pull the latest snapshots into this session's sources."""
        try:
            self._update_overview(self.cache.overview())
            self._update_table()
            self._update_device()
        except Exception:  # a failed tick must not kill the session's callback
            logger.exception("Dashboard update failed")

    def _update_overview(self, overview: Overview) -> None:
        values: dict[str, float | int] = {
            "devices": overview.devices,
            **overview.totals,
            "p50": overview.latency_p50_ms,
            "p99": overview.latency_p99_ms,
        }
        for key, div in self.kpis.items():
            text = _kpi_html(self.kpi_labels[key], _format_number(values.get(key, 0)))
            if div.text != text:
                div.text = text
        counts = [overview.by_status[status] for status in STATUSES]
        if counts != list(self.status_source.data["count"]):
            self.status_source.patch({"count": [(slice(0, len(counts)), counts)]})

        tp = overview.throughput
        new = [i for i, t_ms in enumerate(tp["t_ms"]) if t_ms > self.last_throughput_ms]
        if new:
            self.throughput_source.stream({key: [tp[key][i] for i in new] for key in tp}, rollover=ROLLOVER_POINTS)
            self.last_throughput_ms = tp["t_ms"][new[-1]]
        self.latency_source.stream(
            {"t_ms": [overview.now_s * 1000.0], "p50": [overview.latency_p50_ms], "p99": [overview.latency_p99_ms]},
            rollover=ROLLOVER_POINTS,
        )
        self._update_bars(self.deadletter_source, self.deadletter_plot, overview.deadletters_by_reason)
        self._update_bars(self.fallback_source, self.fallback_plot, overview.fallbacks_by_reason)
        # Device ids and alert fields come from the field: escape them before they become HTML.
        alerts_html = "".join(
            f"<li>{escape(alert['device_id'])}: {escape(alert['kind'])} drift"
            f"{' of ' + escape(alert['feature']) if alert.get('feature') else ''}, {escape(alert['metric'])} "
            f"{_format_number(alert['value'] or math.nan)} "
            f"(threshold {_format_number(alert['threshold'] or math.nan)})</li>"
            for alert in reversed(overview.drift_alerts[-8:])
        )
        text = f"<b>Latest drift alerts</b><ul>{alerts_html}</ul>" if alerts_html else ""
        if self.alerts_div.text != text:
            self.alerts_div.text = text

    @staticmethod
    def _update_bars(source: ColumnDataSource, plot: Any, bars: dict[str, list[Any]]) -> None:
        if list(source.data["reason"]) == bars["reason"] and list(source.data["count"]) == bars["count"]:
            return
        plot.y_range.factors = list(reversed(bars["reason"]))
        source.data = dict(bars)

    def _update_table(self, force: bool = False) -> None:
        descending = self.order_select.value == "descending"
        data = self.cache.table(self.sort_select.value, descending, TABLE_ROWS)
        # The seconds-ago column changes every tick; resend only when anything else moved too.
        key = tuple(tuple(data[name]) for name in TABLE_COLUMNS if name != "last_seen_s_ago")
        if force or key != self.table_key:
            self.table_key = key
            self.table_source.data = dict(data)
        if not self.device_input.value and data["device_id"]:
            self.device_input.value = data["device_id"][0]

    def _on_sort_changed(self, attr: str, old: str, new: str) -> None:
        self._update_table(force=True)

    def _on_device_changed(self, attr: str, old: str, new: str) -> None:
        self._update_device(force=True)

    def _on_row_selected(self, attr: str, old: Iterable[int], new: list[int]) -> None:
        if new:
            ids = self.table_source.data["device_id"]
            if new[0] < len(ids):
                self.device_input.value = ids[new[0]]

    def _update_device(self, force: bool = False) -> None:
        device_id = self.device_input.value.strip()
        view = self.state.device_view(device_id) if device_id else None
        if view is None:
            if device_id and force:
                self.device_info.text = f"<i>no device {escape(repr(device_id))} seen yet</i>"
            return
        key = (device_id, view["points_written"])
        if not force and key == self.device_key:
            return
        self.device_key = key
        self.device_source.data = view["points"]
        self.feature_source.data = view["features"]
        fallbacks = ", ".join(f"{reason}: {count}" for reason, count in view["fallbacks"].items()) or "none"
        drift = view["drift"]
        drift_text = (
            f"; drift: {escape(drift['kind'])}{' of ' + escape(drift['feature']) if drift.get('feature') else ''} "
            f"{escape(drift['metric'])} {drift['value']}"
            if drift
            else ""
        )
        self.device_info.text = (
            f"<b>{escape(device_id)}</b> — {view['status']}; {view['predictions']:,} predictions, "
            f"{view['readings']:,} raw readings; fallbacks: {escape(fallbacks)}; "
            f"residual MSE {view['mse']:.4g}{drift_text}"
        )


def make_document(doc: Document, state: FleetState, cache: SnapshotCache, update_ms: int = UPDATE_MS) -> None:
    """Build one session's document."""
    _Session(doc, state, cache, update_ms)


def build_server(
    state: FleetState,
    *,
    port: int,
    address: str = "127.0.0.1",
    allow_websocket_origin: Iterable[str] = (),
    update_ms: int = UPDATE_MS,
) -> Server:
    """Return a Bokeh server (not started) that serves the dashboard at `/`."""
    cache = SnapshotCache(state, max_age_s=update_ms / 1000.0 * 0.9)
    application = Application(FunctionHandler(partial(make_document, state=state, cache=cache, update_ms=update_ms)))
    origins = list(allow_websocket_origin) or [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return Server({"/": application}, port=port, address=address, allow_websocket_origin=origins, num_procs=1)
