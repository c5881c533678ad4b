"""``report.html`` of a registered model: one self-contained page (figures inline as base64 PNG).

Sections: summary, holdout metrics, gates, leaderboard, then by task: confusion matrix,
ROC and precision-recall curves one-vs-rest (classification); predicted vs actual and
residuals (regression); score distribution (anomaly). Then permutation importance of the
raw features on the holdout (whole rounds of shuffles, up to 5, while
:data:`IMPORTANCE_BUDGET_S` lasts), and a small learning curve (3 train sizes, 3 folds, at
most :data:`LEARNING_ROWS` rows; skipped when its estimated cost exceeds
:data:`LEARNING_BUDGET_S`). A figure that cannot be drawn becomes a note, never a failure.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeml.train import htmlkit as hk

__all__ = ["LEARNING_BUDGET_S", "LEARNING_ROWS", "comparison_section", "write_report"]

LEARNING_ROWS = 2000
LEARNING_SIZES = (0.2, 0.5, 1.0)
LEARNING_BUDGET_S = 3.0
LEARNING_SAFETY = 1.5  # fit-time estimates leave out scoring and noise
IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 5
IMPORTANCE_BUDGET_S = 2.0
IMPORTANCE_MAX_FEATURES = 200


def _guard(title: str, build: Callable[[], str]) -> str:
    """Run a section builder; an error becomes a note in the report."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hk.section(title, build())
    except Exception as exc:  # a figure must never fail a training run
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return hk.section(title, f'<p class="note">not available: {hk.esc(first)}</p>')


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    return hk.table(["metric", "value"], rows)


def _gates_table(gates: Sequence[dict[str, Any]]) -> str:
    if not gates:
        return '<p class="note">The recipe sets no gates.</p>'
    rows = []
    for g in gates:
        ok = bool(g.get("passed"))
        verdict = f'<span class="{"pass" if ok else "fail"}">{"passed" if ok else "FAILED"}</span>'
        rows.append([hk.esc(g.get("metric")), hk.esc(f"{g.get('op')} {hk.fmt(g.get('threshold'))}"),
                     hk.esc(hk.fmt(g.get("value"))), verdict])
    return hk.table(["metric", "required", "value", "result"], rows, raw=True)


def _leaderboard_table(leaderboard: Sequence[dict[str, Any]]) -> str:
    if not leaderboard:
        return '<p class="note">No leaderboard.</p>'
    rows = [
        (r.get("rank"), r.get("family"), ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()),
         r.get("cv_mean"), r.get("cv_std"), r.get("fit_time_s"))
        for r in leaderboard
    ]
    return hk.table(["rank", "family", "params", "cv mean", "cv std", "fit time (s)"], rows)


def _confusion(matrix: list[list[int]], labels: Sequence[str], title: str) -> str:
    cm = np.asarray(matrix)
    size = max(3.6, 0.5 * len(labels) + 2.5)
    fig = hk.new_figure(size + 0.8, size)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    return hk.image(fig, title)


def _curves(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> str:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    roc, pr = hk.new_figure(), hk.new_figure()
    ax_roc, ax_pr = roc.add_subplot(), pr.add_subplot()
    shown = classes[1:] if len(classes) == 2 else classes
    for name in shown:
        i = list(classes).index(name)
        positive = y == name
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, i])
        prec, rec, _ = precision_recall_curve(positive, proba[:, i])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        ax_pr.plot(rec, prec, label=f"{name} (AP {average_precision_score(positive, proba[:, i]):.3f})")
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (one-vs-rest)")
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize="small")
    return f'<div class="figs">{hk.image(roc, "ROC curves")}{hk.image(pr, "precision-recall curves")}</div>'


def _regression_plots(y: np.ndarray, pred: np.ndarray) -> str:
    fig1, fig2 = hk.new_figure(), hk.new_figure()
    ax = fig1.add_subplot()
    ax.scatter(y, pred, s=10, alpha=0.6)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
    ax2 = fig2.add_subplot()
    ax2.scatter(pred, y - pred, s=10, alpha=0.6)
    ax2.axhline(0, color="grey", lw=1, ls="--")
    ax2.set(xlabel="predicted", ylabel="residual (actual - predicted)", title="Residuals")
    return f'<div class="figs">{hk.image(fig1, "predicted vs actual")}{hk.image(fig2, "residuals")}</div>'


def _anomaly_plot(scores: np.ndarray, y: np.ndarray | None) -> str:
    fig = hk.new_figure(6, 3.6)
    ax = fig.add_subplot()
    bins = [float(b) for b in np.histogram_bin_edges(scores, bins=30)]
    if y is None:
        ax.hist(scores, bins=bins, alpha=0.8)
    else:
        ax.hist(scores[y == 0], bins=bins, alpha=0.6, label="normal (label 0)")
        ax.hist(scores[y == 1], bins=bins, alpha=0.6, label="anomaly (label 1)")
        ax.legend(fontsize="small")
    ax.axvline(0, color="black", lw=1, ls="--")
    ax.set(xlabel="decision score (below 0: flagged as anomaly)", ylabel="rows", title="Anomaly scores")
    return hk.image(fig, "anomaly scores")


