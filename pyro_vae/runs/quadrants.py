"""`pyro-vae quadrants`: Sohn et al. (2015)'s structured-output task, complete a binarized image
from 1, 2 or 3 quadrants (runs layer: a task with its own models, training and output folder).

x = the image with its hidden quadrants set to -1 (Pyro's examples/cvae convention: -1 means
"not given", unlike a black pixel), y = the whole binarized image, of which the likelihood counts
only the hidden pixels. One model per number of given quadrants, as in the paper:

    baseline  p(y|x) = Bernoulli(f(x)): a deterministic network, no latent (its "ELBO" is exact)
    cvae3     p(z|x) p(y|x,z), guide q(z|x,y): `models.CVAE3` with a Bernoulli likelihood over
              the hidden pixels, trained on the CVAE bound
    hybrid    the same model trained on alpha * CVAE bound + (1 - alpha) * GSNN bound

The GSNN bound is an ELBO whose guide draws z from the prior network p(z|x) itself, so the KL term
log p(z|x) - log q(z) cancels exactly and what is left is E_{p(z|x)}[log p(y|x,z)], the objective
of the Gaussian stochastic neural network that is trained the way it predicts.
"""

import contextlib
import json
from pathlib import Path

import pyro
import torch
from pyro import poutine
from torch import nn

from .. import plots
from ..data import load_dataset
from ..errors import UserError, random_seed
from ..files import atomic_write, write_json
from ..estimators import elbo_per_example, importance_sampled
from ..models import CVAE3
from ..objectives import make_elbo
from ..parts import BernoulliDecoder
from ..svi import fit
from .config import resolve_device
from .store import RunLock, create_dir


