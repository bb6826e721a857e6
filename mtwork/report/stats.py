"""Statistics over seeds for the report: mean, sample std, Student-t interval, Welch's t-test, ranks.

Every table cell aggregates one quantity over the seeds of a row (one value per seed):
* mean and sample standard deviation (ddof = 1; undefined with one seed);
* the 95 % interval of the mean, mean ± t_{0.975, n-1} · std / sqrt(n) (Student t; none with n < 2);
* per ranked column, marks that say which differences exceed the seed noise: Welch's two-sided
  t-test at the 5 % level between two rows' seed values (unequal variances, Welch-Satterthwaite
  degrees of freedom), from their mean, std and n.

The Student-t distribution comes from ``scipy.special`` (``stdtr`` / ``stdtrit``: the CDF and its inverse
for real degrees of freedom, which Welch's test needs); it is imported on first use so that importing
the report does not load it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95  # two-sided coverage of the interval over seeds
ALPHA = 0.05  # level of Welch's test behind every mark

# Marks of a ranked cell (also the values of the CSV's *_mark columns).
BEST = "best"  # better than every other row beyond seed noise
SECOND = "second"  # best is marked BEST, and this row is better than every row below it beyond seed noise
TIED = "tied_best"  # cannot be told apart from the best (p >= ALPHA); these rows share rank 1


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t critical value t_{(1+confidence)/2, df} (df > 0; e.g. 12.706 for df = 1)."""
    from scipy.special import stdtrit

    if not df > 0:
        raise ValueError(f"t_quantile: degrees of freedom must be > 0, got {df}")
    return float(stdtrit(df, 0.5 + confidence / 2))


def summarize(frame: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Aggregate ``frame[value]`` over the lines of each ``by`` group (one line per seed).

    Returns one line per group (index: ``by``) with columns ``mean``, ``std`` (ddof = 1; NaN with n < 2),
    ``n`` (seeds with a value), ``undefined`` (seeds whose value is NaN: then mean, std and the interval
    are NaN too, since a mean over the remaining seeds would not be comparable with the other rows),
    ``ci_low``, ``ci_high`` (the 95 % Student-t interval of the mean; NaN with n < 2).
    """
    grouped = frame.groupby(list(by), sort=False, dropna=False)[value]
    out = grouped.agg(mean="mean", std="std", n="count", lines="size")
    out["undefined"] = out.pop("lines") - out["n"]
    bad = out["undefined"] > 0
    out.loc[bad, ["mean", "std"]] = np.nan
    n = out["n"].to_numpy(dtype=float)
    half = np.full(len(out), np.nan)
    several = n >= 2
    if several.any():
        from scipy.special import stdtrit

        half[several] = stdtrit(n[several] - 1, 0.5 + CONFIDENCE / 2) * out["std"].to_numpy()[several] / np.sqrt(n[several])
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    out["n"] = out["n"].astype(int)
    return out


def welch_p(mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int) -> float:
    """Two-sided p-value of Welch's t-test for equal means, from each sample's mean, std (ddof 1) and size.

    NaN when a sample has fewer than 2 values (no estimate of its noise). When both samples have zero
    spread the difference is deterministic: p = 0 if the means differ, 1 if they are equal.
    """
    if n1 < 2 or n2 < 2:
        return math.nan
    v1, v2 = std1 ** 2 / n1, std2 ** 2 / n2
    if v1 + v2 == 0:
        return 0.0 if mean1 != mean2 else 1.0
    from scipy.special import stdtr

    t = (mean1 - mean2) / math.sqrt(v1 + v2)
    # Welch-Satterthwaite degrees of freedom
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    return float(2 * stdtr(df, -abs(t)))


@dataclass(frozen=True)
class Sample:
    """One row's aggregate in one column: mean, std (ddof 1, NaN when n < 2) and n seeds."""

    mean: float
    std: float
    n: int


def exceeds_noise(a: Sample, b: Sample, alpha: float = ALPHA) -> bool:
    """True when the means of ``a`` and ``b`` differ by Welch's two-sided test at level ``alpha``.

    Rows with fewer than two seeds never do: their noise is unknown.
    """
    p = welch_p(a.mean, a.std, a.n, b.mean, b.std, b.n)
    return not math.isnan(p) and p < alpha


@dataclass
class Ranking:
    """Marks of one ranked column group, and what they say (for the table's signal note)."""

    marks: List[str]  # per input sample: BEST, SECOND, TIED or ""
    means: List[float]  # per input sample: its mean (NaN where not ranked)
    status: str  # "one_seed" | "single_row" | "equal" | "none" | "best" | "tied"
    best: Optional[int] = None  # index of the best mean
    second: Optional[int] = None  # index of the underlined runner-up
    tied: Sequence[int] = ()  # indices sharing rank 1 (best included) when status == "tied"
    below: int = 0  # rows below rank 1 beyond seed noise


def rank(samples: Sequence[Optional[Sample]], higher: bool, alpha: float = ALPHA) -> Ranking:
    """Marks for one column (one rank group): which rows are best beyond seed noise.

    ``samples``: one per row, None (or a NaN mean) for rows not ranked. Rows are ordered by mean in the
    better direction. The best is BEST when Welch's test separates it from every other row; otherwise the
    best and the rows it cannot be told apart from are TIED (shared rank 1), unless that is every row, in
    which case nothing is marked (status "none": no difference exceeds the seed noise). The runner-up is
    SECOND only when the best is BEST and the runner-up is separated from every row below it. With no
    row of two or more seeds nothing is marked (status "one_seed").
    """
    marks = [""] * len(samples)
    means = [math.nan if s is None else s.mean for s in samples]
    idx = [i for i, m in enumerate(means) if not math.isnan(m)]
    if len(idx) < 2:
        return Ranking(marks, means, "single_row")
    if all(samples[i].n < 2 for i in idx):
        return Ranking(marks, means, "one_seed")
    if len({means[i] for i in idx}) == 1 and all(samples[i].n >= 2 and samples[i].std == 0 for i in idx):
        return Ranking(marks, means, "equal", best=idx[0])
    order = sorted(idx, key=lambda i: samples[i].mean, reverse=higher)
    best = order[0]
    tied = [best] + [i for i in order[1:] if not exceeds_noise(samples[best], samples[i], alpha)]
    if len(tied) == len(order):
        return Ranking(marks, means, "none", best=best)
    if len(tied) > 1:
        for i in tied:
            marks[i] = TIED
        return Ranking(marks, means, "tied", best=best, tied=tuple(tied), below=len(order) - len(tied))
    marks[best] = BEST
    rest = order[1:]
    second = None
    if len(rest) >= 2 and all(exceeds_noise(samples[rest[0]], samples[j], alpha) for j in rest[1:]):
        second = rest[0]
        marks[second] = SECOND
    return Ranking(marks, means, "best", best=best, second=second, below=len(rest))