def _scorer(task: str) -> tuple[str, Callable[[Any, pd.DataFrame, np.ndarray], float]]:
    """(name, score(estimator, X, y)) used by importance and the learning curve."""
    from sklearn.metrics import f1_score, r2_score

    if task == "classification":
        return "f1_macro", lambda est, X, y: float(f1_score(y, est.predict(X), average="macro", zero_division=0))
    if task == "regression":
        return "r2", lambda est, X, y: float(r2_score(y, est.predict(X)))
    return "f1 (anomaly = positive)", lambda est, X, y: float(
        f1_score(y.astype(int), (est.predict(X) == -1).astype(int), zero_division=0))


def _permutation_importance(pipeline: Any, X: pd.DataFrame, y: np.ndarray, task: str,
                            seed: int) -> tuple[np.ndarray, int]:
    """Score drops ``[repeats, features]`` from shuffling one raw column at a time.

    Whole rounds over all features are repeated (at most 5) while the time budget lasts.
    """
    _, score = _scorer(task)
    rng = np.random.default_rng(seed)
    base = score(pipeline, X, y)
    deadline = time.perf_counter() + IMPORTANCE_BUDGET_S
    rounds: list[list[float]] = []
    for _ in range(IMPORTANCE_REPEATS):
        drops = []
        for col in X.columns:
            shuffled = X.copy()
            shuffled[col] = X[col].to_numpy()[rng.permutation(len(X))]
            drops.append(base - score(pipeline, shuffled, y))
        rounds.append(drops)
        if time.perf_counter() > deadline:
            break
    return np.asarray(rounds, dtype=float), len(rounds)


def _importance(pipeline: Any, X: pd.DataFrame, y: Any, task: str, seed: int) -> str:
    if y is None:
        return '<p class="note">Needs labels: the holdout has no target column.</p>'
    if X.shape[1] > IMPORTANCE_MAX_FEATURES:
        return f'<p class="note">Skipped: more than {IMPORTANCE_MAX_FEATURES} features.</p>'
    y = pd.Series(np.asarray(y), index=X.index)
    if len(X) > IMPORTANCE_ROWS:
        X = X.sample(IMPORTANCE_ROWS, random_state=seed)
        y = y.loc[X.index]
    drops, repeats = _permutation_importance(pipeline, X, y.to_numpy(), task, seed)
    mean, std = drops.mean(axis=0), drops.std(axis=0)
    order = np.argsort(mean)[::-1][:25]
    names = [str(X.columns[i]) for i in order]
    fig = hk.new_figure(6, max(2.5, 0.3 * len(order) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names[::-1], mean[order][::-1], xerr=std[order][::-1])
    ax.set(xlabel=f"drop in {_scorer(task)[0]} when the feature is shuffled",
           title="Permutation importance (holdout)")
    rows = [(n, float(mean[i]), float(std[i])) for n, i in zip(names, order, strict=True)]
    note = f'<p class="muted">{repeats} repeat(s) on {len(X)} holdout rows.</p>'
    return hk.image(fig, "permutation importance") + note + hk.table(["feature", "mean drop", "std"], rows)


def _learning_curve(pipeline: Any, X: pd.DataFrame, y: Any, task: str, seed: int,
                    fit_time_s: float | None) -> str:
    from sklearn.base import clone
    from sklearn.model_selection import learning_curve

    if task == "anomaly" or y is None:
        return '<p class="note">Not drawn for anomaly detection (unsupervised training).</p>'
    n = min(len(X), LEARNING_ROWS)
    estimate = LEARNING_SAFETY * (fit_time_s or 0.0) * sum(LEARNING_SIZES) * 3 * n / max(len(X), 1)
    if estimate > LEARNING_BUDGET_S:
        return f'<p class="note">Skipped: estimated {estimate:.0f} s (budget {LEARNING_BUDGET_S:.0f} s).</p>'
    y = pd.Series(np.asarray(y), index=X.index)
    if len(X) > n:
        X = X.sample(n, random_state=seed)
        y = y.loc[X.index]
    name, score = _scorer(task)
    sizes, train_scores, test_scores = learning_curve(
        clone(pipeline), X, y, train_sizes=list(LEARNING_SIZES), cv=3, scoring=score,
        shuffle=True, random_state=seed, n_jobs=1,
    )
    fig = hk.new_figure()
    ax = fig.add_subplot()
    for scores, label in ((train_scores, "train"), (test_scores, "cross-validation")):
        mean, std = np.nanmean(scores, axis=1), np.nanstd(scores, axis=1)
        ax.plot(sizes, mean, "o-", label=label)
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="training rows", ylabel=name, title="Learning curve")
    ax.legend(fontsize="small")
    return hk.image(fig, "learning curve")


