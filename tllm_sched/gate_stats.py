"""tllm_sched/gate_stats.py: the statistics of `tllm-sched gate` (numpy only, no scipy).

A time-like figure (thread CPU time, wall-clock, a ratio to the reference backend) is judged on
two samples of per-round values, the baseline's and this run's:

  - significance: the one-sided Mann-Whitney U test, "this run's rounds tend to be larger"
    (exact distribution without ties for up to 60 values in all, else the normal approximation
    with tie and continuity corrections), as pyperf's compare_to asks a test before calling a
    difference;
  - effect size: the Hodges-Lehmann estimate of the ratio new / baseline, exp(median over all
    pairs of log(new_i) - log(base_j)), the shift estimate that belongs to the U test and is
    robust to a few disturbed rounds.

`judge` calls a regression only when both say so: significant at `alpha` and slower by more
than `max_growth`. Significance alone would fail on any small systematic drift of a shared
machine; the effect size alone would fail on a few slow rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Judgement", "hodges_lehmann_ratio", "judge", "mann_whitney_greater"]

_EXACT_MAX = 60  # exact U distribution up to this many values in all (int64 counts stay exact)


def _exact_u_counts(m: int, n: int) -> np.ndarray:
    """Number of arrangements giving each U = 0..m*n for samples of sizes m and n without ties:
    the coefficients of the Gaussian binomial [m+n choose m]_q, built as
    prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), every partial product being integral."""
    c = np.zeros(m * n + 1, dtype=np.int64)
    c[0] = 1
    for i in range(1, m + 1):
        a = n + i
        c[a:] = c[a:] - c[:-a].copy()  # times (1 - q^a)
        for r in range(i):  # divided by (1 - q^i): a running sum with stride i
            c[r::i] = np.cumsum(c[r::i])
    return c


def mann_whitney_greater(new: Sequence[float], base: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that `new` tends to be larger than `base`."""
    x, y = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    m, n = x.size, y.size
    if m == 0 or n == 0:
        raise ValueError("mann_whitney_greater needs two non-empty samples")
    diff = x[:, None] - y[None, :]
    u = float((diff > 0).sum() + 0.5 * (diff == 0).sum())
    both = np.concatenate([x, y])
    _, ties = np.unique(both, return_counts=True)
    if m + n <= _EXACT_MAX and ties.max() == 1:
        counts = _exact_u_counts(m, n)
        return float(counts[int(u):].sum() / counts.sum())
    total = m + n
    tie_term = float((ties.astype(float) ** 3 - ties).sum()) / (total * (total - 1))
    var = m * n / 12.0 * ((total + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence either way
        return 1.0
    z = (u - m * n / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def hodges_lehmann_ratio(new: Sequence[float], base: Sequence[float]) -> float:
    """exp(median of log(new_i) - log(base_j) over all pairs): the typical factor new / base."""
    x, y = np.log(np.asarray(new, dtype=float)), np.log(np.asarray(base, dtype=float))
    return float(np.exp(np.median(x[:, None] - y[None, :])))


@dataclass(frozen=True)
class Judgement:
    factor: float  # Hodges-Lehmann estimate of new / base
    p_value: float  # one-sided: new larger than base
    regression: bool


def judge(new: Sequence[float], base: Sequence[float], max_growth: float, alpha: float) -> Judgement:
    """A regression when the new rounds are significantly larger (p < alpha) AND typically more
    than (1 + max_growth) times the baseline's."""
    factor = hodges_lehmann_ratio(new, base)
    p = mann_whitney_greater(new, base)
    return Judgement(factor, p, p < alpha and factor > 1.0 + max_growth)
