"""The report's figures as PNG bytes (matplotlib's Agg canvas directly: no pyplot, no global
backend switch); `report` writes them. No I/O.

- `outputs_png`: a grid of images and output distributions with their entropies (thesis
  Figures 6.1-6.3).
- `heatmaps_png`: heatmap panels (a sweep's grid, the attack matrix).
- `curves_png`: panels of curves with error bars (the attacker's data budget).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from ast_jax.results.statistics import entropies


def outputs_png(images, outputs: Mapping[str, np.ndarray], labels, class_names=None, *,
                 log_base: float | None = None, dpi: int = 100) -> bytes:
    """Grid of images and output distributions (thesis Figures 6.1-6.3), as PNG bytes.

    - `images`: (n, H, W, C) floats in [0, 1] (clipped; uint8 is divided by 255), C = 1 (grey)
      or 3 (RGB).
    - `outputs`: column name -> (n, num_classes) probability arrays, e.g. {"base": ...,
      "base (adversarial)": ..., "nasty": ..., "stt": ..., "ast": ...}; use `probabilities`
      to soften logits first.
    - `labels`: (n,) true labels; `class_names`: optional names indexed by label.

    One row per image: the image with its label, then one bar chart per output column with the
    true class's bar in red (and a red triangle under it) and the entropy (natural log unless `log_base`) written under it.
    Y axes are scaled per panel (0 to the panel's largest probability) so near-uniform outputs
    still show their shape. With up to 20 classes the bars carry class ticks (names if given);
    with more classes the bars have no tick labels. Returns the PNG's bytes.
    """
    from matplotlib.figure import Figure  # lazy: only the plot needs matplotlib

    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (n, H, W, 1 or 3), got {imgs.shape}")
    imgs = imgs.astype(np.float64) / 255.0 if imgs.dtype == np.uint8 else imgs.astype(np.float64)
    imgs = np.clip(np.nan_to_num(imgs), 0.0, 1.0)
    n = imgs.shape[0]
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} images")
    if n == 0:
        raise ValueError("no images to plot")
    cols = {}
    for name, probs in outputs.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != n:
            raise ValueError(f"outputs[{name!r}] must have shape ({n}, num_classes), got {probs.shape}")
        if not np.isfinite(probs).all() or (probs < 0).any():
            raise ValueError(f"outputs[{name!r}] must hold finite, non-negative probabilities")
        cols[str(name)] = probs

    def label_text(c: int) -> str:
        if class_names is not None and 0 <= c < len(class_names):
            return f"{c}: {class_names[c]}"
        return str(c)

    ncols = 1 + len(cols)
    fig = Figure(figsize=(1.9 + 2.7 * len(cols), 2.05 * n + 0.4), dpi=dpi)
    axes = fig.subplots(n, ncols, squeeze=False, gridspec_kw={"width_ratios": [0.7] + [1.0] * len(cols)})
    for i in range(n):
        ax = axes[i, 0]
        if imgs.shape[-1] == 1:
            ax.imshow(imgs[i, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(imgs[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"label {label_text(int(y[i]))}", fontsize=8)
        if i == 0:
            ax.set_title("image", fontsize=9, fontweight="bold")
        for j, (name, probs) in enumerate(cols.items(), start=1):
            ax = axes[i, j]
            p = probs[i]
            k = p.shape[0]
            colors = np.full(k, "#4c72b0", dtype=object)
            if 0 <= y[i] < k:
                colors[y[i]] = "#d62728"
            ax.bar(np.arange(k), p, width=0.8 if k <= 20 else 1.0, color=list(colors), linewidth=0)
            top = float(p.max()) if p.size else 1.0
            ax.set_ylim(0.0, top * 1.08 if top > 0 else 1.0)
            ax.set_xlim(-0.6, k - 0.4)
            ax.tick_params(axis="y", labelsize=6, length=2, pad=1)
            if 0 <= y[i] < k:  # marker under the true class: visible even with 100+ thin bars
                ax.plot([y[i]], [0.0], marker="^", markersize=5, color="#d62728", clip_on=False,
                        transform=ax.get_xaxis_transform(), linestyle="none", zorder=5)
            if k <= 20:
                ax.set_xticks(np.arange(k))
                if class_names is not None and len(class_names) >= k:
                    ax.set_xticklabels([str(c) for c in class_names[:k]], rotation=90, fontsize=5)
                else:
                    ax.tick_params(axis="x", labelsize=6, length=2, pad=1)
            else:
                ax.set_xticks([])
            h = float(entropies(p[None, :], log_base=log_base)[0])
            unit = "" if log_base is None else f" (log base {log_base:g})"
            ax.set_xlabel(f"H = {h:.4f}{unit}", fontsize=8)
            if i == 0:
                ax.set_title(name, fontsize=9, fontweight="bold")
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def heatmaps_png(panels: Sequence[Mapping], *, columns: int = 2, dpi: int = 100) -> bytes:
    """PNG bytes of heatmaps, one panel per entry of `panels`: {'title', 'values' (rows, cols), 'rows',
    'cols' (tick labels), 'xlabel', 'ylabel', 'label' (colour bar)}; each cell prints its value
    (NaN: no value). Returns the PNG's bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, len(panels))
    lines = -(-len(panels) // columns)
    width = max(max(len(panel["cols"]) for panel in panels) * 1.1 + 3, 4)
    height = max(max(len(panel["rows"]) for panel in panels) * 0.5 + 1.8, 3)
    figure = Figure(figsize=(width * columns, height * lines))
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        values = np.asarray(panel["values"], np.float64)
        image = axes.imshow(values, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(panel["cols"])), [str(c) for c in panel["cols"]], rotation=30, ha="right")
        axes.set_yticks(range(len(panel["rows"])), [str(r) for r in panel["rows"]])
        axes.set_xlabel(panel.get("xlabel", ""))
        axes.set_ylabel(panel.get("ylabel", ""))
        axes.set_title(panel.get("title", ""), fontsize=9)
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(j, i, f"{value:.1f}", ha="center", va="center", color="w", fontsize=8)
        figure.colorbar(image, ax=axes, label=panel.get("label", ""))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def curves_png(panels: Sequence[Mapping], *, columns: int = 2, dpi: int = 100) -> bytes:
    """PNG bytes of line plots, one panel per entry of `panels`: {'title', 'xlabel', 'ylabel',
    'xlog' (bool), 'curves': [{'label', 'x', 'y', 'error'}]}; `error` is each point's half-width
    (None: no bar), a horizontal line at 0 when the panel crosses it. Returns the PNG's bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, len(panels))
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(5.5 * columns, 4 * lines))
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        for curve in panel["curves"]:
            error = curve.get("error")
            error = None if error is None or any(e is None for e in error) else np.asarray(error, np.float64)
            axes.errorbar(curve["x"], curve["y"], yerr=error, marker="o", capsize=3, label=curve["label"])
        low, high = axes.get_ylim()
        if low < 0 < high:
            axes.axhline(0.0, color="grey", linewidth=0.8)
        if panel.get("xlog"):
            axes.set_xscale("log")
        axes.set_xlabel(panel.get("xlabel", ""))
        axes.set_ylabel(panel.get("ylabel", ""))
        axes.set_title(panel.get("title", ""), fontsize=9)
        axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
