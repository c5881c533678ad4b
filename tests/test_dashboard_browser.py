"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

The store is filled by `edgeml simulate` through a real `edgeml monitor` (Mosquitto in
between), with drift injected on a known tenth of the devices, plus one hostile device
whose id is a ``<script>`` tag and whose categorical value is an ``<img onerror>``. The
tests assert what a person sees: the device count, the drifting devices highlighted,
charts that drew (pixels of the series' colour on their canvas), the histogram over its
reference, filters that work, live updates without a reload, no console error, no CSP
violation, and the hostile strings shown as text. Screenshots go to build/.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_support import XSS, XSS_VALUE, add_hostile_device, new_store, simulated_fleet
from fleet_support import make_fleet_bundle

from edgeml.fleet.dashboard import DashboardServer, create_app
from edgeml.fleet.ingest import Parsed, classify
from edgeml.fleet.writer import Item, Writer

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium: "
                                "apt-get install chromium (.ci/run does)")
BUILD = Path(__file__).resolve().parent.parent / "build"
BLUE = (31, 119, 180)  # the first series' colour (static/common.js COLORS[0])
GREY = (127, 127, 127)  # the reference bars of the histogram
SERIES = [BLUE, (214, 39, 40), (44, 160, 44)]  # COLORS[0:3]: p50, p95, p99 may overlap
DEVICES = 30

