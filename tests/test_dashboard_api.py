"""The dashboard's JSON API and pages in-process (httpx.ASGITransport), and `edgeml dashboard`.

The store is a real SQLite file (and a real PostgreSQL database for read-only access)
filled through the monitor's ingest + writer with payloads the runtime builds.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fleet_support import pg_database
from dashboard_support import XSS, XSS_VALUE, add_hostile_device, direct_fleet, new_store
from fleet_support import make_fleet_bundle
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.routing import Mount, Route

from edgeml.fleet.dashboard import create_app
from edgeml.fleet.dashboard.openapi import openapi
from edgeml.fleet.dashboard.security import CSP
from edgeml.fleet.dashboard.store import open_readonly

DEVICES, DRIFTED, LOST = 24, 3, 2
TOKEN = "s3cret-token-for-the-tests"


def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, **kwargs)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dashboard-api")
    bundle, _ = make_fleet_bundle(tmp / "bundle")
    url, store = new_store(tmp / "fleet.db")
    made = direct_fleet(store, bundle, devices=DEVICES, windows=6, drifted=DRIFTED, lost=LOST)
    add_hostile_device(store, made["devices"][-1])
    store.dispose()
    yield {"url": url, "bundle": bundle, **made}


@pytest.fixture(scope="module")
def app(fleet: dict[str, Any]) -> Any:
    return create_app(fleet["url"])


def test_every_api_route_is_described_in_the_openapi_document(app: Any) -> None:
    routes = {r.path for r in app.app.routes if isinstance(r, Route) and r.path.startswith("/api")}
    served = get(app, "/api/openapi.json").json()
    assert served == openapi(served["info"]["version"])
    assert routes == set(served["paths"])
    for path, item in served["paths"].items():
        assert item["get"]["summary"] and item["get"]["responses"]["default"], path
    assert not [r for r in app.app.routes if isinstance(r, Mount) and r.path.startswith("/api")]


def test_the_fleet_page_and_its_json_twin_show_the_same_fleet(app: Any, fleet: dict[str, Any]) -> None:
    data = get(app, "/api/fleet").json()
    assert data["counts"] == {"devices": DEVICES + 1, "up": DEVICES + 1 - LOST, "lost": LOST,
                              "drifting": DRIFTED, "alerting": DRIFTED + LOST}
    assert sorted(r["device"] for r in data["devices"] if r["drifting"]) == fleet["drifted"]
    assert sorted(r["device"] for r in data["devices"] if r["state"] == "lost") == fleet["lost"]
    assert all(r["drift_feature"] == "temp" for r in data["devices"] if r["drifting"])
    page = get(app, "/")
    assert page.status_code == 200
    assert page.headers["link"] == '</api/fleet>; rel="alternate"; type="application/json"'
    shown = dict(re.findall(r'id="count-(\w+)">(\d+)<', page.text))
    assert shown == {k: str(v) for k, v in data["counts"].items()}
    assert page.text.count("<tr class=\"state-") == DEVICES + 1
    assert len(re.findall(r'<tr class="[^"]*\bdrifting\b', page.text)) == DRIFTED


def test_the_device_model_and_alert_data(app: Any, fleet: dict[str, Any]) -> None:
    dev = fleet["drifted"][0]
    q = {"fleet": "plant", "device": dev}
    detail = get(app, "/api/device", params=q).json()
    assert detail["device"] == dev and detail["model"] == "toy-fleet@1"
    assert {f["name"] for f in detail["features"]} == {"temp", "pressure", "color", "prediction"}
    series = get(app, "/api/device/series", params=q).json()
    assert len(series["t"]) == 6 and series["t"] == sorted(series["t"])
    assert all(v > 0.25 for v in series["drift"]["temp"])  # shifted in every window
    hist = get(app, "/api/device/histogram", params={**q, "feature": "temp"}).json()
    assert len(hist["labels"]) == len(hist["live"]) == len(hist["reference"]) == 10
    assert sum(hist["live"]) == pytest.approx(1.0) and sum(hist["reference"]) == pytest.approx(1.0)
    assert hist["score"] > 0.25 and hist["rows"] == 6 * 60
    clean = get(app, "/api/device/histogram",
                params={"fleet": "plant", "device": fleet["devices"][-2], "feature": "temp"}).json()
    assert clean["score"] < hist["score"] / 5
    model = get(app, "/api/model", params={"name": "toy-fleet"}).json()
    assert [v["model"] for v in model["versions"]] == ["toy-fleet@1"]
    assert len(model["versions"][0]["devices"]) == DEVICES + 1
    heat = model["heatmap"]
    col = [f["name"] for f in heat["features"]].index("temp")
    hot = sorted(d["device"] for d, row in zip(heat["devices"], heat["values"], strict=True)
                 if row[col] is not None and row[col] >= heat["alert_at"][col])
    assert hot == fleet["drifted"]
    assert model["accuracy"]["metric"] == "accuracy" and model["accuracy"]["t"]
    assert model["accuracy"]["holdout"] == model["holdout"]["accuracy"]
    alerts = get(app, "/api/alerts").json()
    assert alerts["resolved"] == []
    by_device = {a["device"]: a for a in alerts["open"] if a["device"]}
    assert set(by_device) == set(fleet["drifted"]) | set(fleet["lost"])
    assert {by_device[d]["kind"] for d in fleet["lost"]} == {"device_lost"}
    drift = [a for a in alerts["open"] if a["kind"] == "drift" and a["device"] == dev]
    assert drift and drift[0]["feature"] in ("temp", "prediction")
    # each device alert links to the window that raised it: that device's, not after it
    win = get(app, "/api/window", params={"id": drift[0]["window_id"]}).json()
    assert win["device"] == dev and win["window_end"] <= drift[0]["opened_at"]
    window = get(app, "/api/window", params={"id": 1}).json()
    assert window["id"] == 1 and window["payload"]["schema"].startswith("edgeml.metrics/")


@pytest.mark.parametrize(("path", "params", "status", "message"), [
    ("/api/device", {"fleet": "plant", "device": "nope"}, 404, "no device 'plant/nope'"),
    ("/api/device", {"fleet": "plant"}, 400, "missing query parameter 'device'"),
    ("/api/device/series", {"fleet": "plant", "device": "nope"}, 404, "no device"),
    ("/api/device/histogram", {"fleet": "plant", "device": "dev-0000", "feature": "x"}, 404,
     "no binned feature 'x'"),
    ("/api/model", {"name": "nope"}, 404, "no model 'nope'"),
    ("/api/model", {"name": "toy-fleet", "version": "x"}, 400, "must be an integer"),
    ("/api/window", {"id": "999999"}, 404, "no metrics window 999999"),
    ("/api/nothing-here", {}, 404, "Not Found"),
])
def test_every_api_error_has_one_shape(app: Any, path: str, params: dict[str, str], status: int,
                                       message: str) -> None:
    r = get(app, path, params=params)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message"}
    assert body["error"]["status"] == status and message in body["error"]["message"]


def test_pages_show_errors_in_html(app: Any) -> None:
    r = get(app, "/device", params={"fleet": "plant", "device": "<b>nope</b>"})
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "no device &#39;plant/&lt;b&gt;nope&lt;/b&gt;&#39;" in r.text


@pytest.mark.parametrize("path", ["/", "/api/fleet", "/alerts", "/models", "/rollouts",
                                  "/static/dashboard.css", "/api/nothing", "/nothing"])
def test_every_response_carries_the_security_headers(app: Any, path: str) -> None:
    r = get(app, path)
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_pages_have_no_inline_script_or_style(app: Any, fleet: dict[str, Any]) -> None:
    pages = ["/", "/alerts", "/models", "/rollouts", "/model?name=toy-fleet", "/window?id=1",
             f"/device?fleet=plant&device={fleet['drifted'][0]}"]
    for path in pages:
        html = get(app, path).text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert "<style" not in html and re.findall(r"<[^>]*\sstyle\s*=", html) == [], path
        assert re.findall(r"<[^>]*\son\w+\s*=", html) == [], path  # no inline handler
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not re.match(r"^(https?:)?//", src), (path, src)  # no external origin


def test_values_devices_sent_are_escaped(app: Any) -> None:
    fleet_html = get(app, "/").text
    assert XSS not in fleet_html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in fleet_html
    page = get(app, "/device", params={"fleet": "plant", "device": XSS})
    assert page.status_code == 200
    assert XSS not in page.text and XSS_VALUE not in page.text
    assert "&lt;img src=x onerror=&#34;window.__xss=2&#34;&gt;" in page.text
    # the JSON API returns them as data (a script puts them in with textContent)
    sample = get(app, "/api/device", params={"fleet": "plant", "device": XSS}).json()["samples"]
    assert XSS_VALUE in [v for s in sample for v in s["features"].values()]


def test_a_token_guards_every_request(fleet: dict[str, Any]) -> None:
    app = create_app(fleet["url"], token=TOKEN)
    for path in ("/", "/api/fleet", "/static/common.js", "/api/openapi.json"):
        r = get(app, path)
        assert r.status_code == 401, path
        assert r.json()["error"]["status"] == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-security-policy"] == CSP
    assert get(app, "/api/fleet", headers={"authorization": "Bearer wrong-token-wrong-token"}
               ).status_code == 401
    assert get(app, "/api/fleet", params={"token": "wrong"}).status_code == 401
    ok = get(app, "/api/fleet", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["counts"]["devices"] == DEVICES + 1
    # ?token= once: a cookie (an HMAC of the token, not the token) and the URL without it
    first = get(app, "/", params={"token": TOKEN, "x": "1"})
    assert first.status_code == 303 and first.headers["location"] == "/?x=1"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    assert get(app, "/api/fleet", headers={"cookie": value}).status_code == 200
    assert get(app, "/api/fleet", headers={"cookie": value[:-2] + "00"}).status_code == 401


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeml", "dashboard", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_non_loopback_bind_without_a_token_refuses_to_start(fleet: dict[str, Any],
                                                              tmp_path: Path) -> None:
    r = _cli("--db", fleet["url"], "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "without a token" in r.stderr
    short = _cli("--db", fleet["url"], "--host", "0.0.0.0", "--token", "short")
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    missing = _cli("--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_sqlite_is_opened_read_only(fleet: dict[str, Any]) -> None:
    store = open_readonly(fleet["url"])
    try:
        with pytest.raises(DBAPIError, match="readonly"), store.session() as s:
            s.execute(text("DELETE FROM devices"))
    finally:
        store.dispose()
    assert get(create_app(fleet["url"]), "/api/fleet").json()["counts"]["devices"] == DEVICES + 1


def test_postgresql_sessions_are_read_only(fleet: dict[str, Any]) -> None:
    from edgeml.fleet.db import open_store
    from edgeml.fleet.migrate import upgrade

    with pg_database() as url:
        upgrade(url)
        writable = open_store(url)
        made = direct_fleet(writable, fleet["bundle"], devices=4, windows=4, drifted=1, lost=0)
        writable.dispose()
        store = open_readonly(url)
        try:
            with pytest.raises(DBAPIError, match="read-only transaction"), store.session() as s:
                s.execute(text("DELETE FROM devices"))
            app = create_app(store)
            data = get(app, "/api/fleet").json()
            assert sorted(r["device"] for r in data["devices"]) == made["devices"]
            assert [r["device"] for r in data["devices"] if r["drifting"]] == made["drifted"]
            # every page reads PostgreSQL as it reads SQLite
            q = {"fleet": "plant", "device": made["drifted"][0]}
            for path, params in (("/api/device", q), ("/api/device/series", q),
                                 ("/api/device/histogram", {**q, "feature": "color"}),
                                 ("/api/model", {"name": "toy-fleet"}), ("/api/alerts", {}),
                                 ("/", {}), ("/device", q), ("/model", {"name": "toy-fleet"})):
                assert get(app, path, params=params).status_code == 200, path
            assert len(get(app, "/api/device/series", params=q).json()["drift"]["temp"]) == 4
        finally:
            store.dispose()


def test_start_dashboard_checks_the_bind_and_serves_in_a_thread(fleet: dict[str, Any]) -> None:
    from edgeml.errors import UsageError
    from edgeml.fleet.dashboard import start_dashboard

    with pytest.raises(UsageError, match="without a token"):
        start_dashboard(fleet["url"], host="0.0.0.0", port=0)
    server = start_dashboard(fleet["url"], host="127.0.0.1", port=0, token=TOKEN)
    try:
        assert httpx.get(server.url + "api/fleet").status_code == 401
        r = httpx.get(server.url + "api/fleet", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["counts"]["devices"] == DEVICES + 1
    finally:
        server.stop()