def _task_sections(task: str, pipeline: Any, X: pd.DataFrame, y: Any, metrics: dict[str, Any],
                   classes: Sequence[str] | None) -> list[str]:
    out = []
    if task == "classification":
        labels = list((metrics.get("per_class") or {}).keys()) or list(classes or [])
        out.append(_guard("Confusion matrix", lambda: _confusion(
            metrics["confusion_matrix"], labels, "Confusion matrix (holdout)")))

        def curves() -> str:
            if not hasattr(pipeline, "predict_proba"):
                return '<p class="note">The model gives no probabilities.</p>'
            return _curves(np.asarray([str(v) for v in y]), pipeline.predict_proba(X),
                           [str(c) for c in (classes or pipeline.classes_)])

        out.append(_guard("ROC and precision-recall curves", curves))
    elif task == "regression":
        out.append(_guard("Predicted vs actual, residuals", lambda: _regression_plots(
            np.asarray(y, dtype=float), np.asarray(pipeline.predict(X), dtype=float).ravel())))
    else:
        yy = None if y is None else np.asarray(y).astype(int)
        out.append(_guard("Anomaly scores", lambda: _anomaly_plot(
            np.asarray(pipeline.decision_function(X), dtype=float), yy)))
        if "confusion_matrix" in metrics:
            out.append(_guard("Confusion matrix", lambda: _confusion(
                metrics["confusion_matrix"], ["normal", "anomaly"], "Flagged vs labelled (holdout)")))
    return out


def comparison_section(comparison: dict[str, Any]) -> str:
    """Challenger vs champion: a table per holdout and a plot of the paired differences."""
    holdouts = comparison.get("holdouts") or []
    metric = comparison.get("metric")
    rows = [(h.get("holdout"), h.get("rows"), h.get("champion"), h.get("challenger"),
             h.get("delta"), h.get("ci_low"), h.get("ci_high"), h.get("mcnemar_p"))
            for h in holdouts]
    table = hk.table(["holdout", "rows", f"champion {metric}", f"challenger {metric}",
                      "improvement", "95% CI low", "95% CI high", "McNemar p"], rows)
    verdict = comparison.get("decision")
    note = (f'<p class="{"pass" if verdict == "challenger" else "fail"}">'
            f'{hk.esc(verdict)} (against {hk.esc(comparison.get("champion"))}): '
            f'{hk.esc(comparison.get("reason"))}</p>')

    def plot() -> str:
        fig = hk.new_figure(5.0, 2.6)
        ax = fig.add_subplot()
        shown = [h for h in holdouts if h.get("delta") is not None]
        ys = np.arange(len(shown))
        deltas = np.asarray([h["delta"] for h in shown], dtype=float)
        lo = deltas - np.asarray([h["ci_low"] for h in shown], dtype=float)
        hi = np.asarray([h["ci_high"] for h in shown], dtype=float) - deltas
        ax.errorbar(deltas, ys, xerr=[lo, hi], fmt="o", capsize=4)
        ax.axvline(0.0, color="#999", lw=1)
        margin = float(comparison.get("margin") or 0.0)
        if margin:
            ax.axvline(-margin, color="#d4a72c", lw=1, ls="--", label=f"-margin {margin:g}")
            ax.legend(fontsize="small")
        ax.set_yticks(ys, [f"{h['holdout']} ({h['rows']})" for h in shown])
        ax.set(xlabel=f"challenger − champion, {metric} (positive: better)",
               title="Paired difference, 95% bootstrap CI")
        return hk.image(fig, "challenger vs champion")

    return hk.section("Challenger vs champion", note + table
                      + _guard("Paired differences", plot), "comparison")


def write_report(
    path: Path,
    *,
    name: str,
    version: int,
    task: str,
    pipeline: Any,
    X_train: pd.DataFrame,
    y_train: Any,
    X_holdout: pd.DataFrame,
    y_holdout: Any,
    metrics: dict[str, Any],
    leaderboard: Sequence[dict[str, Any]],
    gates: Sequence[dict[str, Any]],
    classes: Sequence[str] | None,
    seed: int,
    comparison: dict[str, Any] | None = None,
) -> Path:
    """Write the model's report.html atomically and return its path."""
    t0 = time.perf_counter()
    best = leaderboard[0] if leaderboard else {}
    summary = hk.table(
        ["", ""],
        [("model", f"{name}@{version}"), ("task", task), ("family", best.get("family")),
         ("training rows", len(X_train)), ("holdout rows", len(X_holdout)),
         ("features", ", ".join(map(str, X_train.columns))), ("seed", seed)],
    )
    sections = [
        hk.section("Summary", summary, "summary"),
        hk.section("Holdout metrics", _metrics_table(metrics), "metrics"),
        hk.section("Gates", _gates_table(gates), "gates"),
        *([comparison_section(comparison)] if comparison else []),
        hk.section("Leaderboard", _leaderboard_table(leaderboard), "leaderboard"),
        *_task_sections(task, pipeline, X_holdout, y_holdout, metrics, classes),
        _guard("Permutation importance", lambda: _importance(pipeline, X_holdout, y_holdout, task, seed)),
        _guard("Learning curve", lambda: _learning_curve(
            pipeline, X_train, y_train, task, seed, best.get("fit_time_s"))),
    ]
    subtitle = f"edgeml model report · {task} · generated in {time.perf_counter() - t0:.1f} s"
    return hk.write_atomic(Path(path), hk.page(f"{name}@{version}", subtitle, sections))