# a canvas's pixels close to a colour (alpha > 60): proof that a series was drawn
PIXELS = """([selector, ...colours]) => {
  const c = document.querySelector(selector + " canvas");
  if (!c) { return -1; }
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 60 && colours.some((rgb) => Math.abs(d[i] - rgb[0]) < 30
        && Math.abs(d[i + 1] - rgb[1]) < 30 && Math.abs(d[i + 2] - rgb[2]) < 30)) { n++; }
  }
  return n;
}"""
CSP_PROBE = """window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    bundle, _ = make_fleet_bundle(tmp / "bundle")
    url, store = new_store(tmp / "fleet.db")
    report = simulated_fleet(store, bundle, devices=DEVICES, duration=360.0, interval=30.0)
    clean = next(f"sim-{i:05d}" for i in range(DEVICES) if f"sim-{i:05d}" not in report.drifted)
    add_hostile_device(store, clean)
    server = DashboardServer(create_app(url), port=0).start()
    try:
        yield {"url": server.url.rstrip("/"), "store": store, "report": report, "clean": clean,
               "drifted": sorted(report.drifted)}
    finally:
        server.stop()
        store.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that records console errors, uncaught exceptions and CSP violations; none allowed."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.add_init_script(CSP_PROBE)
    pg.errors = errors
    yield pg
    csp = pg.evaluate("window.__csp || []") if not pg.is_closed() else []
    context.close()
    assert errors == [], errors
    assert csp == [], csp


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _shot(page: Any, name: str) -> None:
    BUILD.mkdir(exist_ok=True)
    page.screenshot(path=str(BUILD / f"dashboard-{name}.png"), full_page=True)


def _rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#device-rows tr td:first-child a", "els => els.map(e => e.textContent)")


def test_fleet_page_shows_every_device_and_highlights_the_drifting(fleet: dict[str, Any],
                                                                   page: Any) -> None:
    _open(page, fleet["url"] + "/")
    _shot(page, "fleet")
    assert page.text_content("#count-devices") == str(DEVICES + 1)
    assert len(_rows(page)) == DEVICES + 1
    highlighted = page.eval_on_selector_all(
        "#device-rows tr.drifting td:first-child a", "els => els.map(e => e.textContent)")
    assert sorted(highlighted) == fleet["drifted"] and len(highlighted) == 3
    assert page.text_content("#count-drifting") == "3"
    # the highlight is visible: a drifting row's cells are painted differently from a clean one's
    colours = page.evaluate("""() => [...document.querySelectorAll('#device-rows tr')].map(
        tr => [tr.classList.contains('drifting'), getComputedStyle(tr.cells[1]).backgroundColor])""")
    assert {c for d, c in colours if d}.isdisjoint({c for d, c in colours if not d})
    # the alerting count is the devices with open alerts (the drifted ones, here)
    assert int(page.text_content("#count-alerting")) >= 3
    assert page.text_content("#count-lost") == "0"


def test_filters_and_sorting(fleet: dict[str, Any], page: Any) -> None:
    _open(page, fleet["url"] + "/")
    target = fleet["drifted"][0]
    page.fill("#f-text", target)
    assert _rows(page) == [target]
    assert page.text_content("#shown") == "1"
    page.fill("#f-text", "")
    page.check("#f-drifting")
    assert sorted(_rows(page)) == fleet["drifted"]
    page.uncheck("#f-drifting")
    page.select_option("#f-state", "ready")  # the simulated devices ended disconnected
    assert _rows(page) == [XSS]
    page.select_option("#f-state", "disconnected")
    assert len(_rows(page)) == DEVICES
    page.select_option("#f-state", "")
    page.select_option("#f-model", "toy-fleet@1")
    assert len(_rows(page)) == DEVICES + 1
    page.click("th[data-key='drift_score']")
    page.click("th[data-key='drift_score']")  # descending: the worst drift first
    assert set(_rows(page)[:3]) == set(fleet["drifted"])
    page.click("th[data-key='device']")
    names = [n for n in _rows(page) if n != XSS]
    assert len(names) == DEVICES and names == sorted(names)
    page.click("th[data-key='device']")
    assert [n for n in _rows(page) if n != XSS] == sorted(names, reverse=True)


def _device_url(fleet: dict[str, Any], device: str) -> str:
    from urllib.parse import urlencode

    return fleet["url"] + "/device?" + urlencode({"fleet": "default", "device": device})


def test_device_page_draws_its_charts_and_the_histogram_over_its_reference(
        fleet: dict[str, Any], page: Any) -> None:
    drifted = fleet["drifted"][0]
    _open(page, _device_url(fleet, drifted))
    page.select_option("#hist-feature", "temp")
    page.wait_for_function("() => document.querySelector('#chart-hist').dataset.feature === 'temp'")
    _shot(page, "device")
    for chart, colours in (("#chart-requests", [BLUE]), ("#chart-latency", SERIES),
                           ("#chart-rows", [BLUE]), ("#chart-drift", [BLUE])):
        assert page.get_attribute(chart, "data-points") == "12", chart
        assert page.evaluate(PIXELS, [chart, *colours]) > 50, f"{chart} drew nothing"
    # the simulator reports no RSS, CPU or temperature: the page says so instead of a blank
    assert "not reported" in page.text_content("#chart-temp").lower() + \
        page.eval_on_selector("#chart-temp", "e => e.parentElement.textContent").lower()
    hist = "#chart-hist"
    assert page.get_attribute(hist, "data-bins") == "10"
    assert page.evaluate(PIXELS, [hist, list(GREY)]) > 200  # the reference bars
    assert page.evaluate(PIXELS, [hist, list(BLUE)]) > 200  # the live bars
    assert float(page.get_attribute(hist, "data-score") or 0) > 0.25  # drifted: PSI above alert
    assert page.text_content("#hist-caption").startswith("PSI ")
    # a clean device's temp histogram sits on its reference
    _open(page, _device_url(fleet, fleet["clean"]))
    page.select_option("#hist-feature", "temp")
    page.wait_for_function("() => document.querySelector('#chart-hist').dataset.feature === 'temp'")
    assert float(page.get_attribute(hist, "data-score") or 1) < 0.1
    # a categorical feature: its categories and the unseen bin
    page.select_option("#hist-feature", "color")
    page.wait_for_function("() => document.querySelector('#chart-hist').dataset.feature === 'color'")
    assert page.get_attribute(hist, "data-bins") == "4"
    assert page.text_content("#hist-caption").startswith("JS ")


def test_model_page_heat_map_and_accuracy(fleet: dict[str, Any], page: Any) -> None:
    _open(page, fleet["url"] + "/model?name=toy-fleet")
    _shot(page, "model")
    rows = page.eval_on_selector_all("#heatmap tbody tr", "els => els.length")
    assert rows == DEVICES + 1
    temp_col = page.eval_on_selector_all("#heatmap thead th", "els => els.map(e => e.textContent)").index("temp")
    hot = page.evaluate("""(col) => [...document.querySelectorAll('#heatmap tbody tr')]
        .filter(tr => /h[45]/.test(tr.cells[col].className)).map(tr => tr.cells[0].textContent)""",
                        temp_col)
    assert sorted(h.split("/", 1)[1] for h in hot) == fleet["drifted"]
    assert page.evaluate(PIXELS, ["#chart-accuracy", list(BLUE)]) > 50


def test_alerts_page_links_to_the_device(fleet: dict[str, Any], page: Any) -> None:
    _open_plain = page.goto(fleet["url"] + "/alerts")
    assert _open_plain is not None and _open_plain.status == 200
    linked = page.eval_on_selector_all("#alerts-open td a", "els => els.map(e => e.textContent)")
    assert {f"default/{d}" for d in fleet["drifted"]} <= set(linked)
    # each row links to the window that raised it: that device's window
    row = page.locator("#alerts-open tr", has=page.locator(
        f"a:text-is('default/{fleet['drifted'][0]}')")).first
    row.locator("a[href^='/window']").click()
    page.wait_for_selector("h1:has-text('Metrics window')")
    assert page.locator(f"a:text-is('default/{fleet['drifted'][0]}')").count() == 1
    page.go_back()
    page.click(f"#alerts-open a:text-is('default/{fleet['drifted'][0]}')")
    page.wait_for_selector("body[data-ready='1']")
    assert page.text_content("#device-id") == fleet["drifted"][0]


def test_hostile_device_id_and_value_are_shown_as_text(fleet: dict[str, Any], page: Any) -> None:
    _open(page, fleet["url"] + "/")
    assert XSS in _rows(page)
    assert page.evaluate("window.__xss") is None
    _open(page, _device_url(fleet, XSS))
    assert page.text_content("#device-id") == XSS
    values = page.eval_on_selector_all("#samples .kv .v", "els => els.map(e => e.textContent)")
    assert XSS_VALUE in values
    assert page.eval_on_selector_all("#samples img", "els => els.length") == 0
    assert page.evaluate("window.__xss") is None
    _shot(page, "xss")


def test_the_fleet_page_updates_without_a_reload(fleet: dict[str, Any], page: Any) -> None:
    _open(page, fleet["url"] + "/")
    page.evaluate("window.__same_document = true")
    topic, body = "edgeml/default/late-device/$state", b"ready"
    parsed = classify("edgeml", topic, body, "1")
    assert isinstance(parsed, Parsed)
    Writer(fleet["store"]).write([Item(topic, body, parsed)])
    page.wait_for_function(
        f"() => document.querySelector('#count-devices').textContent === '{DEVICES + 2}'",
        timeout=15_000)
    assert page.evaluate("window.__same_document") is True
    assert "late-device" in _rows(page)
    time.sleep(0.1)


def test_a_token_in_the_url_once_lets_the_browser_in(fleet: dict[str, Any], page: Any) -> None:
    token = "browser-token-0123456789"
    server = DashboardServer(create_app(fleet["store"].url, token=token), port=0).start()
    try:
        url = server.url.rstrip("/")
        denied = page.goto(url + "/")
        assert denied is not None and denied.status == 401
        page.wait_for_load_state("networkidle")  # the refused favicon too, before going on
        page.goto(url + "/?token=" + token)
        page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        assert page.url == url + "/"  # the token is not left in the address bar
        shown = int(page.text_content("#count-devices") or 0)
        assert shown >= DEVICES + 1 and len(_rows(page)) == shown  # the API answered the script
        # the only console errors: the browser's own lines for the refused first load (and
        # the favicon it asked for then); none after the token
        assert page.errors and all("status of 401" in e for e in page.errors)
        page.errors.clear()
    finally:
        server.stop()
