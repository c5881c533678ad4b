"""The dashboard's rollouts pages (/rollouts, /rollouts/{id}) and the device page's deploys.

The deploy tables are filled straight with SQLAlchemy (tests/dashboard_support.add_rollouts),
as the controller fills them, on a real SQLite file and again on a real PostgreSQL database;
the app reads them through its read-only store, in-process (httpx.ASGITransport) and in a
real headless Chromium (Playwright) for what a person sees.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fleet_support import pg_database
from dashboard_support import XSS, add_rollouts, new_store

from edgeml.fleet.dashboard import DashboardServer, create_app
from edgeml.fleet.db import Store, open_store
from edgeml.fleet.ingest import Parsed, classify
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.schema import RetrainRun
from edgeml.fleet.writer import Item, Writer

ESCAPED = "&lt;script&gt;window.__xss=1&lt;/script&gt;"


def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, **kwargs)
    return asyncio.run(go())


def _fill(store: Store) -> dict[str, Any]:
    made = add_rollouts(store)
    items = []
    for name in made["devices"][:4]:  # the device page needs the device itself
        topic = f"edgeml/plant/{name}/$state"
        parsed = classify("edgeml", topic, b"ready", "1")
        assert isinstance(parsed, Parsed)
        items.append(Item(topic, b"ready", parsed))
    Writer(store).write(items)
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:  # two retrainings, as edgeml retrain records them
        conn.execute(RetrainRun.__table__.insert(), [
            {"model_name": "toy-fleet", "state": "promoted", "trigger": "decay", "version": 2,
             "deployment_id": "r-done", "reason": None, "host": "h",
             "started_at": now - timedelta(hours=3), "finished_at": now - timedelta(hours=2)},
            {"model_name": "toy-fleet", "state": "rejected", "trigger": "manual", "version": 3,
             "deployment_id": None, "reason": XSS, "host": "h",
             "started_at": now - timedelta(minutes=5),
             "finished_at": now - timedelta(minutes=4)}])
    return made


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    url, store = new_store(tmp_path_factory.mktemp("dashboard-rollouts") / "fleet.db")
    made = _fill(store)
    store.dispose()
    yield url, made


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, sqlite_url: tuple[str, dict[str, Any]]) -> Iterator[Any]:
    if request.param == "sqlite":
        yield create_app(sqlite_url[0])
        return
    with pg_database() as url:
        upgrade(url)
        writable = open_store(url)
        _fill(writable)
        writable.dispose()
        app = create_app(url)  # opened read-only, like the dashboard's CLI
        try:
            yield app
        finally:
            app.app.state.store.dispose()


def test_the_list_shows_the_retrainings_newest_first_escaped(app: Any) -> None:
    data = get(app, "/api/rollouts").json()
    assert [(r["state"], r["trigger"], r["version"]) for r in data["retrains"]] == [
        ("rejected", "manual", 3), ("promoted", "decay", 2)]
    assert data["retrains"][0]["reason"] == XSS and data["retrains"][1]["deployment_id"] == "r-done"
    page = get(app, "/rollouts").text
    rows = re.findall(r'<tr class="retrain rr-(\w+)" data-id="(\d+)"', page)
    assert [state for state, _ in rows] == ["rejected", "promoted"]
    promoted = page.split(f'data-id="{rows[1][1]}"')[1].split("</tr>")[0]
    assert 'href="/rollouts/r-done"' in promoted
    assert XSS not in page and "&lt;script&gt;" in page


def test_the_list_shows_running_first_then_newest(app: Any) -> None:
    data = get(app, "/api/rollouts").json()
    assert [r["id"] for r in data["rollouts"]] == ["r-running", "r-new", "r-halted", "r-done"]
    assert data["counts"] == {"running": 1, "halted": 1, "completed": 1, "rolled_back": 0,
                              "cancelled": 1}
    run = data["rollouts"][0]
    assert run["model"] == "toy-fleet@2" and run["fleet"] == "plant" and run["state"] == "running"
    assert (run["stage_number"], run["stage_count"]) == (2, 3)
    assert [s["fraction"] for s in run["stages"]] == [0.1, 0.5, 1.0]
    assert [(s["devices"], s["committed"]) for s in run["stages"]] == [(1, 1), (4, 1), (5, 0)]
    assert {k: v for k, v in run["devices"].items() if v} == {
        "committed": 2, "switched": 1, "downloading": 1, "sent": 1, "pending": 5}
    assert list(run["devices"]) == data["states"]  # every state, in the lifecycle's order
    assert run["device_count"] == 10
    assert run["gates"] == {"max_error_rate": 0.05, "max_p95_ratio": 3.0, "max_psi": 0.2}
    halted = data["rollouts"][2]
    assert halted["reason"] == XSS and halted["devices"]["rolled_back"] == 1
    assert run["created_at"] < run["updated_at"]

    page = get(app, "/rollouts")
    assert page.status_code == 200
    assert page.headers["link"] == '</api/rollouts>; rel="alternate"; type="application/json"'
    ids = re.findall(r'<tr class="rollout rs-(\w+)" data-id="([^"]+)"', page.text)
    assert ids == [("running", "r-running"), ("cancelled", "r-new"), ("halted", "r-halted"),
                   ("completed", "r-done")]
    row = page.text.split('data-id="r-running"')[1].split("</tr>")[0]
    assert "2 of 3" in row and "2/10 committed" in row and "toy-fleet@2" in row
    assert 'href="/rollouts/r-running"' in row
    # the bar: one segment per state with devices, widths in proportion (of 1000)
    segments = dict(re.findall(r'<rect class="st-(\w+)" x="[\d.]+" y="0" width="([\d.]+)"', row))
    assert {k: float(v) for k, v in segments.items()} == {
        "pending": 500.0, "sent": 100.0, "downloading": 100.0, "switched": 100.0,
        "committed": 200.0}


def test_the_detail_shows_each_device_and_the_newest_events(app: Any) -> None:
    data = get(app, "/api/rollouts/r-running").json()
    assert data["id"] == "r-running" and data["bundle"]["size"] == 12345
    rows = {r["device"]: r for r in data["device_rows"]}
    assert len(rows) == 10 and [r["stage_number"] for r in data["device_rows"]] == sorted(
        r["stage_number"] for r in data["device_rows"])
    d3 = rows["dev-0003"]
    assert (d3["state"], d3["have"], d3["count"]) == ("downloading", 3, 8)
    assert (d3["from_version"], d3["serving_version"]) == (1, 1)
    assert d3["last_report"] is not None and rows["dev-0005"]["last_report"] is None
    assert rows["dev-0002"]["last_report"] > d3["last_report"]  # dev-0002 spoke 30 s ago
    events = data["events"]
    assert len(events) == 200  # of 232: the newest
    assert [e["received_at"] for e in events] == sorted((e["received_at"] for e in events),
                                                        reverse=True)
    assert events[0]["device"] == "dev-0002" and events[0]["event"] == "switched"
    assert events[0]["serving_version"] == 2
    assert all(e["deployment_id"] == "r-running" for e in events)

    page = get(app, "/rollouts/r-running")
    assert page.status_code == 200
    assert page.headers["link"] == '</api/rollouts/r-running>; rel="alternate"; type="application/json"'
    assert 'aria-current="page">Rollouts<' in page.text.replace("\n", "").replace("    ", "")
    assert page.text.count('<tr class="ev-') == 200
    d3_events = sum(e["device"] == "dev-0003" for e in events)
    assert d3_events > 150  # one device row and its events link to the device page
    assert page.text.count('href="/device?fleet=plant&amp;device=dev-0003"') == 1 + d3_events
    assert '<progress max="8" value="3"></progress> 3/8' in page.text


def test_unknown_ids_get_one_error_shape(app: Any) -> None:
    r = get(app, "/api/rollouts/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"status": 404,
                                  "message": "no deployment 'nope' in the fleet store"}}
    page = get(app, "/rollouts/%3Cb%3Enope")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert "no deployment &#39;&lt;b&gt;nope&#39;" in page.text


def test_reasons_and_device_ids_devices_sent_are_escaped(app: Any) -> None:
    for path in ("/rollouts", "/rollouts/r-halted"):
        html = get(app, path).text
        assert XSS not in html, path
        assert ESCAPED in html, path
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert re.findall(r"<[^>]*\s(style|on\w+)\s*=", html) == [], path
    detail = get(app, "/api/rollouts/r-halted").json()
    assert detail["reason"] == XSS and detail["device_rows"][0]["device"] == XSS
    assert detail["device_rows"][0]["reason"] == XSS and detail["events"][0]["reason"] == XSS
    html = get(app, "/rollouts/r-halted").text
    # the device id, its link and its reason: text, three times escaped (row, link, event)
    assert html.count(ESCAPED) >= 5
    assert "device=%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E" in html


def test_the_device_page_shows_its_deploy_history(app: Any) -> None:
    q = {"fleet": "plant", "device": "dev-0000"}
    deploys = get(app, "/api/device", params=q).json()["deploys"]
    assert [(d["deployment_id"], d["event"], d["model"]) for d in deploys] == [
        ("r-running", "committed", "toy-fleet@2"), ("r-done", "committed", "toy-fleet@2")]
    html = get(app, "/device", params=q).text
    table = html.split('id="deploys"')[1].split("</table>")[0]
    assert 'href="/rollouts/r-running"' in table and 'href="/rollouts/r-done"' in table
    quiet = get(app, "/device", params={"fleet": "plant", "device": "dev-0001"}).text
    assert "No deploy report from this device." in quiet


# -- in a real browser ------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
CSP_PROBE = """window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium: "
                    "apt-get install chromium (.ci/run does)")
