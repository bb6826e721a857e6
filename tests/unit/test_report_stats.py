"""Seed statistics of the report (mtwork.report.stats) against values worked out by hand and t tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtwork.report.stats import BEST, SECOND, TIED, Sample, rank, summarize, t_quantile, welch_p

# Student-t critical values t_{0.975, df} from a printed t table (3 decimals)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_t_table(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=5e-4)  # the table rounds to 3 decimals


def test_t_quantile_rejects_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0)


def _summary(groups):
    frame = pd.DataFrame([(g, v) for g, values in groups.items() for v in values], columns=["row", "value"])
    return summarize(frame, ["row"])


def test_summarize_mean_std_and_interval_by_hand():
    out = _summary({"two": [10.0, 12.0], "three": [1.0, 2.0, 3.0], "one": [5.0], "bad": [1.0, float("nan")]})
    two = out.loc["two"]
    # mean 11, std sqrt(((10-11)^2 + (12-11)^2) / 1) = 1.414, half width 12.706 * 1.414 / sqrt(2) = 12.706
    assert two["mean"] == 11.0 and two["n"] == 2 and two["std"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert two["ci_low"] == pytest.approx(11 - 12.706, abs=1e-3) and two["ci_high"] == pytest.approx(11 + 12.706, abs=1e-3)
    three = out.loc["three"]
    # mean 2, std 1, half width 4.303 / sqrt(3) = 2.484
    assert three["mean"] == 2.0 and three["std"] == pytest.approx(1.0, rel=1e-12) and three["n"] == 3
    assert three["ci_low"] == pytest.approx(2 - 2.484, abs=1e-3) and three["ci_high"] == pytest.approx(2 + 2.484, abs=1e-3)
    one = out.loc["one"]  # one seed: a mean, no std and no interval
    assert one["mean"] == 5.0 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    bad = out.loc["bad"]  # an undefined seed makes the whole cell undefined
    assert bad["undefined"] == 1 and bad["n"] == 1 and math.isnan(bad["mean"]) and math.isnan(bad["ci_high"])


def test_welch_against_hand_computation_and_scipy_stats():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [10.0, 12.0, 14.0], [4.0, 5.0, 6.0]
    # mean 12 vs 5, std 2 vs 1: t = 7 / sqrt(4/3 + 1/3) = 5.422, Welch df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 2.94;
    # 5.422 > t_{0.975, 2} = 4.303 >= t_{0.975, 2.94}: the difference exceeds the noise at 5 %
    p = welch_p(12.0, 2.0, 3, 5.0, 1.0, 3)
    assert p < 0.05
    assert p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    # 10, 12 vs 11, 13: t = 1 / sqrt(1 + 1) = 0.707 < t_{0.975, 2} = 4.303: within the noise
    p_tie = welch_p(11.0, math.sqrt(2), 2, 12.0, math.sqrt(2), 2)
    assert p_tie > 0.05
    assert p_tie == pytest.approx(scipy_stats.ttest_ind([10, 12], [11, 13], equal_var=False).pvalue, rel=1e-9)
    assert math.isnan(welch_p(1.0, math.nan, 1, 2.0, 1.0, 3))  # one seed: no noise estimate
    assert welch_p(1.0, 0.0, 2, 2.0, 0.0, 2) == 0.0 and welch_p(1.0, 0.0, 2, 1.0, 0.0, 2) == 1.0


def _sample(values):
    values = np.asarray(values, dtype=float)
    return Sample(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def test_clear_winner_and_runner_up_with_three_seeds():
    # std 1 each, n = 3: Welch t = diff / sqrt(2/3), df = 4, t_{0.975, 4} = 2.776 -> a gap above 2.27 is significant
    a, b, c = _sample([20, 21, 22]), _sample([10, 11, 12]), _sample([0, 1, 2])
    ranking = rank([b, a, c], higher=True)
    assert ranking.marks == [SECOND, BEST, ""] and ranking.status == "best"
    assert rank([b, a, c], higher=False).marks == [SECOND, "", BEST]  # lower is better: c best, b second


def test_runner_up_within_noise_of_the_third_is_not_underlined():
    best, b, c = _sample([20, 21, 22]), _sample([10, 11, 12]), _sample([9, 11, 13])  # b and c both mean 11
    assert rank([best, b, c], higher=True).marks == [BEST, "", ""]


def test_rows_within_noise_of_the_best_share_rank_one():
    # a: mean 21 std 1; b: mean 20.5 std 2.5 (within noise of a); c: mean 1, far below both
    a, b, c = _sample([20, 21, 22]), _sample([18, 20.5, 23]), _sample([0, 1, 2])
    ranking = rank([a, b, c], higher=True)
    assert ranking.marks == [TIED, TIED, ""] and ranking.status == "tied" and ranking.below == 1


def test_nothing_marked_when_every_row_is_within_noise():
    # two seeds: 10, 12 vs 11, 13 -> p = 0.58 (see above)
    ranking = rank([_sample([10, 12]), _sample([11, 13]), None], higher=True)
    assert ranking.marks == ["", "", ""] and ranking.status == "none"


def test_one_seed_marks_nothing():
    ranking = rank([_sample([50]), _sample([10]), _sample([30])], higher=True)
    assert ranking.marks == ["", "", ""] and ranking.status == "one_seed"


def test_a_row_with_one_seed_cannot_be_told_apart_from_the_best():
    a, b, lone = _sample([20, 21, 22]), _sample([0, 1, 2]), _sample([5])
    assert rank([a, b, lone], higher=True).marks == [TIED, "", TIED]


def test_identical_rows_are_reported_as_equal():
    same = _sample([0.0449, 0.0449])
    ranking = rank([same, same, same], higher=False)
    assert ranking.marks == ["", "", ""] and ranking.status == "equal"

