"""Timestamps as features: one derivation (edgeml.bundle.derive) on the host and the device.

The host builds its training columns from a data frame (edgeml.train.datetimes), the device
builds its feeds from the values a request carries (edgeml.bundle.feeds.to_feeds); both must
give the numbers pandas' own calendar gives, for leap days, offsets and the turn of a year.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeml.bundle.derive import FEATURES, derive_columns, request_inputs, resolve_timezone
from edgeml.bundle.feeds import to_feeds
from edgeml.bundle.manifest import DATETIME_FEATURES, DerivedInput, InputSpec, Manifest
from edgeml.errors import BundleError, DataError, InputError, RecipeError
from edgeml.train.data import prepare
from edgeml.train.datetimes import expand_datetimes
from edgeml.train.recipe import DataSpec, DatetimeSpec, parse_recipe
from edgeml.train.sources import RawData

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
ALL = list(DATETIME_FEATURES)


def pandas_features(values: list[object], zone: str) -> dict[str, np.ndarray]:
    """The expected features, from pandas' calendar (the reference implementation)."""
    stamps = []
    for v in values:
        if v is None or v == "":
            stamps.append(None)
            continue
        if isinstance(v, (int, float)):
            ts = pd.Timestamp(v, unit="s", tz="UTC").tz_convert(zone)
        else:
            ts = pd.Timestamp(str(v))
            if ts.tzinfo is not None:
                ts = ts.tz_convert(zone)
        stamps.append(ts)
    out: dict[str, list[float]] = {f: [] for f in ALL}
    for ts in stamps:
        if ts is None:
            for f in ALL:
                out[f].append(math.nan)
            continue
        doy, wd = ts.day_of_year, ts.day_of_week
        frac = ts.hour + ts.minute / 60 + ts.second / 3600
        days = 366 if ts.is_leap_year else 365
        row = {
            "year": ts.year, "month": ts.month, "day": ts.day, "weekday": wd, "dayofyear": doy,
            "hour": ts.hour, "minute": ts.minute, "weekend": float(wd >= 5),
            "dayofyear_sin": math.sin(2 * math.pi * (doy - 1) / days),
            "dayofyear_cos": math.cos(2 * math.pi * (doy - 1) / days),
            "weekday_sin": math.sin(2 * math.pi * wd / 7),
            "weekday_cos": math.cos(2 * math.pi * wd / 7),
            "hour_sin": math.sin(2 * math.pi * frac / 24),
            "hour_cos": math.cos(2 * math.pi * frac / 24),
        }
        for f in ALL:
            out[f].append(float(row[f]))
    return {f: np.asarray(v, dtype=np.float64) for f, v in out.items()}


