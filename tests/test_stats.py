"""Intervals and agreement statistics against independent references."""

import pytest
from scipy import stats as scipy_stats

from alignment.evaluation import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 24), (12, 30), (30, 30), (81, 263), (1, 1)])
def test_wilson_matches_scipy(k, n):
  ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
  lo, hi = stats.wilson(k, n)
  assert lo == pytest.approx(ci.low, abs=1e-9)
  assert hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_published_value():
  # Newcombe (1998a), 81/263: 0.2553 to 0.3662.
  lo, hi = stats.wilson(81, 263)
  assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


def test_difference_published_values():
  # Newcombe (1998b), method 10, example (a) 56/70 vs 48/80: 0.0524 to 0.3339.
  d, lo, hi = stats.difference(stats.Rate(56, 70), stats.Rate(48, 80))
  assert d == pytest.approx(0.2)
  assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
  # Example (d) 10/10 vs 0/10 (a boundary case): 0.6075 to 1.0000.
  d, lo, hi = stats.difference(stats.Rate(10, 10), stats.Rate(0, 10))
  assert d == 1.0 and round(lo, 4) == 0.6075 and hi == 1.0


def test_difference_is_antisymmetric_and_none_without_data():
  a, b = stats.Rate(7, 30), stats.Rate(2, 30)
  d1, lo1, hi1 = stats.difference(a, b)
  d2, lo2, hi2 = stats.difference(b, a)
  assert d1 == pytest.approx(-d2) and lo1 == pytest.approx(-hi2) and hi1 == pytest.approx(-lo2)
  assert stats.difference(a, stats.Rate(0, 0)) is None


def test_rate_formatting_and_bad_input():
  assert stats.Rate(3, 24).pct().startswith("12.5% [")
  assert stats.Rate(0, 0).pct() == "–" and stats.Rate(0, 0).value is None
  with pytest.raises(ValueError, match="k must be in"):
    stats.wilson(5, 4)
  with pytest.raises(ValueError, match="n must be positive"):
    stats.wilson(0, 0)


def test_cohen_kappa_by_hand():
  # 2x2 table: both yes 20, truth yes/pred no 5, truth no/pred yes 10, both no 15 (n = 50).
  truth = [True] * 25 + [False] * 25
  pred = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
  po = 35 / 50
  pe = (25 / 50) * (30 / 50) + (25 / 50) * (20 / 50)
  assert stats.cohen_kappa(truth, pred) == pytest.approx((po - pe) / (1 - pe))
  assert stats.cohen_kappa(truth, truth) == pytest.approx(1.0)
  assert stats.cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
  with pytest.raises(ValueError):
    stats.cohen_kappa([True], [True, False])


def test_spread():
  s = stats.spread([0.1, 0.3, None, 0.5])
  assert s["seeds"] == 3 and s["mean"] == pytest.approx(0.3) and s["min"] == 0.1
  assert s["sd"] == pytest.approx(0.2)
  assert stats.spread([]) == {"seeds": 0, "mean": None, "min": None, "max": None, "sd": None}
