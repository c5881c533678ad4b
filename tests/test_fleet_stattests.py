"""The drift statistics, pinned against scipy (and the KS bound against scipy's exact D)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from edgeml.errors import UsageError
from edgeml.fleet import stattests
from edgeml.fleet.decay import wilson

RNG = np.random.default_rng(42)
REF = np.array([120.0, 80.0, 200.0, 50.0, 50.0])
CUR = np.array([[130, 70, 190, 60, 50], [0, 0, 10, 300, 1], [12, 8, 20, 5, 5]], dtype=float)


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    e = np.maximum(ref / ref.sum(), 1e-4)
    a = np.maximum(cur / cur.sum(), 1e-4)
    return float(((a - e) * np.log(a / e)).sum())


def test_registry_names_kinds_thresholds_directions() -> None:
    assert set(stattests.REGISTRY) >= {"psi", "ks", "js", "chi2"}
    psi = stattests.get("psi")
    assert (psi.watch, psi.alert, psi.direction) == (0.1, 0.25, "higher")
    assert "categorical" not in psi.kinds and "numeric" in psi.kinds
    assert stattests.get("chi2").direction == "lower" and stattests.get("js").alert == 0.1
    assert psi.breached(0.3, 0.25) and not psi.breached(0.2, 0.25)
    assert stattests.get("ks").breached(0.01, 0.05)
    with pytest.raises(UsageError, match="unknown drift statistic 'wasserstein'; known: chi2, js, ks, psi"):
        stattests.get("wasserstein")
    with pytest.raises(ValueError, match="already registered"):
        stattests.register("psi", ("numeric",), watch=None, alert=None)(lambda r, c: c)


def test_psi_matches_its_formula_and_is_zero_on_the_reference() -> None:
    values = stattests.get("psi")(REF, CUR)
    assert values.tolist() == pytest.approx([_psi(REF, c) for c in CUR], rel=1e-12)
    assert stattests.get("psi")(REF, REF[None, :] * 3)[0] == pytest.approx(0.0, abs=1e-15)
    assert np.isnan(stattests.get("psi")(REF, np.zeros((1, 5)))[0])  # nothing to judge


def test_jensen_shannon_matches_scipy() -> None:
    values = stattests.get("js")(REF, CUR)
    expected = [jensenshannon(REF / REF.sum(), c / c.sum(), base=2) for c in CUR]
    assert values.tolist() == pytest.approx(expected, rel=1e-10)
    # an unseen category (a zero reference share) is a finite distance, at most 1
    unseen = stattests.get("js")(np.array([1.0, 0.0]), np.array([[0.0, 10.0]]))
    assert unseen[0] == pytest.approx(1.0)


def test_chi_square_matches_scipy_including_p_values() -> None:
    stat = stattests.chi2_statistic(REF, CUR)
    p = stattests.get("chi2")(REF, CUR)
    for row, s_value, p_value in zip(CUR, stat, p, strict=True):
        e = np.maximum(REF / REF.sum(), 1e-4)
        e = e / e.sum()
        ref = stats.chisquare(row, e * row.sum())
        assert s_value == pytest.approx(ref.statistic, rel=1e-10)
        assert p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_chi_square_survival_function_matches_scipy(df: int) -> None:
    x = np.array([0.01, 0.5, 1.0, df - 0.5, df + 1.0, 3.0 * df, 10.0 * df + 40.0])
    assert stattests.chi2_sf(x, df).tolist() == pytest.approx(stats.chi2.sf(x, df).tolist(), rel=1e-9)


def test_kolmogorov_distribution_matches_scipy() -> None:
    x = np.array([0.25, 0.4, 0.7, 1.0, 1.36, 2.0, 3.0])
    assert stattests.kolmogorov_sf(x).tolist() == pytest.approx(special.kolmogorov(x).tolist(), rel=1e-9)


def test_ks_from_bins_is_scipys_d_on_binned_data_and_a_lower_bound_otherwise() -> None:
    ref_x = RNG.normal(0, 1, 5000)
    cur_x = RNG.normal(0.3, 1.2, 3000)
    edges = np.quantile(ref_x, np.arange(1, 10) / 10)
    ref_c = np.bincount(np.searchsorted(edges, ref_x, side="right"), minlength=10)
    cur_c = np.bincount(np.searchsorted(edges, cur_x, side="right"), minlength=10)
    d = stattests.ks_statistic(ref_c.astype(float), cur_c[None, :].astype(float))[0]
    exact = stats.ks_2samp(ref_x, cur_x).statistic
    assert d <= exact + 1e-12 and d > 0.5 * exact
    # values that sit on the bin labels: the binned D is scipy's D exactly
    ref_b = np.searchsorted(edges, ref_x, side="right").astype(float)
    cur_b = np.searchsorted(edges, cur_x, side="right").astype(float)
    assert d == pytest.approx(stats.ks_2samp(ref_b, cur_b).statistic, rel=1e-12)
    # and the p-value is the asymptotic one of scipy's one-sample test against the reference
    n = cur_c.sum()
    p = stattests.get("ks")(ref_c.astype(float), cur_c[None, :].astype(float))[0]
    assert p == pytest.approx(special.kolmogorov(d * np.sqrt(n)), rel=1e-9)


def test_wilson_interval_matches_scipy() -> None:
    for k, n in ((45, 50), (0, 30), (30, 30), (412, 1000)):
        low, high = wilson(k, n, 0.95)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
