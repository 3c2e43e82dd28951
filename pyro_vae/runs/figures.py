"""The figures of a trained model: what to draw is computed here with the estimators, and drawn
with plots.py (runs layer). `run_figures` is what training leaves in a run directory;
`sample_run` is `pyro-vae sample`."""

import re
import sys
from pathlib import Path

import numpy as np
import pyro
import torch

from .. import plots
from ..data import is_builtin
from ..errors import UserError, positive_int, random_seed
from ..estimators import active_units, conditional_samples, decode, latent_means
from ..models import model_inputs
from .config import SELECT_ON
from .store import load_run, read_metrics, untrained_note

MAX_DRAWS = 4096  # a 64 x 64 grid: beyond it a figure is unreadable and its canvas needs gigabytes


ROWS = 8  # rows of a figure conditioned on attributes or covariates


def condition_rows(data, rows=ROWS):
    """(c values (rows, D), row labels) to condition samples on where y is not a class label:
    covariates: the first one swept over its test 5%..95% quantiles, the others at their medians;
    attributes: the first `rows` distinct attribute vectors of the test split."""
    c = data.splits["test"][1]
    names = data.y_names or [f"y{k}" for k in range(c.shape[1])]
    if data.condition == "covariates":
        values = c.median(0).values.repeat(rows, 1)
        values[:, 0] = torch.quantile(c[:, 0], torch.linspace(0.05, 0.95, rows, device=c.device))
        return values, [f"{names[0]} = {v:.3g}" for v in values[:, 0].tolist()]
    values = torch.unique(c, dim=0)[:rows] if len(c) else c
    labels = [", ".join(n for n, on in zip(names, row.tolist()) if on) or "(none)" for row in values]
    return values, [text if len(text) < 28 else text[:25] + "..." for text in labels]


def what_y(data, c):
    """How a title names the y a figure was drawn for."""
    if data.condition == "label":
        return f"class {data.classes[int(c)]}"
    names = data.y_names or [f"y{k}" for k in range(len(c))]
    return ", ".join(f"{n}={v:.3g}" for n, v in zip(names, c.tolist()))


def draw_examples(values, data, path, ncol, title, row_labels=None):
    """Images as a grid; vectors as a heat map (one row per draw)."""
    if data.is_image:
        return plots.image_grid(values, data.shape, path, ncol, title=title, row_labels=row_labels)
    labels = [lab for lab in row_labels for _ in range(ncol)] if row_labels else None
    return plots.vector_heatmap(values, path, title, value_label(data), row_labels=labels)


def value_label(data):
    return "value (standardised)" if data.kind == "real" else "value"


