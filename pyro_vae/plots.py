"""Plots: tensors in, PNG out (layer 7: imports only errors and files). What to draw is worked
out from models in the runs layer (runs/figures.py); here it is only drawn."""

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .errors import UserError, counted  # noqa: E402
from .files import atomic_write  # noqa: E402


def grid_canvas(images, shape, ncol, gap=0.0):
    """(N, prod(shape)) images in [0, 1] tiled into one array, `ncol` per row, a 1-pixel gap
    between (white by default; `gap` is its grey level, 1 = black, shown with cmap gray_r).
    Grey images (H, W) or (1, H, W) give a 2-D canvas; colour ones (3, H, W) an (., ., 3) one,
    drawn in their own colours, with a white gap."""
    shape = tuple(shape)
    colour = len(shape) == 3 and shape[0] == 3
    images = images.detach().cpu().reshape(-1, *shape).numpy()
    if colour:
        images = images.transpose(0, 2, 3, 1)
    elif len(shape) == 3:
        images = images.reshape(len(images), *shape[-2:])
    nrow = -(-len(images) // ncol)
    h, w = shape[-2:]
    canvas = np.full((nrow * (h + 1) - 1, ncol * (w + 1) - 1) + ((3,) if colour else ()),
                     1.0 if colour else float(gap))
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return canvas


def show_canvas(ax, canvas):
    """Grey canvases dark on white (cmap gray_r), colour ones as they are."""
    if canvas.ndim == 3:
        ax.imshow(np.clip(canvas, 0, 1), interpolation="nearest")
    else:
        ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")


def image_grid(images, shape, path, ncol, title=None, row_labels=None, gap=0.0):
    """Save (N, prod(shape)) images in [0, 1] as a grid with `ncol` columns; rows may carry labels."""
    canvas = grid_canvas(images, shape, ncol, gap)
    nrow = -(-len(images) // ncol)
    h, w = tuple(shape)[-2:]
    fig, ax = plt.subplots(figsize=(ncol * 0.5 + 1.5, nrow * 0.5 + 0.9))  # half an inch per image
    show_canvas(ax, canvas)
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(nrow)], row_labels)
        ax.tick_params(left=False)
    else:
        ax.set_yticks([])
    if title:  # wrapped to the figure's width (about 12 characters an inch at this size)
        ax.set_title(textwrap.fill(title, max(30, int(fig.get_size_inches()[0] * 11))), fontsize=10)
    return save(fig, path)