def test_the_rollouts_page_in_a_browser(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright
    from sqlalchemy import update

    from edgeml.fleet.schema import DeploymentDevice

    url, store = new_store(tmp_path / "fleet.db")  # its own: this test writes to it
    _fill(store)
    server = DashboardServer(create_app(url), port=0).start()
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(CSP_PROBE)
            page.goto(server.url + "rollouts")
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            # the script rebuilt the rows from /api/rollouts: the same order, the same bars
            ids = page.eval_on_selector_all("#rollout-rows tr", "els => els.map(e => e.dataset.id)")
            assert ids == ["r-running", "r-new", "r-halted", "r-done"]
            row = page.locator("#rollout-rows tr[data-id='r-running']")
            assert row.locator(".stage-of").text_content() == "2 of 3"
            assert row.locator(".done").text_content() == "2/10 committed"
            assert row.locator(".stg.current").text_content() == "50.0%"
            # the progress bar is drawn: committed is a fifth of the bar's width, in its colour
            box = row.locator("svg.bar").bounding_box()
            seg = row.locator("svg.bar rect.st-committed").bounding_box()
            assert box and seg and seg["width"] == pytest.approx(box["width"] * 0.2, rel=0.05)
            fill = row.locator("svg.bar rect.st-committed").evaluate("e => getComputedStyle(e).fill")
            assert fill == "rgb(26, 156, 84)"
            # the halted rollout's reason, a <script> tag, is text
            reason = page.locator("#rollout-rows tr[data-id='r-halted'] td.reason").text_content()
            assert reason == XSS and page.evaluate("window.__xss") is None
            page.screenshot(path=str(_build() / "dashboard-rollouts.png"), full_page=True)
            # to the detail page, then to a device
            row.locator("a[href='/rollouts/r-running']").click()
            page.wait_for_url("**/rollouts/r-running")
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            assert page.text_content("#rollout-state") == "running"
            assert page.locator("#device-rows tr").count() == 10
            dl = page.locator("#device-rows tr[data-device='dev-0003']")
            assert dl.locator("progress").evaluate("e => [e.value, e.max]") == [3, 8]
            assert page.locator("#event-rows tr").count() == 200
            page.screenshot(path=str(_build() / "dashboard-rollout.png"), full_page=True)
            # live: the controller moves dev-0004 on; the page shows it without a reload
            page.evaluate("window.__same_document = true")
            dd = DeploymentDevice.__table__
            with store.session() as s:
                s.execute(update(dd).where(dd.c.deployment_id == "r-running",
                                           dd.c.device == "dev-0004")
                          .values(state="downloading", have=5, count=8))
            page.wait_for_function(
                """() => { const p = document.querySelector(
                     "#device-rows tr[data-device='dev-0004'] progress");
                   return p !== null && p.value === 5; }""", timeout=15_000)
            assert page.evaluate("window.__same_document") is True
            assert "downloading 2" in page.text_content("#rollout-progress")
            dl.locator("a").click()
            page.wait_for_selector("#device-id", timeout=15_000)
            assert page.text_content("#device-id") == "dev-0003"
            page.go_back()
            # the halted one: the hostile device id and reason stay text after the script ran
            page.goto(server.url + "rollouts/r-halted")
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            assert page.locator("#device-rows tr td:first-child a").first.text_content() == XSS
            assert page.text_content("#rollout-reason") == XSS
            assert page.evaluate("window.__xss") is None
            assert page.evaluate("window.__csp") == []
            browser.close()
    finally:
        server.stop()
        store.dispose()
    assert errors == [], errors


def _build() -> Path:
    out = Path(__file__).resolve().parent.parent / "build"
    out.mkdir(exist_ok=True)
    return out
