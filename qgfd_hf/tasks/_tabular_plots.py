# coding=utf-8
"""The tabular task's PNGs, what a person looks at: `save_marginals_png` (per-column histograms and
frequency bars, real beside sampled) and `save_correlations_png` (the numeric columns' correlation
matrices, real, sampled and their difference). Used by `qgfd_hf/tasks/tabular.py` (a module whose
name starts with `_` is not a modality)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def save_marginals_png(samples, real, columns: Sequence[dict], path: str, ncols: int = 6) -> str:
    """Per-column histograms (numeric) and frequency bars (categorical) of the sampled rows,
    beside the real rows' when `real` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(columns)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.0 * nrows), squeeze=False)
    for ax, c in zip(axes.flat, columns):
        name = c["name"]
        if c["kind"] == "category":
            cats = [str(v) for v in c["categories"]]
            pos = np.arange(len(cats))
            freq = lambda df: df[name].astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
            width = 0.4 if real is not None else 0.8
            if real is not None:
                ax.bar(pos - width / 2, freq(real), width, color="tab:blue", label="real")
            ax.bar(pos + (width / 2 if real is not None else 0), freq(samples), width, color="tab:orange", label="sampled")
            ax.set_xticks(pos)
            ax.set_xticklabels(cats, fontsize=6, rotation=30 if len(cats) > 3 else 0)
        else:
            values = [samples[name].to_numpy(float)] + ([real[name].to_numpy(float)] if real is not None else [])
            lo, hi = min(v.min() for v in values), max(v.max() for v in values)
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            if real is not None:
                ax.hist(real[name].to_numpy(float), bins=bins, density=True, color="tab:blue", alpha=0.5, label="real")
            ax.hist(samples[name].to_numpy(float), bins=bins, density=True, color="tab:orange", alpha=0.5, label="sampled")
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
        ax.set_title(name, fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    what = f"{len(samples)} sampled rows" + (f" (orange) vs {len(real)} real training rows (blue)" if real is not None else "")
    fig.suptitle(f"Marginals: {what}", fontsize=9)
    fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_correlations_png(samples, real, columns: Sequence[dict], path: str) -> str:
    """The numeric columns' correlation matrices: real, sampled, and their difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [c["name"] for c in columns if c["kind"] != "category"]
    mats = [("real training rows", real[numeric].corr().to_numpy()), ("sampled rows", samples[numeric].corr().to_numpy())]
    mats.append(("sampled - real", mats[1][1] - mats[0][1]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    for i, (ax, (title, m)) in enumerate(zip(axes, mats)):
        im = ax.imshow(np.nan_to_num(m), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title + (f" (mean |diff| {np.nanmean(np.abs(m)):.3f})" if i == 2 else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks(range(len(numeric)) if i == 0 else [])
        if i == 0:
            ax.set_yticklabels(numeric, fontsize=5)
    fig.suptitle("Correlations of the numeric columns", fontsize=10)
    fig.colorbar(im, ax=list(axes), fraction=0.015)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