def elbo_curves(history, path, select="val_elbo"):
    """Training and validation ELBO per epoch from a run's metrics (and the validation IWAE bound
    where the run has one), with the best epoch by `select`, the metric model selection reads."""
    epochs = [m["epoch"] for m in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lines = {"train_elbo": "train (training objective)", "val_elbo": "validation ELBO",
             "val_bound": "validation IWAE bound"}
    curves = {k: [m[k] for m in history] for k in lines if all(k in m for m in history)}
    for k, values in curves.items():
        ax.plot(epochs, values, label=lines[k])
    if len(history) > 2:
        # the epoch model selection keeps (best.pt, where early stopping is on)
        chosen = curves[select]
        best = max(range(len(chosen)), key=lambda i: chosen[i])
        ax.plot([epochs[best]], [chosen[best]], "o", color=f"C{list(curves).index(select)}", ms=5,
                label=f"best {lines[select].replace('validation ', 'by ')}: epoch {epochs[best]}, {chosen[best]:.2f}")
        # the first epoch's low ELBO would squash the rest: start the axis after it
        later = [v for values in curves.values() for v in values[1:]]
        low, high = min(later), max(later)
        ax.set_ylim(low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
        first = min(values[0] for values in curves.values())
        if first < low:
            ax.annotate(f"epoch 1: {first:.1f} (off the axis)", xy=(0.02, 0.03),
                        xycoords="axes fraction", fontsize=8, color="0.35")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("training and validation ELBO per epoch", fontsize=10)
    ax.legend(fontsize=8)  # three entries: small enough to leave the "epoch 1" note at the bottom left clear
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


def vector_lines(rows, path, title, value_label, names=None):
    """Examples that are vectors, not images: one small panel per example (rows: title ->
    (N, D) tensor, drawn as one line each in every panel, e.g. data and reconstruction), the
    values against their index."""
    series = {k: torch.as_tensor(v).detach().cpu() for k, v in rows.items()}
    n = min(len(v) for v in series.values())
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.3 * nrow + 0.6), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        for (label, v), style in zip(series.items(), ("-", "--", ":", "-.")):
            ax.plot(v[i].numpy(), style, marker="." if v.shape[1] <= 40 else None, label=label)
        ax.set_title(f"example {i}", fontsize=9)
        ax.grid(alpha=0.3)
        if names is not None and len(names) <= 12:
            ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
    axes[0, 0].legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(value_label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def vector_heatmap(vectors, path, title, value_label, row_labels=None):
    """(N, D) vectors as a heat map, one row per vector, with a labelled colour bar."""
    v = torch.as_tensor(vectors).detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.15 * v.shape[1]), 1.2 + min(7.0, 0.22 * len(v))))
    bound = float(np.abs(v).max()) or 1.0
    im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=-bound if v.min() < 0 else 0, vmax=bound,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax).set_label(value_label, fontsize=8)
    ax.set_xlabel("value index")
    if row_labels:  # one label per group of rows given the same y, with a line between groups
        starts = [i for i, lab in enumerate(row_labels) if i == 0 or lab != row_labels[i - 1]]
        ends = starts[1:] + [len(row_labels)]
        ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, ends)], [row_labels[i] for i in starts], fontsize=7)
        for i in starts[1:]:
            ax.axhline(i - 0.5, color="k", lw=1)
    else:
        ax.set_ylabel("draw")
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    return save(fig, path)


def latent_values(z, values, name, path, title):
    """(N, Z) latent means coloured by a continuous value (a covariate or attribute), or one
    colour when `values` is None; projected on two principal components when Z > 2."""
    z2, axes = project(z)
    fig, ax = plt.subplots(figsize=(6, 5))
    if values is None:
        ax.scatter(z2[:, 0], z2[:, 1], s=4, color="C0")
    else:
        sc = ax.scatter(z2[:, 0], z2[:, 1], c=torch.as_tensor(values).cpu(), cmap="viridis", s=4)
        fig.colorbar(sc, ax=ax).set_label(name)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def project(z):
    """Two columns to plot of (N, Z) codes, and their axis names."""
    z = torch.as_tensor(z).cpu()
    if z.shape[1] > 2:
        centred = z - z.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        return centred @ v[:2].T, ("principal component 1 of E[z|x]", "principal component 2")
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], 1), ("z[0]", "(one latent unit)")
    return z, ("z[0]", "z[1]")


def latent_scatter(z, labels, classes, path, title):
    """(N, Z) latent means coloured by label; projected on their first two principal components
    when Z > 2."""
    z2, axes = project(z)
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
        show_canvas(ax, grid_canvas(images, shape, int(np.sqrt(len(images)))))
        ax.set_title(f"{name}: decoded z ~ N(0, I)", fontsize=10)
        ax.axis("off")
    return save(fig, path, dpi=100)


def labelled_panels(panels, classes, shape, per_class, path, caption=None):
    """Image grids side by side (title -> (n_classes * per_class, H*W) images in class order),
    one row per class, rows labelled with the class names."""
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (per_class * 0.42 + 0.4) + 1.0,
                                                       len(classes) * 0.42 + 0.8), squeeze=False)
    h, w = tuple(shape)[-2:]
    for ax, (title, images) in zip(axes[0], panels.items()):
        show_canvas(ax, grid_canvas(images, shape, per_class, gap=0.25))
        ax.set_xticks([])
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(classes))], classes, fontsize=8)
        ax.tick_params(left=False)
        ax.set_title(title, fontsize=10)
    return save(fig, path, pad=1.2, caption=caption)


