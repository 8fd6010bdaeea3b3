"""The dashboard end to end: a real hub broker, the dashboard process and headless Chromium over DevTools."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.routes import Message
from edgefleet_cli.local_edge import free_port
from tests.hub_logins import HubLogins

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def prediction_batch(devices: list[str], seq: int, *, model: str = "device") -> Message:
    items = []
    for device in devices:
        items.append(
            {
                "schema": "edgefleet.telemetry/1",
                "device_id": device,
                "seq": seq,
                "ts": f"2026-11-20T10:00:{seq:02d}Z",
                "features": {"temp": 20.0 + seq % 7, "vib": 0.1 * (seq % 5)},
                "label": 1.0 + seq % 3,
                "prediction": {
                    "value": 1.1 + seq % 3,
                    "model": model,
                    "model_version": "1",
                    "fallback_reason": None if model == "device" else "no_model",
                },
                "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T10:00:00Z", "latency_ms": 3.0 + seq % 4},
            }
        )
    body = json.dumps({"schema": "edgefleet.batch/1", "readings": items}, separators=(",", ":")).encode()
    return Message("edge1", "inference", "predictions", {}, JSON, body)


DRIFT_ALERT = {
    "schema": "edgefleet.alert/1",
    "kind": "drift",
    "detail": "device dev-005: rolling MSE is 3.1x its hold-out MSE",
    "device_id": "dev-005",
    "drift": {"kind": "residual", "metric": "mse_ratio", "value": 3.1, "threshold": 2.0, "window_readings": 200},
}
# A field device may name itself anything: its id must reach the page as text, not markup.
FEATURE_ALERT = {
    "schema": "edgefleet.alert/1",
    "kind": "drift",
    "detail": "feature temperature_c has PSI 0.4",
    "device_id": "dev-<i>9</i>",
    "drift": {"kind": "feature", "metric": "psi", "feature": "temperature_c", "value": 0.4, "threshold": 0.25},
}
DEAD_LETTER = {"schema": "edgefleet.deadletter/1", "reason": "not_json", "detail": "x", "source": "s", "payload": "{"}


def side_message(output: str, obj: dict[str, Any]) -> Message:
    return Message("edge1", "inference", output, {}, JSON, json.dumps(obj).encode())


class Chromium:
    """Headless Chromium driven over the DevTools protocol with websocket-client."""

    def __init__(self, user_data_dir: Path) -> None:
        import websocket

        self.port = free_port("127.0.0.1")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1800",
                f"--remote-debugging-port={self.port}",
                "--remote-allow-origins=*",
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page = wait_until(self._page_target, 30, "Chromium's DevTools endpoint")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(method)

    def _page_target(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as response:
                targets = json.load(response)
        except OSError:
            return None
        return next((target for target in targets if target.get("type") == "page"), None)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result, keeping the events that arrive meanwhile."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method} failed: {reply['error']}")
                return dict(reply.get("result", {}))
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its value (None on exceptions)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Return console errors and uncaught exceptions seen so far (favicon misses excluded)."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                if "favicon" not in entry.get("url", "") + entry.get("text", ""):
                    found.append(f"{entry.get('text')} {entry.get('url', '')}")
        return found

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def kpi(name: str) -> str:
    """Return JS that reads a KPI Div's number from the Bokeh document (null before it renders)."""
    return (
        "(() => { const d = window.Bokeh && Bokeh.documents[0]; if (!d) return null;"
        f" const m = d.get_model_by_name('kpi_{name}'); if (!m) return null;"
        " const t = m.text.match(/<b[^>]*>([^<]*)<\\/b>/); return t ? t[1] : null; })()"
    )


GRID_ROWS_JS = """(() => {
  const rows = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.classList && el.classList.contains('slick-row')) {
        rows.push(Array.from(el.querySelectorAll('.slick-cell')).map((cell) => cell.textContent));
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return rows;
})()"""


def displayed_row(browser: Chromium, device: str) -> list[str] | None:
    """Return the table row the page shows for a device (the cells as text), or None."""
    rows = browser.evaluate(GRID_ROWS_JS) or []
    return next((row for row in rows if row and row[0] == device), None)


def number(text: str | None) -> int | None:
    return None if text is None or not re.fullmatch(r"[\d,]+", text) else int(text.replace(",", ""))


