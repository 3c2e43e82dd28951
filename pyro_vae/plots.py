"""Plots: tensors in, PNG out (layer 7: imports only errors and files). What to draw is worked
out from models in the runs layer (runs/figures.py); here it is only drawn."""

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .errors import UserError  # noqa: E402
from .files import atomic_write  # noqa: E402


def grid_canvas(images, shape, ncol, gap=0.0):
    """(N, H*W) images in [0, 1] tiled into one array, `ncol` per row, a 1-pixel gap between
    (white by default; `gap` is its grey level, 1 = black, shown with cmap gray_r)."""
    images = images.detach().cpu().reshape(-1, *shape).numpy()
    nrow = -(-len(images) // ncol)
    h, w = shape
    canvas = np.full((nrow * (h + 1) - 1, ncol * (w + 1) - 1), float(gap))
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return canvas


def image_grid(images, shape, path, ncol, title=None, row_labels=None, gap=0.0):
    """Save (N, H*W) images in [0, 1] as a grid with `ncol` columns; rows may carry labels."""
    canvas = grid_canvas(images, shape, ncol, gap)
    nrow = -(-len(images) // ncol)
    h, w = shape
    fig, ax = plt.subplots(figsize=(ncol * 0.5 + 1.5, nrow * 0.5 + 0.9))  # half an inch per image
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(nrow)], row_labels)
        ax.tick_params(left=False)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def elbo_curves(history, path):
    """Training and validation ELBO per epoch from a run's metrics."""
    epochs = [m["epoch"] for m in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    train, val = [m["train_elbo"] for m in history], [m["val_elbo"] for m in history]
    ax.plot(epochs, train, label="train (training objective)")
    ax.plot(epochs, val, label="validation ELBO")
    if len(history) > 2:  # the first epoch's low ELBO would squash the rest: start the axis after it
        later = train[1:] + val[1:]
        low, high = min(later), max(later)
        ax.set_ylim(low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
        if min(train[0], val[0]) < low:
            ax.annotate(f"epoch 1: {min(train[0], val[0]):.1f} (off the axis)", xy=(0.02, 0.03),
                        xycoords="axes fraction", fontsize=8, color="0.35")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("training and validation ELBO per epoch", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)


def _codes(ax, fig, z, labels, classes, xlabel, ylabel, title, s=4, fontsize=9, class_fontsize=None):
    """Scatter 2-D codes coloured by label on `ax`, with a colour bar naming the classes."""
    sc = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=s, vmin=-0.5, vmax=9.5)
    cbar = fig.colorbar(sc, ax=ax, ticks=range(len(classes)))
    cbar.ax.set_yticklabels(classes, fontsize=class_fontsize)
    cbar.set_label("true class", fontsize=class_fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=fontsize)


def latent_scatter(z, labels, classes, path, title):
    """(N, Z) latent means coloured by label; projected on their first two principal components
    when Z > 2."""
    z = torch.as_tensor(z).cpu()
    if z.shape[1] > 2:
        centred = z - z.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        z2, axes = centred @ v[:2].T, ("principal component 1 of E[z|x]", "principal component 2")
    else:
        z2, axes = z, ("z[0]", "z[1]")
    fig, ax = plt.subplots(figsize=(6, 5))
    _codes(ax, fig, z2, torch.as_tensor(labels).cpu(), classes, *axes, title)
    return save(fig, path)


def codes_and_draws(columns, classes, shape, path):
    """One column per entry of `columns` (title -> (codes (N, 2), labels (N,), decoded images)):
    the codes coloured by label over a dashed circle at 2 sd of N(0, I) (top), and the images
    decoded from z ~ N(0, I) (bottom)."""
    fig, axes = plt.subplots(2, len(columns), figsize=(5.2 * len(columns), 10), squeeze=False)
    for col, (name, (z, labels, images)) in enumerate(columns.items()):
        ax = axes[0, col]
        _codes(ax, fig, z, labels, classes, "z[0]", "z[1]", f"{name}: test codes E[z|x] (dashed: 2 sd of N(0, I))",
               s=3, fontsize=10, class_fontsize=7)
        ax.add_patch(plt.Circle((0, 0), 2, fill=False, ls="--", color="k", lw=1))
        ax.set_aspect("equal", adjustable="datalim")
        ax = axes[1, col]
        ax.imshow(grid_canvas(images, shape, int(np.sqrt(len(images)))), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{name}: decoded z ~ N(0, I)", fontsize=10)
        ax.axis("off")
    return save(fig, path, dpi=100)


def labelled_panels(panels, classes, shape, per_class, path):
    """Image grids side by side (title -> (n_classes * per_class, H*W) images in class order),
    one row per class, rows labelled with the class names."""
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (per_class * 0.42 + 0.4) + 1.0,
                                                       len(classes) * 0.42 + 0.8), squeeze=False)
    h, w = shape
    for ax, (title, images) in zip(axes[0], panels.items()):
        ax.imshow(grid_canvas(images, shape, per_class, gap=0.25), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(classes))], classes, fontsize=8)
        ax.tick_params(left=False)
        ax.set_title(title, fontsize=10)
    return save(fig, path, pad=1.2)


FORMATS = ("png", "pdf", "svg")


def save(fig, path, dpi=110, pad=None):
    """Lay out, write (atomically: a link at `path` is replaced, not followed) and close a
    figure; the format is the path's suffix. Returns the path."""
    path = Path(path)
    try:
        fig.tight_layout(**({"pad": pad} if pad else {}))
        fmt = path.suffix[1:].lower()
        if fmt not in FORMATS:
            raise UserError(f"cannot write {path}: a figure's name ends in {', '.join('.' + f for f in FORMATS)}")
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)
    return path
