"""Statistics for a handful of seeds: mean, sample std and a Student-t 95% interval; paired comparisons
of two arms over the seeds they share (the seeds are paired across arms: same data order, same init
draw), and Holm's correction over the comparisons of one claim."""

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
        return fmt_summary(self.__dict__, digits)


def fmt_summary(s: dict, digits: int = 3) -> str:
    """"mean ± std [95% CI]" of a ``Summary`` (or its dict); one value has no spread, and says so."""
    if s["n"] < 2:
        return f"{s['mean']:.{digits}f} (n = {s['n']}: no spread or interval)"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"


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


@dataclass
class Paired:
    """arm a minus arm b over ``n`` shared seeds: mean difference with a Student-t 95% interval, the
    paired t-test's two-sided p and, where ``holm`` has been applied, the adjusted p."""

    n: int
    mean_diff: float
    ci95_low: float
    ci95_high: float
    p: float
    p_holm: float = float("nan")


def one_sample(values) -> Paired:
    """The mean of ``values`` against 0: Student-t 95% interval and two-sided one-sample t-test. Fewer than
    two values give NaN intervals and p."""
    v = [float(x) for x in values]
    s = summarize(v) if v else Summary(0, float("nan"), float("nan"), float("nan"), float("nan"))
    p = float(stats.ttest_1samp(v, 0.0).pvalue) if len(v) >= 2 else float("nan")
    return Paired(len(v), s.mean, s.ci95_low, s.ci95_high, p)


def paired(a: dict, b: dict) -> Paired:
    """Compare arm a with arm b seed by seed: ``a``, ``b`` map seed -> value; the paired t-test is the
    one-sample test of the differences. Seeds missing from either arm are left out."""
    return one_sample(float(a[k]) - float(b[k]) for k in a if k in b)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of one family of comparisons (NaN stays NaN and is
    not counted): the k-th smallest of m is multiplied by m - k + 1, then made monotone and capped at 1."""
    idx = sorted((i for i, p in enumerate(pvalues) if p == p), key=lambda i: pvalues[i])
    m, out, running = len(idx), [float("nan")] * len(pvalues), 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


def compare_to(arms: dict[str, dict], reference: str) -> dict[str, Paired]:
    """Every arm against ``reference`` (arm -> {seed: value}), paired over seeds, Holm-adjusted as one family."""
    others = [a for a in arms if a != reference]
    res = {a: paired(arms[a], arms[reference]) for a in others}
    for a, p in zip(others, holm([res[a].p for a in others])):
        res[a].p_holm = p
    return res