def sample_grid(model, data, path, n=64, label=None, given=None):
    """Decoded draws from the prior (mean of p(x|z,.)). A conditional model gets one row per
    class (or per attribute vector or covariate value: `condition_rows`), or only class `label`,
    or only the attributes or covariates `given`; rows are labelled with what they were given."""
    device = next(model.parameters()).device
    name = model_title(model)
    if model.conditional:
        if given is not None:
            c, labels = torch.as_tensor([given], dtype=torch.float32, device=device), None
            heading = what_y(data, c[0])
        elif label is not None:
            c, labels, heading = torch.tensor([label], device=device), None, f"class {data.classes[label]}"
        elif data.condition == "label":
            c, labels, heading = torch.arange(data.n_classes, device=device), list(data.classes), "one row per class"
        else:
            c, labels = condition_rows(data)
            heading = f"one row per {'value of ' + (data.y_names or ['y0'])[0] if data.condition == 'covariates' else 'attribute vector'}"
        one = len(c) == 1
        per_row = int(np.ceil(np.sqrt(n))) if one else -(-n // len(c))  # every row full: n rounded up
        y = c.repeat_interleave(n if one else per_row, dim=0)
        means, _ = decode(model, *model_inputs(model, torch.zeros(len(y), data.x_dim, device=device), y,
                                               data.n_classes))
        # what the graph draws: z ~ p(z|y) for cvae1 and cvae4, z ~ p(z) for cvae2 and m2; y reaches the
        # decoder in all but cvae4
        how = ("z ~ p(z|y)" if model.prior_input == "y" else "z ~ p(z)") + (
            ", decoded with y" if "y" in model.decoder_input else ", decoded")
        return draw_examples(means, data, path, per_row, f"{name} on {data_title(data)}: {how} (mean), {heading}",
                             row_labels=labels)
    means, _ = decode(model, torch.zeros(n, data.x_dim, device=device))
    return draw_examples(means, data, path, int(np.ceil(np.sqrt(n))),
                         f"{name} on {data_title(data)}: z ~ p(z), decoded (mean)")


def model_title(model):
    """The model's class, with each part that is not the model's own default: "VAE (prior vamp, guide iaf)"."""
    names = getattr(model, "part_names", {})
    chosen = [f"{kind} {names[kind]}" for kind in ("prior", "guide", "likelihood")
              if kind in names and names[kind] != getattr(model, "defaults", {}).get(kind)]
    return type(model).__name__ + (f" ({', '.join(chosen)})" if chosen else "")


def data_title(data):
    return data.name if is_builtin(data.name) else Path(data.name).name


def reconstructions(model, data, path, n=16):
    """Test examples above the mean of p(x|z) at z = the guide's mean: images as two rows,
    vectors as a line each in one panel per example."""
    x, labels = data.splits["test"]
    n = min(n, len(x))
    args = model_inputs(model, x[:n], labels[:n], data.n_classes)
    recon, _ = decode(model, *args, z=latent_means(model, *args))
    title = f"{model_title(model)} on {data_title(data)}: test examples and reconstructions (mean of p(x|z) at E[z|x])"
    if not data.is_image:
        return plots.vector_lines({"data": x[:8], "reconstruction": recon[:8]}, path, title, value_label(data))
    if data.binarized:  # binary data beside binary draws of p(x|z), so both rows are on one scale
        draw = torch.bernoulli(recon, generator=torch.Generator(device=recon.device).manual_seed(0))
        title = (f"{model_title(model)} on {data_title(data)}: binarized test images, a draw of p(x|z) and its "
                 f"mean, at z = E[z|x]")
        return plots.image_grid(torch.cat([x[:n], draw, recon]), data.shape, path, n, title=title,
                                row_labels=["data", "draw", "mean"])
    return plots.image_grid(torch.cat([x[:n], recon]), data.shape, path, n, title=title, row_labels=["data", "recon"])


def latent_figure(model, data, path, n=5000):
    """Test examples at their guide means, coloured by label (or by the first covariate or attribute)."""
    x, labels = data.splits["test"]
    z = latent_means(model, *model_inputs(model, x[:n], labels[:n], data.n_classes))
    title = (f"{model_title(model)} latent space, {data_title(data)} test set "
             f"({active_units(z)} of {z.shape[1]} units active)")
    if data.condition == "label":
        return plots.latent_scatter(z, labels[:n], data.classes, path, title)
    if data.condition is None:
        return plots.latent_values(z, None, None, path, title)
    return plots.latent_values(z, labels[:n, 0], f"{(data.y_names or ['y0'])[0]} (colour)", path, title)


def run_figures(model, data, history, run_dir, select="val_elbo"):
    """samples.png and reconstructions.png (models of x), elbo.png (its best epoch by `select`),
    latent.png in `run_dir`."""
    run_dir = Path(run_dir)
    model.eval()
    if model.observed == "x":
        sample_grid(model, data, run_dir / "samples.png")
        reconstructions(model, data, run_dir / "reconstructions.png")
    plots.elbo_curves(history, run_dir / "elbo.png", select)
    latent_figure(model, data, run_dir / "latent.png")


def sample_run(run_dir, out=None, n=64, label=None, seed=0, device="auto", replace=False, attributes=None,
               covariates=None):
    """Draw a PNG grid of samples from a saved run into a new file; returns its path. The default
    name says what it holds (RUN_DIR/samples-n64-seed0.png, samples-label3-n64-seed0.png); an
    existing file is replaced only with `replace`. At most MAX_DRAWS draws. A conditional model
    draws for one class `label` (its number, or its name as the data set calls it: "Sneaker" in
    Fashion-MNIST, any case), or for the `attributes` or `covariates` given (lists of numbers, one
    per value of y)."""
    positive_int("n", n)
    random_seed("seed", seed)
    if n > MAX_DRAWS:
        raise UserError(f"n {n} is more draws than one figure shows; at most {MAX_DRAWS}")
    asked = [(k, v) for k, v in (("label", label), ("attributes", attributes), ("covariates", covariates))
             if v is not None]
    if len(asked) > 1:
        raise UserError(f"give one of --label, --attributes, --covariates, not {' and '.join('--' + k for k, _ in asked)}")
    given = attributes if attributes is not None else covariates
    label_name = None  # a class asked for by name, resolved once the run's data is loaded
    if isinstance(label, str):
        if not label.strip() or len(label) > 200:
            raise UserError(f"label {label[:40]!r}: give a class's number or name")
        label_name, label = label.strip(), None
    if not asked:
        tag = ""
    elif label_name is not None:
        tag = "label-" + re.sub(r"[^\w.-]+", "_", label_name) + "-"  # the name as a file may hold it
    elif label is not None:
        tag = f"label{label}-"
    else:
        tag = f"{asked[0][0]}{'_'.join(f'{v:g}' for v in given)}-"
    name = f"samples-{tag}n{n}-seed{seed}.png"
    out = Path(out) if out is not None else Path(run_dir) / name
    check_figure_path(out)
    if out.exists() and not replace:
        raise UserError(f"{out} exists; pass --replace to draw over it, or --out another file")
    model, config, data = load_run(run_dir, device)
    if model.observed != "x":
        raise UserError(f"{config.model} predicts y from x; it has no images to sample")
    if asked and not model.conditional:
        raise UserError(f"{config.model} is not conditional; --{asked[0][0]} needs cvae1, cvae2, cvae4 or m2")
    if asked and asked[0][0] != data.condition:
        raise UserError(f"this run conditions on {data.condition}: --{asked[0][0]} does not apply")
    if label_name is not None:
        numbers = [i for i, c in enumerate(data.classes or []) if str(c).lower() == label_name.lower()]
        if not numbers:
            classes = [str(c) for c in data.classes or []]
            named = (f"numbered 0..{len(classes) - 1}" if classes == [str(i) for i in range(len(classes))]
                     else ", ".join(f"{i} {c}" for i, c in enumerate(classes)))
            raise UserError(f"no class named {label_name[:40]!r} in {data.name}; its classes are {named}")
        label = numbers[0]
    if label is not None and not 0 <= label < data.n_classes:
        raise UserError(f"label {label} out of range 0..{data.n_classes - 1}")
    if given is not None:
        given = [float(v) for v in given]
        if len(given) != data.y_dim or not all(np.isfinite(given)):
            raise UserError(f"--{asked[0][0]} takes {data.y_dim} finite numbers ({', '.join(data.y_names or [])}), "
                            f"got {len(given)}{'' if np.isfinite(given).all() else ', not all finite'}")
        if attributes is not None and set(given) - {0.0, 1.0}:
            raise UserError("--attributes are 0 or 1 each")
    untrained = untrained_note(run_dir, model)
    if untrained:
        print(f"pyro-vae: warning: {untrained}", file=sys.stderr, flush=True)
    pyro.set_rng_seed(seed)
    return sample_grid(model, data, out, n=n, label=label, given=given)


def redraw_run(run_dir, device="auto"):
    """Draw a run's figures again from its checkpoint and metrics (`pyro-vae figures`): after an
    interrupted run, or to replace damaged ones. Returns the paths."""
    model, config, data = load_run(run_dir, device)
    history = read_metrics(run_dir)
    if not history:
        raise UserError(f"{run_dir} has no finished epoch yet: nothing to draw")
    run_figures(model, data, history, run_dir, SELECT_ON[config.select_on][0])
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


def conditional_panels(models, data, path, per_class=8, seed=0, caption=None):
    """Class-conditional samples of several conditional models side by side, one panel per model,
    one labelled row per class: mean images of p(x|z,y) with z ~ p(z|y).

    `models` maps a title to a model that generates x given y (cvae1, cvae2, cvae4)."""
    panels = {}
    for title, model in models.items():
        pyro.set_rng_seed(seed)
        panels[title] = conditional_samples(model, data, per_class)[0]
    return plots.labelled_panels(panels, data.classes, data.shape, per_class, path, caption=caption)
