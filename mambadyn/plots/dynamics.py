"""Figures of token dynamics: trajectories per scenario, 2-D phase portraits, the phase diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..dynamics.simulation import Trajectory  # noqa: E402


def _token_colors(L):
    return plt.cm.viridis(np.linspace(0, 0.9, L))


def trajectories(trajs: dict[str, Trajectory], path: str | Path, system_index: int = 0) -> Path:
    """|x_l(t)| against t on log axes, one panel per scenario; crosses mark blow-up times."""
    fig, axes = plt.subplots(1, len(trajs), figsize=(5 * len(trajs), 4), squeeze=False)
    for ax, (name, tr) in zip(axes[0], trajs.items()):
        norms = tr.norms()[:, system_index].numpy()
        t = tr.t.numpy()
        L = norms.shape[1]
        for l, c in zip(range(L), _token_colors(L)):
            ax.plot(t[1:], norms[1:, l], color=c, lw=1.2, label=f"token {l + 1}" if l in (0, L - 1) else None)
            T = tr.blowup_time[system_index, l].item()
            if np.isfinite(T) and tr.primary[system_index, l]:
                ax.axvline(T, color=c, ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t (continuous depth)")
        ax.set_ylabel("|x_l(t)|")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def portraits(trajs: dict[str, Trajectory], path: str | Path) -> Path:
    """2-D tokens moving in the plane, one panel per case; axes are sign(x) log(1 + |x|) so that
    diverging and converging tokens show on one scale. Dots mark the start."""
    fig, axes = plt.subplots(1, len(trajs), figsize=(5 * len(trajs), 5), squeeze=False)
    f = lambda v: np.sign(v) * np.log1p(np.abs(v))  # noqa: E731
    for ax, (name, tr) in zip(axes[0], trajs.items()):
        x = tr.x[:, 0].numpy()  # (T, L, 2)
        valid = tr.valid[:, 0].numpy()
        L = x.shape[1]
        for l, c in zip(range(L), _token_colors(L)):
            xv = x[valid[:, l], l]
            ax.plot(f(xv[:, 0]), f(xv[:, 1]), color=c, lw=1)
            ax.plot(f(x[0, l, 0]), f(x[0, l, 1]), "o", color=c, ms=4)
            ax.plot(f(xv[-1, 0]), f(xv[-1, 1]), ">", color=c, ms=5)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("sign(x1) log(1+|x1|)")
        ax.set_ylabel("sign(x2) log(1+|x2|)")
        ax.set_aspect("equal", "datalim")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def phase_diagram(rows: list[dict], path: str | Path) -> Path:
    """Fraction of random systems that converge, by dimension D and number of positive eigenvalues."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    dims = sorted({r["D"] for r in rows})
    for ax, criterion, title in zip(axes, ("matrix", "symmetric"),
                                    ("eigenvalues of S_C^T S_B (real part)", "eigenvalues of its symmetric part")):
        grid = np.full((len(dims), max(dims) + 1), np.nan)
        counts = np.zeros_like(grid)
        for r in rows:
            if r["criterion"] == criterion:
                grid[dims.index(r["D"]), r["positive"]] = r["fraction"]
                counts[dims.index(r["D"]), r["positive"]] = r["systems"]
        im = ax.imshow(grid, origin="lower", cmap="RdYlBu", vmin=0, vmax=1, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, f"{grid[i, j]:.2f}\nn={int(counts[i, j])}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(dims)), [str(d) for d in dims])
        ax.set_xlabel("number of positive eigenvalues")
        ax.set_ylabel("D")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes, label="fraction converging to 0")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