def curve_bands(panels, path, title, ylabel, start=1, each=False, whole=False):
    """One panel per entry (panel title -> {name -> list of per-seed curves, each a list of values
    per epoch, the first of them epoch `start`}), one line per name: the mean over the seeds that
    reached each epoch, and a band from their lowest to their highest. With `each`, every seed's
    own curve instead, in its name's colour, its highest value marked with a dot. The value axis
    leaves out the first epoch (it would squash the rest) unless `whole`."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4), squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        later = []
        for k, (name, runs) in enumerate(curves.items()):
            length = max(len(r) for r in runs)
            epochs = np.arange(start, start + length)
            stacked = [[r[e] for r in runs if len(r) > e] for e in range(length)]
            later += [x for v in stacked[0 if whole else 1:] for x in v]
            if each:
                for i, r in enumerate(runs):
                    ax.plot(epochs[:len(r)], r, color=f"C{k % 10}", lw=0.8, alpha=0.85,
                            label=f"{name} ({counted(len(runs), 'seed')}; dot: its highest)" if i == 0 else None)
                    ax.plot(start + int(np.argmax(r)), max(r), "o", color=f"C{k % 10}", ms=4)
                continue
            ax.plot(epochs, [np.mean(v) for v in stacked], color=f"C{k % 10}", label=f"{name} ({counted(len(runs), 'seed')})")
            ax.fill_between(epochs, [min(v) for v in stacked], [max(v) for v in stacked], color=f"C{k % 10}", alpha=0.2)
        if later:  # the first epoch would squash the rest
            low, high = min(later), max(later)
            ax.set_ylim(low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 50 * len(panels)), fontsize=10)
    return save(fig, path)


def dot_intervals(panels, path, title):
    """One panel per metric (panel title -> {name: (mean, half-width)}): a dot per name with its
    interval as a bar (no bar where there is one seed)."""
    n = len(panels)
    ncol = min(2, n)
    nrow = -(-n // ncol)
    names = max((list(p) for p in panels.values()), key=len)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 0.9 + 0.35 * len(names) * nrow + 0.6 * nrow),
                             squeeze=False)
    for ax, (what, points) in zip(axes.flat, panels.items()):
        labels = list(points)
        means = [points[k][0] for k in labels]
        halves = [0 if np.isnan(points[k][1]) else points[k][1] for k in labels]
        ax.errorbar(means, range(len(labels)), xerr=halves, fmt="o", capsize=3)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(textwrap.fill(what, 55), fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))  # long tick labels must not run together
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return save(fig, path, caption=title)  # below the panels: a title above collides with theirs


FORMATS = ("png", "pdf", "svg")


def save(fig, path, dpi=110, pad=None, caption=None):
    """Lay out (tick labels as the values themselves, no offset), write (atomically: a link at
    `path` is replaced, not followed) and close a figure; the format is the path's suffix; a
    `caption` goes below the panels. Returns the path."""
    path = Path(path)
    try:
        for ax in fig.axes:  # -226.24 reads as itself, never as 0.02 under a corner's "-2.262e2"
            for axis in (ax.xaxis, ax.yaxis):
                if isinstance(axis.get_major_formatter(), matplotlib.ticker.ScalarFormatter):
                    axis.get_major_formatter().set_useOffset(False)
        fig.tight_layout(**({"pad": pad} if pad else {}))
        if caption:
            width = fig.get_size_inches()[0]
            text = textwrap.fill(caption, max(40, int(width * 13)))
            height = (text.count("\n") + 1) * 0.2 + 0.15  # inches
            w, h = fig.get_size_inches()
            fig.set_size_inches(w, h + height)
            for ax in fig.axes:  # keep the panels where they were, in inches, above the caption
                box = ax.get_position()
                ax.set_position([box.x0, (box.y0 * h + height) / (h + height), box.width, box.height * h / (h + height)])
            fig.text(0.5, 0.1 / (h + height), text, ha="center", va="bottom", fontsize=9)
        fmt = path.suffix[1:].lower()
        if fmt not in FORMATS:
            raise UserError(f"cannot write {path}: a figure's name ends in {', '.join('.' + f for f in FORMATS)}")
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)
    return path