def host_and_device(values: list[object], zone: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training columns the host derives from a frame, feeds the device builds from a request)."""
    frame = pd.DataFrame({"ts": pd.Series(values, dtype=object), "x": np.arange(len(values), dtype=float)})
    got = expand_datetimes(frame, {"ts": "datetime", "x": "numeric"},
                           DatetimeSpec(derive=tuple(ALL), timezone=zone), "data.csv")
    spec = got.derived[0]
    host = {f: got.frame[name].to_numpy(dtype=np.float64) for f, name in zip(ALL, spec.names, strict=True)}
    inputs = [InputSpec(name=n, kind="numeric", dtype="float32") for n in spec.names]
    request = json.loads(json.dumps({"ts": values}))  # what arrives over HTTP/MQTT
    feeds = to_feeds(inputs, request, [spec])
    device = {f: feeds[name].reshape(-1) for f, name in zip(ALL, spec.names, strict=True)}
    return host, device


def assert_matches(values: list[object], zone: str) -> None:
    host, device = host_and_device(values, zone)
    want = pandas_features(values, zone)
    for f in ALL:
        np.testing.assert_allclose(host[f], want[f], rtol=0, atol=1e-12, err_msg=f"{f} of {values}")
        # the device feeds float32 of exactly the host's training values
        np.testing.assert_array_equal(device[f], host[f].astype(np.float32), err_msg=f)


# -- the property: host == device == pandas ----------------------------------------------------

instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31),
                        allow_imaginary=False)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def timestamps(draw: st.DrawFn) -> object:
    dt = draw(instants).replace(microsecond=0)
    form = draw(st.sampled_from(["naive", "date", "offset", "z", "unix", "unix_float", "missing"]))
    if form == "naive":
        return dt.isoformat()
    if form == "date":
        return dt.date().isoformat()
    if form == "offset":
        return dt.replace(tzinfo=draw(offsets)).isoformat()
    if form == "z":
        return dt.isoformat() + "Z"
    if form == "unix":
        return int(dt.replace(tzinfo=timezone.utc).timestamp())
    if form == "unix_float":
        return dt.replace(tzinfo=timezone.utc).timestamp() + 0.25
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(timestamps(), min_size=1, max_size=8), zone=st.sampled_from(ZONES))
def test_host_and_device_derive_what_pandas_computes(values: list[object], zone: str) -> None:
    assert_matches(values, zone)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_leap_days_offsets_and_the_turn_of_a_year(zone: str) -> None:
    values: list[object] = [
        "2024-02-29", "2024-02-29T23:59:59", "2023-02-28T12:00:00", "2024-03-01T00:00:00Z",
        "2023-12-31T23:30:00-01:00",  # already 2024 in UTC and east of it
        "2024-12-31T23:59:59+00:00", "2025-01-01T00:00:00+14:00", "1999-12-31T22:00:00-05:00",
        "2000-02-29T06:00:00", "2100-02-28", 1709251199, 1704067200.0, None, "",
    ]
    assert_matches(values, zone)
    host, _ = host_and_device(values, zone)
    if zone == "UTC":  # spot checks a reader can verify by hand
        assert host["dayofyear"][1] == 60 and host["month"][1] == 2 and host["day"][1] == 29
        assert host["year"][4] == 2024 and host["dayofyear"][4] == 1 and host["hour"][4] == 0
        assert host["year"][6] == 2024 and host["month"][6] == 12 and host["hour"][6] == 10
        assert host["dayofyear"][5] == 366  # 31 December of a leap year
        assert host["dayofyear_cos"][4] == 1.0  # 1 January sits at angle 0
        assert math.isnan(host["month"][12]) and math.isnan(host["hour_sin"][13])


def test_every_declared_feature_has_one_function() -> None:
    assert tuple(FEATURES) == DATETIME_FEATURES


def test_bad_timestamps_are_errors_naming_the_feature_and_row() -> None:
    spec = DerivedInput(source="ts", features=["month", "hour_sin"])
    inputs = [InputSpec(name=n, kind="numeric", dtype="float32") for n in spec.names]
    for bad in ("yesterday", "2024-13-01", "2024-02-30", True, float("inf"), [2024]):
        with pytest.raises(InputError) as info:
            to_feeds(inputs, {"ts": ["2024-01-01", bad]}, [spec])
        msg = str(info.value)
        assert msg.startswith("feature 'ts' row 1: expected an ISO 8601 timestamp or Unix seconds"), msg
    with pytest.raises(InputError, match="missing feature 'ts'"):
        to_feeds(inputs, {"x": [1.0]}, [spec])


def test_host_data_error_names_column_and_row() -> None:
    frame = pd.DataFrame({"when": ["2024-01-01", "2024-01-02", "soon", "2024-01-04"],
                          "x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]})
    raw = RawData(frame, "readings.csv", "0" * 64, {})
    with pytest.raises(DataError) as info:
        prepare(raw, DataSpec(source="readings.csv", target="y", columns={"when": "datetime"}),
                task="classification")
    assert str(info.value) == (
        "readings.csv: column 'when' is declared datetime but has a value that is not an ISO 8601 "
        "timestamp or Unix seconds, e.g. 'soon' in row 3 (rows count from 1 after the header)")


def test_datetime_columns_become_numeric_features_in_place_with_defaults() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "day": ["2024-01-01", None, "2024-07-01"],
                          "stamp": ["2024-01-01T08:00:00Z", "2024-01-01T20:00:00Z", ""],
                          "y": ["p", "q", "p"]})
    ds = prepare(RawData(frame, "d.csv", "0" * 64, {}),
                 DataSpec(source="d.csv", target="y", columns={"day": "datetime", "stamp": "datetime"}),
                 task="classification")
    day = ["day_month", "day_weekday", "day_dayofyear_sin", "day_dayofyear_cos"]  # dates only
    stamp = [f"stamp_{f}" for f in ("month", "weekday", "dayofyear_sin", "dayofyear_cos",
                                    "hour_sin", "hour_cos")]  # times of day: + hour
    assert list(ds.kinds) == ["a", *day, *stamp]
    assert set(ds.kinds.values()) == {"numeric"}
    assert [d.source for d in ds.derived] == ["day", "stamp"]
    assert ds.frame["day_month"].tolist()[::2] == [1.0, 7.0] and math.isnan(ds.frame["day_month"][1])
    assert math.isnan(ds.frame["stamp_hour_sin"][2])  # missing -> NaN, for the imputer
    assert ds.raw is not None and ds.raw["day"].tolist() == ["2024-01-01", None, "2024-07-01"]


def test_recipe_options_are_checked() -> None:
    base = {"name": "t", "task": "classification", "data": {"source": "x.csv", "target": "y"},
            "candidates": [{"family": "logistic_regression"}]}
    ok = parse_recipe({**base, "features": {"datetime": {"derive": ["hour", "weekend"],
                                                          "timezone": "Europe/Berlin"}}})
    assert ok.features.datetime == DatetimeSpec(derive=("hour", "weekend"), timezone="Europe/Berlin")
    assert ok.to_dict()["features"]["datetime"]["timezone"] == "Europe/Berlin"
    assert "datetime" not in parse_recipe(base).to_dict()["features"]  # old recipes hash as before
    with pytest.raises(RecipeError, match=r"features.datetime.derive.*'season' is not one of"):
        parse_recipe({**base, "features": {"datetime": {"derive": ["season"]}}})
    with pytest.raises(RecipeError, match=r"features.datetime.timezone.*'Mars/Olympus'"):
        parse_recipe({**base, "features": {"datetime": {"timezone": "Mars/Olympus"}}})


def test_timezone_needs_a_database_except_utc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import zoneinfo

    assert resolve_timezone("UTC") is timezone.utc
    # a device without a time zone database: UTC still works, a named zone is a clear error
    monkeypatch.setattr(zoneinfo, "TZPATH", ())
    zoneinfo.reset_tzpath(to=[str(tmp_path)])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        assert resolve_timezone("UTC") is timezone.utc
        try:
            import tzdata  # noqa: F401 (if installed, zoneinfo falls back to it)
        except ImportError:
            with pytest.raises(BundleError, match="timezone 'Europe/Berlin' is not available here"):
                resolve_timezone("Europe/Berlin")
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()


def test_manifest_declares_derived_inputs_and_stays_compatible() -> None:
    from tiny_bundle import members

    manifest, _ = members()
    raw = manifest.to_dict()
    assert "derived" not in raw  # absent -> none: manifests without it are byte-identical
    assert Manifest.from_dict(raw).derived == []
    with pytest.raises(BundleError, match=r"derived\[0\]: 'ts_month' is not a numeric input"):
        Manifest.from_dict({**raw, "derived": [{"source": "ts", "features": ["month"]}]})
    with pytest.raises(BundleError, match=r"derived\[0\].features: 'season' is not one of"):
        Manifest.from_dict({**raw, "derived": [{"source": "ts", "features": ["season"]}]})
    numeric = [i for i in manifest.inputs if i.kind == "numeric"]
    renamed = [{**i, "name": "ts_month"} if i["name"] == numeric[0].name else i for i in raw["inputs"]]
    ok = Manifest.from_dict({**raw, "inputs": renamed,
                             "derived": [{"source": "ts", "features": ["month"], "timezone": "UTC"}]})
    assert ok.derived == [DerivedInput(source="ts", features=["month"])]
    assert Manifest.from_json(ok.to_json()) == ok


def test_request_inputs_carry_the_raw_timestamp_in_place_of_its_features() -> None:
    spec = DerivedInput(source="ts", features=["month", "hour_sin"])
    inputs = [InputSpec("a", "numeric", "float32"), InputSpec("ts_month", "numeric", "float32"),
              InputSpec("ts_hour_sin", "numeric", "float32"), InputSpec("c", "categorical", "string")]
    assert [(s.name, s.dtype) for s in request_inputs(inputs, [spec])] == [
        ("a", "float32"), ("ts", "string"), ("c", "string")]
    cols = derive_columns([spec], {"a": [1.0], "ts": ["2024-06-01T06:00:00Z"], "c": ["x"]})
    assert list(cols) == ["a", "c", "ts_month", "ts_hour_sin"]
    assert cols["ts_month"][0] == 6.0 and cols["ts_hour_sin"][0] == pytest.approx(1.0)
    # already derived (a simulator sampling the reference profile): passed as they are
    assert derive_columns([spec], {"ts_month": [3.0], "ts_hour_sin": [0.0]}) == {
        "ts_month": [3.0], "ts_hour_sin": [0.0]}
