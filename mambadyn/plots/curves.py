"""Training curves over seeds: the mean with a min..max band."""

from __future__ import annotations

import numpy as np


def mean_band(ax, curves, label: str, color=None, smooth: bool = False, markers: bool = False) -> None:
    """Draw the mean over seeds of ``curves`` (each a sequence of (x, y), cut to the shortest) with a
    min..max band. ``smooth``: a running mean over about 1/30 of the points (only its full windows);
    ``markers``: dots where there are fewer than 12 points."""
    curves = [np.array(c) for c in curves if len(c)]
    if not curves:
        return
    n = min(len(c) for c in curves)
    x, vals = curves[0][:n, 0], np.stack([c[:n, 1] for c in curves])
    k = max(1, n // 30) if smooth else 1
    if k > 1:
        vals = np.stack([np.convolve(v, np.ones(k) / k, mode="valid") for v in vals])
        x = x[k - 1 :]
    line, = ax.plot(x, vals.mean(0), marker="o" if markers and n < 12 else None, color=color,
                    label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        ax.fill_between(x, vals.min(0), vals.max(0), alpha=0.15, color=line.get_color())
