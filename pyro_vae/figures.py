"""Figures of a run: samples, reconstructions, ELBO curves, the latent space."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .evaluate import active_units, decode, latent_means  # noqa: E402
from .models import model_inputs  # noqa: E402


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def sample_grid(model, data, path, n=64, label=None):
    """Decoded draws from the prior (mean images). A conditional model gets one row per class,
    or only class `label`; rows are labelled with the class names."""
    x_dim = data.x_dim
    device = next(model.parameters()).device
    if model.conditional:
        labels = list(range(data.n_classes)) if label is None else [label]
        per_row = max(1, n // len(labels)) if label is None else n
        y = torch.tensor(labels, device=device).repeat_interleave(per_row)
        x = torch.zeros(len(y), x_dim, device=device)
        means, _ = decode(model, *model_inputs(model, x, y, data.n_classes))
        return image_grid(means, data.shape, path, per_row if label is None else min(n, 10),
                          title=f"{type(model).__name__}: draws from p(z|y), decoded",
                          row_labels=[data.classes[k] for k in labels] if label is None else None)
    means, _ = decode(model, torch.zeros(n, x_dim, device=device), None)
    return image_grid(means, data.shape, path, int(np.ceil(np.sqrt(n))),
                      title=f"{type(model).__name__}: z ~ p(z), decoded (mean image)")


def reconstructions(model, data, path, n=16):
    """Test images (top row) above the mean of p(x|z) at z = the guide's mean (bottom row)."""
    x, labels = data.splits["test"]
    args = model_inputs(model, x[:n], labels[:n], data.n_classes)
    z = latent_means(model, *args)
    recon, _ = decode(model, *args, z=z)
    return image_grid(torch.cat([x[:n], recon]), data.shape, path, n,
                      title="test images (top) and reconstructions (bottom)",
                      row_labels=["data", "recon"])


def elbo_curves(history, path):
    epochs = [m["epoch"] for m in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [m["train_elbo"] for m in history], label="train")
    ax.plot(epochs, [m["val_elbo"] for m in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def latent_scatter(model, data, path, n=5000):
    """Test examples at their guide means, coloured by label; PCA to 2-D when z has more dims."""
    x, labels = data.splits["test"]
    z = latent_means(model, *model_inputs(model, x[:n], labels[:n], data.n_classes)).cpu()
    if z.shape[1] > 2:
        centred = z - z.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        z2, axes = centred @ v[:2].T, ("principal component 1 of E[z|x]", "principal component 2")
    else:
        z2, axes = z, ("z[0]", "z[1]")
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(z2[:, 0], z2[:, 1], c=labels[:n].cpu(), cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    cbar = fig.colorbar(sc, ax=ax, ticks=range(data.n_classes))
    cbar.ax.set_yticklabels(data.classes)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"{type(model).__name__} latent space, {data.name} test set "
                 f"({active_units(z)} of {z.shape[1]} units active)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run_figures(model, data, history, run_dir):
    run_dir = Path(run_dir)
    model.eval()
    if model.observed == "x":
        sample_grid(model, data, run_dir / "samples.png")
        reconstructions(model, data, run_dir / "reconstructions.png")
    elbo_curves(history, run_dir / "elbo.png")
    latent_scatter(model, data, run_dir / "latent.png")


def sample_run(run_dir, out=None, n=64, label=None, seed=0, device="auto"):
    """Draw a PNG grid of samples from a saved run; returns its path."""
    import pyro

    from .errors import UserError
    from .runs import load_run

    model, config, data = load_run(run_dir, device)
    if model.observed != "x":
        raise UserError(f"{config.model} predicts y from x; it has no images to sample")
    if label is not None and not 0 <= label < data.n_classes:
        raise UserError(f"label {label} out of range 0..{data.n_classes - 1}")
    if label is not None and not model.conditional:
        raise UserError(f"{config.model} is not conditional; --label needs cvae1, cvae2 or cvae4")
    if n <= 0:
        raise UserError(f"n must be positive, got {n}")
    pyro.set_rng_seed(seed)
    out = Path(out) if out else Path(run_dir) / ("samples.png" if label is None else f"samples_label{label}.png")
    return sample_grid(model, data, out, n=n, label=label)


def latent_space_comparison(models, data, path, n=3000, draws=64):
    """One column per model (e.g. {"AE": ae, "VAE": vae}, each with z of 2 dims): the test set at
    its codes E[z|x], coloured by label (top), and images decoded from z ~ N(0, I) (bottom).
    The seeds' point: an AE's codes leave holes that N(0, I) draws fall into."""
    x, labels = data.splits["test"]
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 10), squeeze=False)
    for col, (name, model) in enumerate(models.items()):
        model.eval()
        args = model_inputs(model, x[:n], labels[:n], data.n_classes)
        z = latent_means(model, *args).cpu()
        ax = axes[0, col]
        sc = ax.scatter(z[:, 0], z[:, 1], c=labels[:n].cpu(), cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
        ax.add_patch(plt.Circle((0, 0), 2, fill=False, ls="--", color="k", lw=1))
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{name}: test codes E[z|x] (dashed: 2 sd of N(0, I))", fontsize=10)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        cbar = fig.colorbar(sc, ax=ax, ticks=range(data.n_classes))
        cbar.ax.set_yticklabels(data.classes, fontsize=7)
        device = next(model.parameters()).device
        z_prior = torch.randn(draws, z.shape[1], generator=torch.Generator().manual_seed(0)).to(device)
        means, _ = decode(model, *model_inputs(model, torch.zeros(draws, data.x_dim, device=device),
                                               labels[:draws], data.n_classes), z=z_prior)
        ax = axes[1, col]
        ax.imshow(grid_canvas(means, data.shape, int(np.sqrt(draws))), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{name}: decoded z ~ N(0, I)", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def conditional_panels(models, data, path, per_class=8, seed=0):
    """Class-conditional samples of several conditional models side by side, one panel per model,
    one labelled row per class: mean images of p(x|z,y) with z ~ p(z|y).

    `models` maps a title to a model that generates x given y (cvae1, cvae2, cvae4)."""
    import pyro

    from .classifier import conditional_samples

    fig, axes = plt.subplots(1, len(models), figsize=(len(models) * (per_class * 0.42 + 0.4) + 1.0,
                                                       data.n_classes * 0.42 + 0.8), squeeze=False)
    h, w = data.shape
    for ax, (title, model) in zip(axes[0], models.items()):
        pyro.set_rng_seed(seed)
        images, _ = conditional_samples(model, data, per_class)
        ax.imshow(grid_canvas(images, data.shape, per_class, gap=0.25), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(data.n_classes)], data.classes, fontsize=8)
        ax.tick_params(left=False)
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=1.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