def given_mask(n_given, shape=(28, 28)):
    """Pixels shown to the model, flattened: 1 = bottom-left quadrant, 2 = left half,
    3 = all but the bottom-right quadrant (Sohn et al.; Pyro's examples/cvae)."""
    if n_given not in (1, 2, 3):
        raise UserError(f"the number of given quadrants must be 1, 2 or 3, got {n_given}")
    h, w = shape
    m = torch.zeros(h, w, dtype=torch.bool)
    m[h // 2:, :w // 2] = True
    if n_given >= 2:
        m[:, :w // 2] = True
    if n_given == 3:
        m[:h // 2, :] = True
    return m.flatten()


def split(images, given):
    """(x, y): the given pixels with the rest set to -1, and the whole image."""
    return torch.where(given, images, torch.full_like(images, -1.0)), images


class HiddenPixels(nn.Module):
    """A Bernoulli likelihood part of which only the hidden pixels count: the given ones are masked
    out of log p(y|.), so the bound is one of log p(y_hidden|x)."""

    def __init__(self, likelihood, given):
        super().__init__()
        self.likelihood = likelihood
        self.register_buffer("hidden", ~given)

    def forward(self, h):
        return self.likelihood(h).base_dist.mask(self.hidden).to_event(1)


class Baseline(nn.Module):
    """p(y|x) = Bernoulli(f(x)) over the hidden pixels: the deterministic network. No latent, so
    the guide is empty and the ELBO is log p(y|x) itself."""

    observed = "y"
    conditional = True

    def __init__(self, x_dim, hidden, given):
        super().__init__()
        self.decoder = HiddenPixels(BernoulliDecoder(in_dim=x_dim, out_dim=x_dim, net=hidden), given)

    def model(self, x, y):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", self.decoder(x), obs=y)

    def guide(self, x, y):
        pass


def quadrant_cvae(x_dim, z_dim, hidden, given):
    """cvae3 with y = the image: Bernoulli likelihood over the hidden pixels."""
    model = CVAE3(x_dim, x_dim, z_dim=z_dim, hidden=hidden, likelihood=BernoulliDecoder)
    model.decoder = HiddenPixels(model.decoder, given)
    return model


def gsnn_guide(model):
    """The GSNN's guide for a cvae3: z ~ p(z|x), the prior network (see the module docstring)."""

    def guide(x, y):
        pyro.module("prior", model.prior)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", model.prior(x))

    return guide


class HybridELBO:
    """alpha * CVAE bound + (1 - alpha) * GSNN bound (Sohn et al. 2015, eq. 8), each fit's Trace_ELBO
    (make_elbo) of the same model with a different guide; alpha = 1 is the plain CVAE bound."""

    def __init__(self, alpha, gsnn_guide):
        self.alpha, self.gsnn_guide = alpha, gsnn_guide
        self.elbo = make_elbo()

    def differentiable_loss(self, model, guide, *args):
        loss = self.alpha * self.elbo.differentiable_loss(model, guide, *args)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.elbo.differentiable_loss(model, self.gsnn_guide, *args)
        return loss


MODELS = ["baseline", "cvae3", "hybrid"]


def build(name, n_given, x_dim=784, shape=(28, 28), z_dim=32, hidden=256, alpha=0.5):
    """(model, objective) of one quadrant model by name."""
    given = given_mask(n_given, shape)
    if name == "baseline":
        return Baseline(x_dim, hidden, given), make_elbo()
    if name not in MODELS:
        raise UserError(f"unknown quadrant model {name!r}; choose from {', '.join(MODELS)}")
    model = quadrant_cvae(x_dim, z_dim, hidden, given)
    return model, HybridELBO(1.0 if name == "cvae3" else alpha, gsnn_guide(model))


def fit_quadrants(model, objective, data, epochs, batch_size=128, lr=1e-3):
    """`fit` on the objective, each dynamically binarized image split into (given x, hidden y);
    returns the seconds of each epoch."""
    given = model.decoder.hidden.logical_not()
    history = fit(model, data, epochs, batch_size, lr, progress=False, elbo=objective,
                  inputs=lambda images, labels: split(images, given))
    return [m["seconds"] for m in history]


@torch.no_grad()
def score(model, data, iw_samples=1000, examples=None, max_batch=1 << 16):
    """-log p(y|x) importance-sampled with K = iw_samples draws from q(z|x,y) (exact for the
    baseline, K = 1) and the 10-particle negative ELBO, nats per test image, on the fixed
    binarization of the (first `examples`) test images."""
    given = model.decoder.hidden.logical_not()
    x, y = split(data.splits["test"][0][:examples], given)
    k = 1 if isinstance(model, Baseline) else iw_samples
    log_lik, _ = importance_sampled(model.model, model.guide, x, y, samples=k, max_batch=max_batch)
    elbo = elbo_per_example(model.model, model.guide, x, y, particles=10, max_batch=max_batch)
    return {"nll_is": -log_lik.mean().item(), "iw_samples": k, "neg_elbo_10": -elbo.mean().item(),
            "examples": len(x)}


@torch.no_grad()
def completions(model, x, samples=4):
    """Mean images of p(y|x,z) for `samples` draws z ~ p(z|x) (one for the baseline), with the
    given pixels pasted back: a (samples, B, D) tensor."""
    with pyro.plate("particles", 1 if isinstance(model, Baseline) else samples, dim=-2):
        y_mean = poutine.trace(model.model).get_trace(x, None).nodes["y"]["fn"].mean
    return torch.where(x >= 0, x, y_mean)


def completion_figure(models, data, n_given, path, n_images=8, samples=3, seed=0):
    """Rows: the given quadrants (hidden ones grey), the truth, then each model's completions."""
    pyro.set_rng_seed(seed)
    given = given_mask(n_given, data.shape)
    x, truth = split(data.splits["test"][0][:n_images], given)
    rows, labels = [torch.where(x >= 0, x, torch.full_like(x, 0.35)), truth], ["given", "truth"]
    for name, model in models.items():
        c = completions(model, x, samples)
        rows += list(c)
        labels += [name] if len(c) == 1 else [f"{name} z{i + 1}" for i in range(len(c))]
    return plots.image_grid(torch.cat(rows), data.shape, path, n_images, row_labels=labels, gap=0.25,
                            title=f"{data.name}, {n_given} of 4 quadrants given: the mean of p(y|x,z) with the given "
                                  f"pixels pasted back; rows 'cvae3 z1..z3' and 'hybrid z1..z3' are three draws "
                                  f"z ~ p(z|x) each (the baseline has no z: one row)")


@contextlib.contextmanager
def writing_quadrants(out, given, models, overwrite):
    """Within it, this process alone writes the folder `out` (a lock; a second writer is refused at
    once), which holds none of the files the run will write unless `overwrite`."""
    lock = RunLock(out).acquire()
    try:
        targets = ([out / "results.json"] + [out / f"{name}-{n}.pt" for n in given for name in models]
                   + [out / f"quadrants-{n}.png" for n in given])
        earlier = [p.name for p in targets if p.exists() or p.is_symlink()]
        if earlier and not overwrite:
            raise UserError(f"{out} holds an earlier quadrants run ({', '.join(earlier[:3])}"
                            f"{', ...' if len(earlier) > 3 else ''}); pass --overwrite to replace it, or choose "
                            f"another --out")
        lock.announce()
        yield
    finally:
        lock.release()


def run_quadrants(out, dataset="fashion-mnist", data_dir=None, given=(1, 2, 3), models=MODELS, epochs=5,
                  batch_size=128, lr=1e-3, z_dim=32, hidden=256, alpha=0.5, iw_samples=1000, examples=None,
                  train_size=None, seed=0, progress=True, device="cpu", overwrite=False):
    """Train and score every (model, number of given quadrants) on `device`; writes
    OUT/results.json, each model's weights (OUT/<model>-<n>.pt, tensors only) and
    OUT/quadrants-<n>.png. Returns the rows. Files an earlier run left there are replaced only with
    `overwrite`, and one process at a time writes OUT (a second is refused at once)."""
    random_seed("seed", seed)
    given, models = list(given), list(models)
    for what, values, allowed in (("given", given, (1, 2, 3)), ("models", models, MODELS)):
        if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
            raise UserError(f"quadrants: {what} lists each of {', '.join(map(str, allowed))} at most once, "
                            f"got {values}")
    out = create_dir(out, "output folder")
    with writing_quadrants(out, given, models, overwrite):
        device = resolve_device(device)
        data = load_dataset(dataset, data_dir, device, binarize=True, train_size=train_size, seed=seed)
        if not data.is_image or len(data.shape) != 2:
            raise UserError(f"{dataset}: quadrant completion is for grey images (H, W); its examples have shape "
                            f"{data.shape}")
        if progress:
            print(f"pyro-vae quadrants: {', '.join(models)} x {len(given)} numbers of given quadrants on {dataset} "
                  f"({len(data.splits['train'][0])} training images), {epochs} epochs each, {device}; writing "
                  f"into {out}", flush=True)
        if data.shape[0] % 2 or data.shape[1] % 2:
            raise UserError(f"{dataset}: images of {data.shape} pixels do not split into equal quadrants")
        rows = []
        for n in given:
            trained = {}
            for name in models:
                pyro.set_rng_seed(seed)
                model, objective = build(name, n, data.x_dim, data.shape, z_dim, hidden, alpha)
                model.to(device)
                seconds = fit_quadrants(model, objective, data, epochs, batch_size, lr)
                weights = model.state_dict()
                atomic_write(out / f"{name}-{n}.pt", lambda f: torch.save(weights, f))
                row = {"model": name, "given": n, **score(model, data, iw_samples, examples),
                       "seconds_per_epoch": sum(seconds) / len(seconds)}
                if progress:
                    print(result_line(row), flush=True)
                rows.append(row)
                trained[name] = model
            completion_figure(trained, data, n, out / f"quadrants-{n}.png")
        settings = dict(dataset=dataset, given=given, models=models, epochs=epochs, batch_size=batch_size,
                        lr=lr, z_dim=z_dim, hidden=hidden, alpha=alpha, iw_samples=iw_samples, examples=examples,
                        train_size=train_size, seed=seed)
        write_json(out / "results.json", {"settings": settings, "rows": rows})
        return rows


def result_line(row):
    """One result as a line: the model, the quadrants given, both scores, with their units."""
    return (f"{row['model']:8s} {row['given']} given: -log p(y|x) {row['nll_is']:.2f} (K={row['iw_samples']}), "
            f"10-particle -ELBO {row['neg_elbo_10']:.2f} nats per image")


def redraw(out, data_dir=None):
    """Redraw OUT/quadrants-<n>.png from the weights and settings a `run_quadrants` left in OUT."""
    out = Path(out)
    settings = json.loads((out / "results.json").read_text())["settings"]
    data = load_dataset(settings["dataset"], data_dir, "cpu", binarize=True, seed=settings["seed"])
    for n in settings["given"]:
        models = {}
        for name in settings["models"]:
            model, _ = build(name, n, data.x_dim, data.shape, settings["z_dim"], settings["hidden"], settings["alpha"])
            model.load_state_dict(torch.load(out / f"{name}-{n}.pt", weights_only=True))
            models[name] = model.eval()
        completion_figure(models, data, n, out / f"quadrants-{n}.png")
