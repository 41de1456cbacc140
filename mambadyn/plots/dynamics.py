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


def _token_colorbar(fig, axes, L):
    sm = plt.cm.ScalarMappable(cmap=matplotlib.colors.ListedColormap(_token_colors(L)),
                               norm=matplotlib.colors.Normalize(0.5, L + 0.5))
    bar = fig.colorbar(sm, ax=axes, fraction=0.025, pad=0.01, ticks=range(1, L + 1))
    bar.set_label("token index l")


def trajectories(trajs: dict[str, Trajectory], path: str | Path, system_index: int = 0) -> Path:
    """|x_l(t)| per scenario panel, coloured by token index. A panel where every nonzero token blows up is
    drawn against the time left, T*_l - t (log, time running right), with each token's T*_l in the legend,
    so the power law near the blow-up shows as a line; other panels against t."""
    fig, axes = plt.subplots(1, len(trajs), figsize=(5.2 * len(trajs), 4.6), squeeze=False)
    L = 1
    for ax, (name, tr) in zip(axes[0], trajs.items()):
        norms = tr.norms()[:, system_index].numpy()
        t = tr.t.numpy()
        L = norms.shape[1]
        ends = tr.blowup_time[system_index].numpy()
        moving = norms[0] > 0
        to_blowup = bool(np.isfinite(ends[moving]).all())
        for l, c in zip(range(L), _token_colors(L)):
            if to_blowup and np.isfinite(ends[l]):
                left = ends[l] - t[1:]
                keep = left > 0
                own = " (own)" if tr.primary[system_index, l] else ""
                ax.plot(left[keep], norms[1:, l][keep], color=c, lw=1.2,
                        label=f"T*_{l + 1} = {ends[l]:.4g}{own}" if L <= 10 else None)
            else:
                ax.plot(t[1:], norms[1:, l], color=c, lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if to_blowup:
            ref = np.logspace(-8, -1, 10)
            ax.plot(ref, 0.5 * ref ** (-1 / 3), "k--", lw=0.8, label="slope -1/3: (T* - t)^(-1/3)")
            ax.invert_xaxis()
            ax.set_xlabel("T*_l - t (time left before token l's solution ends)")
            ax.legend(fontsize=7, title="end times", title_fontsize=7)
        else:
            ax.set_xlabel("t (continuous depth)")
            for l, c in zip(range(L), _token_colors(L)):
                if np.isfinite(ends[l]):
                    ax.axvline(ends[l], color=c, ls=":", lw=0.8)
        ax.set_ylabel("|x_l|")
        ax.set_title(name, fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.97, 1))
    _token_colorbar(fig, axes[0].tolist(), L)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def portraits(trajs: dict[str, Trajectory], path: str | Path) -> Path:
    """2-D tokens moving in the plane, one panel per case; axes are sign(x) log(1 + |x|) so that
    diverging and converging tokens show on one scale. Circle: start; triangle: the last point reached;
    cross: the last point before the token's own blow-up; plus: the last point of a token whose solution
    ended with an earlier token's blow-up (its equation holds that token), where its own norm may be
    moderate."""
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(trajs), figsize=(5.4 * len(trajs), 5.4), squeeze=False)
    f = lambda v: np.sign(v) * np.log1p(np.abs(v))  # noqa: E731
    L = 1
    for ax, (name, tr) in zip(axes[0], trajs.items()):
        x = tr.x[:, 0].numpy()  # (T, L, 2)
        valid = tr.valid[:, 0].numpy()
        L = x.shape[1]
        for l, c in zip(range(L), _token_colors(L)):
            xv = x[valid[:, l], l]
            ax.plot(f(xv[:, 0]), f(xv[:, 1]), color=c, lw=1)
            ax.plot(f(x[0, l, 0]), f(x[0, l, 1]), "o", color=c, ms=4)
            end = ("x" if tr.primary[0, l] else "P") if tr.blew_up[0, l] else ">"
            ax.plot(f(xv[-1, 0]), f(xv[-1, 1]), end, color=c, ms=6)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("sign(x1) log(1+|x1|)")
        ax.set_ylabel("sign(x2) log(1+|x2|)")
        ax.set_aspect("equal", "datalim")
    handles = [Line2D([], [], marker=m, color="0.3", ls="", label=t) for m, t in
               (("o", "start"), (">", "last point reached"), ("x", "last output point before its own blow-up"),
                ("P", "ended by an earlier token's blow-up\n(its own norm may stay moderate)"))]
    axes[0][0].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0, 0.97, 1))
    _token_colorbar(fig, axes[0].tolist(), L)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def phase_diagram(rows: list[dict], path: str | Path) -> Path:
    """Fraction of random systems that converge, by dimension D and number of positive eigenvalues, for
    both criteria; each cell shows the fraction and the number of systems, the title L and the horizon."""
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
    if rows:
        fig.suptitle(f"random systems, L = {rows[0].get('L', '?')} tokens, horizon t = {rows[0].get('t_end', '?')}: "
                     "fraction in which every token converges", fontsize=10)
    fig.colorbar(im, ax=axes, label="fraction converging to 0")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
