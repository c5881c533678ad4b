"""``search: {backend: dask, scheduler: ...}``: the search on a Dask cluster gives the local leaderboard.

The cluster is a real ``distributed.LocalCluster`` (two worker processes, one thread each)
on a loopback TCP port, started by the test; the search gets the workflow's own holdout
split and seeded CV splitter, as ``edgeml train`` gives it.
"""

from __future__ import annotations

import importlib.util
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

distributed = pytest.importorskip("distributed")

from edgeml.cli import main  # noqa: E402
from edgeml.errors import RecipeError  # noqa: E402
from edgeml.train.recipe import load_recipe, parse_recipe  # noqa: E402
from edgeml.train.search import search  # noqa: E402
from edgeml.train.split import cv_splitter, holdout_split  # noqa: E402

CANDIDATES = [
    {"family": "logistic_regression", "params": {"C": [0.1, 10.0]}},
    {"family": "random_forest", "params": {"n_estimators": [5], "max_depth": [2, 4, None]}},
    {"family": "knn", "params": {"n_neighbors": [3, 7]}},
]


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", protocol="tcp", dashboard_address=None)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def _recipe(tmp_path: Path, name: str, search: dict[str, Any]) -> Path:
    raw = {"name": name, "task": "classification",
           "data": {"source": "sklearn:iris", "target": "target"},
           "split": {"holdout": 0.2, "cv": 3, "seed": 7},
           "search": search, "candidates": CANDIDATES}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _data(seed: int = 3, n: int = 240) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["x", "y", "z"], n)
    X = pd.DataFrame({"a": a, "b": b, "c": pd.Series(c, dtype=object)})
    y = pd.Series(np.where(a + 0.5 * b + (c == "x") + rng.normal(scale=0.8, size=n) > 0.4,
                           "pos", "neg"), dtype=object, name="y")
    return X, y


def _search(tmp_path: Path, name: str, search_spec: dict[str, Any]) -> tuple[Any, str]:
    """The workflow's own split and CV splitter, then the search; (result, console text)."""
    recipe = load_recipe(_recipe(tmp_path, name, search_spec))
    X, y = _data()
    kinds = {"a": "numeric", "b": "numeric", "c": "categorical"}
    split = holdout_split(X, y, recipe.split, task="classification")
    cv = cv_splitter(recipe.split, task="classification", y=split.y_train)
    buf = io.StringIO()
    result = search(recipe, split.X_train, split.y_train, kinds, cv,
                    console=Console(file=buf, width=200))
    return result, buf.getvalue()


def _same_board(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [(r["rank"], r["family"], r["params"]) for r in a] == \
        [(r["rank"], r["family"], r["params"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["cv_mean"] == pytest.approx(rb["cv_mean"], abs=1e-9)
        assert ra["cv_std"] == pytest.approx(rb["cv_std"], abs=1e-9)


@pytest.mark.slow  # a Dask LocalCluster takes ~10 s to start on 2 cores
@pytest.mark.parametrize("method", ["grid", "random"])
def test_dask_leaderboard_equals_local(tmp_path: Path, scheduler: str, method: str) -> None:
    spec = {"method": method, "n_iter": 2}  # random: 2 of the forest's 3 points
    local, local_out = _search(tmp_path, "local", spec)
    remote, remote_out = _search(tmp_path, "remote", {**spec, "backend": "dask",
                                                      "scheduler": scheduler})
    assert len(local.leaderboard) == 3
    assert "on dask" not in local_out
    assert f"searching on dask {scheduler} (2 worker(s))" in remote_out
    _same_board(remote.leaderboard, local.leaderboard)
    assert (remote.best_family, remote.best_params) == (local.best_family, local.best_params)


def test_where_the_search_runs_is_recorded_but_not_hashed(tmp_path: Path) -> None:
    base = yaml.safe_load(_recipe(tmp_path, "r", {"method": "grid"}).read_text())
    local = parse_recipe(base)
    remote = parse_recipe({**base, "search": {"method": "grid", "backend": "dask",
                                              "scheduler": "tcp://10.0.0.5:8786"}})
    assert remote.to_dict()["search"]["backend"] == "dask"
    assert "backend" not in local.to_dict()["search"]  # old recipes keep their hash
    assert remote.sha256() == local.sha256()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_scheduler_is_one_line_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    recipe = _recipe(tmp_path, "iris-gone", {"backend": "dask", "scheduler": address,
                                             "connect_timeout": 2})
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe), "--registry", str(tmp_path / "reg")])
    assert exit_info.value.code == 2
    assert time.monotonic() - t0 < 2 + 30
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {recipe}: search.scheduler: cannot reach the Dask "
                              f"scheduler at {address} (waited 2 s)")
    assert not (tmp_path / "reg" / "iris-gone").exists()


@pytest.mark.parametrize(("search", "field", "words"), [
    ({"backend": "dask"}, "search.scheduler", "needs the scheduler's address"),
    ({"scheduler": "tcp://127.0.0.1:8786"}, "search.scheduler", "only with backend dask or ray"),
    ({"backend": "dask", "scheduler": "127.0.0.1:8786"}, "search.scheduler",
     "is not an address like tcp://HOST:PORT"),
    ({"backend": "spark"}, "search.backend", "'local', 'dask' or 'ray'"),
])
def test_backend_errors_name_the_field(search: dict[str, Any], field: str, words: str) -> None:
    raw = {"name": "x", "task": "classification", "data": {"source": "sklearn:iris",
           "target": "target"}, "search": search, "candidates": CANDIDATES}
    with pytest.raises(RecipeError) as exc_info:
        parse_recipe(raw, "r.yaml")
    assert str(exc_info.value).startswith(f"r.yaml: {field}: ")
    assert words in str(exc_info.value)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_without_ray_names_the_extra() -> None:
    raw = {"name": "x", "task": "classification", "data": {"source": "sklearn:iris",
           "target": "target"}, "search": {"backend": "ray"}, "candidates": CANDIDATES}
    with pytest.raises(RecipeError, match=r"r.yaml: search.backend: ray needs the 'ray' "
                                          r"package, which is not installed: pip install "
                                          r"'edgeml\[ray\]'"):
        parse_recipe(raw, "r.yaml")