class DashboardProcess:
    """`python -m dashboard` against a hub broker."""

    def __init__(self, hub_port: int, log_path: Path, logins: HubLogins) -> None:
        self.port = free_port("127.0.0.1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dashboard",
                "--hub",
                f"127.0.0.1:{hub_port}",
                *logins.dashboard_flags(),
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        wait_until(self._serving, 30, "the dashboard to serve")
        wait_until(lambda: "Dashboard connected to the hub" in self.log(), 30, "the dashboard to subscribe")

    def _serving(self) -> bool:
        assert self.process.poll() is None, f"the dashboard exited:\n{self.log()}"
        return "Dashboard: http://" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(15)
        finally:
            self._log.close()


@pytest.fixture
def hub(tmp_path: Path, hub_logins: HubLogins) -> Iterator[int]:
    port = free_port("127.0.0.1")
    with hub_logins.broker(tmp_path / "hub", port):
        yield port


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_the_dashboard_shows_live_predictions_in_a_browser_without_errors(
    hub: int, tmp_path: Path, hub_logins: HubLogins
) -> None:
    dashboard = DashboardProcess(hub, tmp_path / "dashboard.log", hub_logins)
    publisher = hub_logins.publisher(hub, "test-dashboard-publisher")
    browser: Chromium | None = None
    try:
        assert publisher.connected.wait(10)
        devices = [f"dev-{n:03d}" for n in range(30)]
        for seq in range(3):
            publisher(prediction_batch(devices[:20], seq))
        publisher(prediction_batch(devices[20:], 0, model="fleet"))
        assert publisher.close(10) is not None  # flushed; reopened below for the second wave
        browser = Chromium(tmp_path / "chromium")
        browser.call("Page.navigate", url=dashboard.url)
        first = wait_until(lambda: number(browser.evaluate(kpi("predictions"))), 30, "predictions on the page")
        assert first == 70
        assert number(browser.evaluate(kpi("devices"))) == 30
        assert number(browser.evaluate(kpi("fallbacks"))) == 10
        table_rows = browser.evaluate(
            "(() => { const d = Bokeh.documents[0].get_model_by_name('table_source').data;"
            " return (d instanceof Map ? d.get('device_id') : d.device_id).length; })()"
        )
        assert table_rows == 30
        assert wait_until(lambda: displayed_row(browser, "dev-020"), 10, "the table row")[1:4] == ["fallback", "0", "1"]

        more = hub_logins.publisher(hub, "test-dashboard-publisher-2")
        assert more.connected.wait(10)
        for seq in range(3, 8):
            more(prediction_batch(devices, seq))
        more(side_message("alerts", DRIFT_ALERT))
        more(side_message("alerts", FEATURE_ALERT))
        more(side_message("deadletter", DEAD_LETTER))
        assert more.close(10)
        wait_until(lambda: number(browser.evaluate(kpi("predictions"))) == 70 + 150, 15, "the count to grow")
        assert number(browser.evaluate(kpi("drift_alerts"))) == 2
        alerts_text = wait_until(
            lambda: browser.evaluate("Bokeh.documents[0].get_model_by_name('drift_alerts').text") or None,
            10,
            "the drift alert list",
        )
        assert "dev-&lt;i&gt;9&lt;/i&gt;: feature drift of temperature_c, psi 0.4" in alerts_text
        assert "dev-005: residual drift, mse_ratio 3.1" in alerts_text
        assert number(browser.evaluate(kpi("deadletters"))) == 1
        # The table on screen follows too: dev-020 is served by its own model now.
        wait_until(
            lambda: (displayed_row(browser, "dev-020") or [])[1:4] == ["device_model", "0", "6"], 10, "the table row"
        )

        time.sleep(1.5)  # let the device view and plots render a tick with the new data
        shot = browser.call("Page.captureScreenshot", format="png")
        import base64

        png = base64.b64decode(shot["data"])
        (tmp_path / "dashboard-screenshot.png").write_bytes(png)
        out = REPO / "out"
        out.mkdir(exist_ok=True)
        (out / "dashboard-screenshot.png").write_bytes(png)
        assert len(png) > 10_000
        browser.evaluate("1")  # drain late events
        assert browser.errors() == [], browser.errors()
    finally:
        if browser is not None:
            browser.close()
        publisher.close(1)
        code = dashboard.stop()
    assert code == 0, dashboard.log()
    assert "Traceback" not in dashboard.log(), dashboard.log()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_the_dashboard_follows_a_running_local_loop_in_a_browser(
    start_edge: Any, publisher_factory: Any, small_bundle: Path, tmp_path: Path
) -> None:
    from edgefleet.bundle import read_manifest
    from tests.edge_fixtures import reading

    # The real loop: field broker, stand-in, sensor and inference processes, the dashboard process.
    edge = start_edge(dashboard_port=free_port())
    url = f"http://127.0.0.1:{edge.dashboard_port}/"
    wait_until(lambda: _answers(url), 30, "the dashboard to serve")
    trained = sorted(d for d, e in read_manifest(small_bundle).devices.items() if e.kind == "device")
    publisher = publisher_factory(edge)
    publisher.publish_all(reading(device, seq) for device in trained for seq in range(5))
    publisher.wait_acked()

    browser = Chromium(tmp_path / "chromium")
    try:
        browser.call("Page.navigate", url=url)
        first = wait_until(lambda: number(browser.evaluate(kpi("predictions"))), 30, "predictions on the page")
        assert number(browser.evaluate(kpi("devices"))) == len(trained)
        publisher.publish_all(reading(device, seq) for device in trained for seq in range(5, 10))
        publisher.wait_acked()
        total = len(trained) * 10
        wait_until(lambda: number(browser.evaluate(kpi("predictions"))) == total, 30, "the count to grow")
        assert first < total
        shot = browser.call("Page.captureScreenshot", format="png")
        import base64

        png = base64.b64decode(shot["data"])
        (tmp_path / "dashboard-loop.png").write_bytes(png)
        assert len(png) > 10_000
        browser.evaluate("1")  # drain late events
        assert browser.errors() == [], browser.errors()
    finally:
        browser.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
