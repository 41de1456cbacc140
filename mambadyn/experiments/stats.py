"""Summary statistics for a handful of seeds: mean, sample std and a Student-t 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass
class Summary:
    n: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float

    def fmt(self, digits: int = 3) -> str:
        return (f"{self.mean:.{digits}f} ± {self.std:.{digits}f} "
                f"[{self.ci95_low:.{digits}f}, {self.ci95_high:.{digits}f}]")


def summarize(values) -> Summary:
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("summarize: no values")
    mean = sum(v) / n
    if n == 1:
        return Summary(1, mean, float("nan"), float("nan"), float("nan"))
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value (nan with fewer than two values in either group)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
