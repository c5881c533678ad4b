"""The OpenAPI 3.1 document of the dashboard's JSON API, written as data.

Served at ``/api/openapi.json``; ``tests/test_dashboard_api.py`` checks that every ``/api``
route of the app is described here and that every path described here exists.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]


def _q(name: str, description: str, *, required: bool = False, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": kind}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


FLEET = _q("fleet", "The device's fleet (a topic level).", required=True)
DEVICE = _q("device", "The device id.", required=True)


def _get(summary: str, description: str, params: list[dict[str, Any]] | None = None,
         schema: str = "Object") -> dict[str, Any]:
    return {"get": {
        "summary": summary, "description": description, "parameters": params or [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema}"}}}},
            "default": {"description": "An error (400 bad parameter, 401 no token, 404 not "
                                       "found, 503 database unavailable).",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}}}}}


PATHS: dict[str, Any] = {
    "/api/fleet": _get(
        "Every device and the fleet's counts",
        "One row per device (state, model@version, last seen, requests/s, p95, error rate, "
        "worst drift feature and score, labelled and estimated accuracy, drifting, "
        "alerting), the counts (devices, up, lost, drifting, alerting) and the values of "
        "the filters (fleets, states, models). The fleet page's data.", schema="Fleet"),
    "/api/device": _get(
        "One device", "Its row of /api/fleet, sessions (with lost windows), last windows, "
        "open alerts, features, model history, reconnects, spool drops, last samples and "
        "deploys (its last 20 deploy reports, each with its rollout and model).",
        [FLEET, DEVICE]),
    "/api/device/series": _get(
        "One device's time series",
        "Columns over its last windows: t (epoch s), window_id, requests, requests_per_s, "
        "errors, rows, p50_ms, p95_ms, p99_ms, rss_mb, cpu_percent, temperature_c, "
        "spool_queued, spool_dropped_total, and drift[feature] (PSI; JS distance for "
        "categorical inputs) of each window against the reference.",
        [FLEET, DEVICE, _q("limit", "Windows at most (default 360).", kind="integer")]),
    "/api/device/histogram": _get(
        "A feature's live histogram over its reference",
        "Proportions per bin over the thresholds' window ending at the device's last "
        "window, beside the reference's, with the bins' labels and the drift score.",
        [FLEET, DEVICE, _q("feature", "An input name, or `prediction`.", required=True)]),
    "/api/models": _get("Every model version seen", "Name, version, task, devices running it."),
    "/api/model": _get(
        "One model", "Where each version runs; for one version the drift heat map "
        "(devices x features) and the labelled accuracy over time with the holdout's.",
        [_q("name", "Model name.", required=True),
         _q("version", "Version (default: the latest).", kind="integer")]),
    "/api/alerts": _get("Open and resolved alerts", "Newest first, each with its device and "
                        "the window that raised it (window_id)."),
    "/api/window": _get("One stored metrics window", "Its columns and the device's payload.",
                        [_q("id", "Window id (alerts' window_id).", required=True,
                            kind="integer")]),
    "/api/rollouts": _get(
        "Every rollout",
        "Running first, then newest: id, model@version, fleet, state (running, halted, "
        "completed, rolled_back, cancelled), stage_number of stage_count with the stages' "
        "cumulative fractions (devices and committed per stage), devices per state (pending, "
        "sent, downloading, verified, switched, committed, rolled_back, failed, skipped), "
        "gates, soak, the reason when halted, created_at and updated_at; counts per state; "
        "retrains: the newest retrain runs (id, model, state, trigger, version, deployment_id, "
        "reason, started_at, finished_at).",
        schema="Rollouts"),
    "/api/rollouts/{id}": _get(
        "One rollout",
        "Its row of /api/rollouts, its bundle (sha256, size, target, arch), device_rows (per "
        "device: stage, state, progress have/count, from_version -> serving_version, reason, "
        "last_report, updated_at) and events: its newest 200 deploy reports, newest first. "
        "404 for an unknown id.",
        [_path("id", "The deployment id (`edgeml deploy status` lists them).")]),
    "/api/openapi.json": _get("This document", "The OpenAPI description of the API."),
}


def openapi(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeml fleet dashboard", "version": version,
                 "description": "Read-only JSON API of `edgeml dashboard`. With a token, send "
                                "`Authorization: Bearer TOKEN`."},
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Object": {"type": "object"},
                "Fleet": {"type": "object", "required": ["counts", "devices"], "properties": {
                    "generated_at": {"type": "string", "format": "date-time"},
                    "counts": {"type": "object", "properties": {
                        k: {"type": "integer"} for k in
                        ("devices", "up", "lost", "drifting", "alerting")}},
                    "fleets": {"type": "array", "items": {"type": "string"}},
                    "states": {"type": "array", "items": {"type": "string"}},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "devices": {"type": "array", "items": {"type": "object"}}}},
                "Rollouts": {"type": "object", "required": ["rollouts"], "properties": {
                    "generated_at": {"type": "string", "format": "date-time"},
                    "states": {"type": "array", "items": {"type": "string"}},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "rollouts": {"type": "array", "items": {"type": "object"}},
                    "retrains": {"type": "array", "items": {"type": "object"}}}},
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["status", "message"],
                              "properties": {"status": {"type": "integer"},
                                             "message": {"type": "string"}}}}},
            },
        },
        "security": [{"bearer": []}, {}],
    }
