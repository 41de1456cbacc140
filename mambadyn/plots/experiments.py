"""Figures of the experiments: training curves by eigen mode or reordering variant, spectra after training,
gradient shares by position. Each takes the experiment's results dict (so a saved results.json redraws)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .curves import mean_band  # noqa: E402


def _grid_and_legend(axes, fontsize=None) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=fontsize)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


MODE_COLORS = {"free": "0.4", "positive": "tab:blue", "mixed": "tab:green", "negative": "tab:red"}


def scenario_curves(results: dict, path: str | Path) -> Path:
    """Training loss, validation loss (and accuracy, for tasks that have one) against step, per eigen mode."""
    panels = ["train_curves", "curves"] + (["acc_curves"] if "acc_curves" in next(iter(results["modes"].values())) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for mode, r in results["modes"].items():
        for ax, key in zip(axes, panels):  # the noisy training loss is smoothed
            mean_band(ax, r[key].values(), mode, color=MODE_COLORS.get(mode), smooth=key == "train_curves")
    axes[0].set(title="training loss (smoothed; band = min..max over seeds)", xlabel="step", ylabel="nats/token")
    axes[1].set(title="validation loss", xlabel="step", ylabel="nats/token")
    if len(panels) > 2:
        axes[2].set(title="validation accuracy on the asked positions", xlabel="step", ylabel="accuracy")
    _grid_and_legend(axes)
    return _save(fig, path)


def scenario_spectra(results: dict, path: str | Path) -> Path:
    """The real parts of S_C^T S_B's eigenvalues per layer after training (seed 0), one panel per mode."""
    modes = list(results["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(3.2 * len(modes), 3.2), sharey=False)
    for ax, mode in zip(np.atleast_1d(axes), modes):
        for layer, ev in enumerate(results["modes"][mode]["spectrum_seed0"]):
            ax.scatter(np.full(len(ev), layer), ev, s=8, color=MODE_COLORS.get(mode))
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set(title=f"{mode}", xlabel="layer", ylabel="Re eig(S_C^T S_B)")
    fig.suptitle("spectrum of S_C^T S_B per layer after training (seed 0)")
    return _save(fig, path)


def reorder_curves(results: dict, path: str | Path) -> Path:
    """Accuracy and training loss against epoch, per reordering variant (band = min..max over seeds)."""
    watch = "validation" if "val_acc" in next(iter(results["variants"].values())) else "test"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for v, r in results["variants"].items():
        mean_band(axes[0], r["curves"].values(), v, markers=True)
        mean_band(axes[1], r.get("train_curves", {}).values(), v, smooth=True)
    order = "causal" if results.get("causal") else "bidirectional"
    axes[0].set(xlabel="epoch", ylabel=f"{watch} accuracy",
                title=f"Fashion-MNIST, {results.get('seq_len', '?')} tokens, {order} (band = min..max)")
    axes[1].set(xlabel="epoch", ylabel="training loss (smoothed)", title="training loss")
    _grid_and_legend(axes, fontsize=8)
    return _save(fig, path)


def token_share_curves(results: dict, path: str | Path) -> Path:
    """The mean gradient share by position at layer 0, trained and at initialisation, per mode."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode, r in results["modes"].items():
        for which, style in (("trained", "-"), ("init", ":")):
            curves = np.array([v["mean_share_by_position"] for v in r["per_seed"][which].values()])
            ax.plot(curves.mean(0), style, label=f"{mode}, {which} (n={len(curves)})")
    ax.set(xlabel="position", ylabel="mean gradient share at layer 0", yscale="log",
           title="Where the loss gradient enters the stack (equal shares: 1/L)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
