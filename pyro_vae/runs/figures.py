"""The figures of a trained model: what to draw is computed here with the estimators, and drawn
with plots.py (runs layer). `run_figures` is what training leaves in a run directory;
`sample_run` is `pyro-vae sample`."""

from pathlib import Path

import numpy as np
import pyro
import torch

from .. import plots
from ..errors import UserError, positive_int
from ..estimators import active_units, conditional_samples, decode, latent_means
from ..models import model_inputs
from .store import load_run, read_metrics

MAX_DRAWS = 4096  # a 64 x 64 grid: beyond it a figure is unreadable and its canvas needs gigabytes


def sample_grid(model, data, path, n=64, label=None):
    """Decoded draws from the prior (mean images). A conditional model gets one row per class,
    or only class `label`; rows are labelled with the class names."""
    device = next(model.parameters()).device
    name = type(model).__name__
    if model.conditional:
        labels = list(range(data.n_classes)) if label is None else [label]
        per_row = -(-n // len(labels))  # every class gets a full row: n rounded up to a multiple of the classes
        y = torch.tensor(labels, device=device).repeat_interleave(per_row)
        means, _ = decode(model, *model_inputs(model, torch.zeros(len(y), data.x_dim, device=device), y,
                                               data.n_classes))
        return plots.image_grid(means, data.shape, path, per_row if label is None else int(np.ceil(np.sqrt(n))),
                                title=f"{name}: z from its prior (given y), decoded (mean image), "
                                      + ("one row per class" if label is None else f"class {data.classes[label]}"),
                                row_labels=[data.classes[k] for k in labels] if label is None else None)
    means, _ = decode(model, torch.zeros(n, data.x_dim, device=device))
    return plots.image_grid(means, data.shape, path, int(np.ceil(np.sqrt(n))),
                            title=f"{name}: z ~ p(z), decoded (mean image)")


def reconstructions(model, data, path, n=16):
    """Test images (top row) above the mean of p(x|z) at z = the guide's mean (bottom row)."""
    x, labels = data.splits["test"]
    args = model_inputs(model, x[:n], labels[:n], data.n_classes)
    recon, _ = decode(model, *args, z=latent_means(model, *args))
    return plots.image_grid(torch.cat([x[:n], recon]), data.shape, path, n,
                            title="test images (top) and reconstructions (bottom)", row_labels=["data", "recon"])


def latent_figure(model, data, path, n=5000):
    """Test examples at their guide means, coloured by label."""
    x, labels = data.splits["test"]
    z = latent_means(model, *model_inputs(model, x[:n], labels[:n], data.n_classes))
    return plots.latent_scatter(z, labels[:n], data.classes, path,
                                f"{type(model).__name__} latent space, {data.name} test set "
                                f"({active_units(z)} of {z.shape[1]} units active)")


def run_figures(model, data, history, run_dir):
    """samples.png and reconstructions.png (models of x), elbo.png, latent.png in `run_dir`."""
    run_dir = Path(run_dir)
    model.eval()
    if model.observed == "x":
        sample_grid(model, data, run_dir / "samples.png")
        reconstructions(model, data, run_dir / "reconstructions.png")
    plots.elbo_curves(history, run_dir / "elbo.png")
    latent_figure(model, data, run_dir / "latent.png")


def sample_run(run_dir, out=None, n=64, label=None, seed=0, device="auto", replace=False):
    """Draw a PNG grid of samples from a saved run into a new file; returns its path. The default
    name says what it holds (RUN_DIR/samples-n64-seed0.png, samples-label3-n64-seed0.png); an
    existing file is replaced only with `replace`. At most MAX_DRAWS draws."""
    positive_int("n", n)
    if n > MAX_DRAWS:
        raise UserError(f"n {n} is more draws than one figure shows; at most {MAX_DRAWS}")
    name = f"samples-{'' if label is None else f'label{label}-'}n{n}-seed{seed}.png"
    out = Path(out) if out is not None else Path(run_dir) / name
    check_figure_path(out)
    if out.exists() and not replace:
        raise UserError(f"{out} exists; pass --replace to draw over it, or --out another file")
    model, config, data = load_run(run_dir, device)
    if model.observed != "x":
        raise UserError(f"{config.model} predicts y from x; it has no images to sample")
    if label is not None and not 0 <= label < data.n_classes:
        raise UserError(f"label {label} out of range 0..{data.n_classes - 1}")
    if label is not None and not model.conditional:
        raise UserError(f"{config.model} is not conditional; --label needs cvae1, cvae2, cvae4 or m2")
    pyro.set_rng_seed(seed)
    return sample_grid(model, data, out, n=n, label=label)


def redraw_run(run_dir, device="auto"):
    """Draw a run's figures again from its checkpoint and metrics (`pyro-vae figures`): after an
    interrupted run, or to replace damaged ones. Returns the paths."""
    model, _, data = load_run(run_dir, device)
    history = read_metrics(run_dir)
    if not history:
        raise UserError(f"{run_dir} has no finished epoch yet: nothing to draw")
    run_figures(model, data, history, run_dir)
    return sorted(Path(run_dir).glob("*.png"))


def check_figure_path(path):
    """Refuse, before any work, a figure path that cannot be written: a directory, a missing
    folder, or a name without a figure format's suffix."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name such as {path / 'samples.png'}")
    if path.suffix[1:].lower() not in plots.FORMATS:
        raise UserError(f"--out {path}: a figure's name ends in {', '.join('.' + f for f in plots.FORMATS)}")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: its folder {path.parent} does not exist")


def latent_space_comparison(models, data, path, n=3000, draws=64):
    """One column per model (e.g. {"AE": ae, "VAE": vae}, each with z of 2 dims): the test set at
    its codes E[z|x], coloured by label (top), and images decoded from z ~ N(0, I) (bottom).
    The seeds' point: an AE's codes leave holes that N(0, I) draws fall into."""
    x, labels = data.splits["test"]
    columns = {}
    for name, model in models.items():
        model.eval()
        z = latent_means(model, *model_inputs(model, x[:n], labels[:n], data.n_classes)).cpu()
        device = next(model.parameters()).device
        z_prior = torch.randn(draws, z.shape[1], generator=torch.Generator().manual_seed(0)).to(device)
        means, _ = decode(model, *model_inputs(model, torch.zeros(draws, data.x_dim, device=device),
                                               labels[:draws], data.n_classes), z=z_prior)
        columns[name] = (z, labels[:n].cpu(), means)
    return plots.codes_and_draws(columns, data.classes, data.shape, path)


def conditional_panels(models, data, path, per_class=8, seed=0):
    """Class-conditional samples of several conditional models side by side, one panel per model,
    one labelled row per class: mean images of p(x|z,y) with z ~ p(z|y).

    `models` maps a title to a model that generates x given y (cvae1, cvae2, cvae4)."""
    panels = {}
    for title, model in models.items():
        pyro.set_rng_seed(seed)
        panels[title] = conditional_samples(model, data, per_class)[0]
    return plots.labelled_panels(panels, data.classes, data.shape, per_class, path)
