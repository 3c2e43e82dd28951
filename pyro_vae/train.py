"""Training: stochastic variational inference with an ELBO from `pyro.infer`.

The loss is the ELBO object's `differentiable_loss` of the model/guide pair (the PPL computes
it; nothing here writes a loss by hand), minimised by one `torch.optim.Adam` over all the
model's parameters. The epoch's loss is summed on the device and read once per epoch, so a GPU
never waits on the host within an epoch.
"""

import json
import time

import pyro
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence
from tqdm import tqdm

from . import figures
from .data import batches, binarize, load_dataset
from .errors import UserError
from .evaluate import elbo_per_example
from .models import model_inputs
from .runs import (Config, binarizes, make_run_dir, model_for, resolve_device, save_checkpoint,
                   write_metrics)

def iwae_bound(num_particles, **kwargs):
    """The IWAE bound (Burda et al.): Renyi's alpha = 0 with K vectorized particles."""
    return RenyiELBO(alpha=0, num_particles=num_particles, **kwargs)


# name -> (plain, JIT-compiled) objective; None where no JIT variant gives the same loss
ELBOS = {
    "trace": (Trace_ELBO, JitTrace_ELBO),
    "meanfield": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
    "iwae": (iwae_bound, None),
}


def make_elbo(name="trace", particles=1, jit=False):
    """An ELBO object from `pyro.infer` by name: trace, meanfield (analytic KL) or iwae (K particles)."""
    if name not in ELBOS:
        raise UserError(f"unknown objective {name!r}; choose from {', '.join(ELBOS)}")
    plain, jitted = ELBOS[name]
    if jit and jitted is None:
        raise UserError(f"--jit: objective {name!r} has no JIT variant; use trace or meanfield")
    return (jitted if jit else plain)(num_particles=particles, vectorize_particles=particles > 1,
                                      max_plate_nesting=1)


class ScaleLatents(Messenger):
    """Weights the log-density of every latent (unobserved) site by `weight`, in the model and the
    guide alike, so the ELBO becomes E_q[log p(x|z)] - weight * KL: beta-VAE and KL warm-up."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.weight


def check_objective(model, elbo_name, *args):
    """Refuse, before training, an analytic-KL objective whose guide and prior have no KL formula."""
    if elbo_name != "meanfield":
        return
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        raise UserError(f"--elbo meanfield needs an analytic KL(q || p), and there is none for "
                        f"{type(model.encoder).__name__} against {type(model.prior).__name__}; "
                        f"use --elbo trace") from None


def fit(model, data, epochs, batch_size=128, lr=1e-3, elbo=None, beta=1.0, warmup_epochs=0,
        on_epoch=None, progress=True):
    """Train `model` on `data` (a `Dataset`) with SVI; returns the per-epoch metrics.

    Each metric is a dict with `epoch`, `train_elbo` (the training objective: the ELBO, or its
    beta-weighted or IWAE form), `val_elbo` (the plain ELBO, one Monte Carlo draw per example on
    the fixed binarization), both in nats per example, and `seconds` (training time of the
    epoch). The KL weight is `beta`, ramped up linearly over the first `warmup_epochs`.
    `on_epoch(metrics, optimizer)` is called after each epoch."""
    # pyro.module registers parameters by name in Pyro's global store; a store still holding an
    # earlier model's tensors under the same names would shadow this model's (JIT tracing and
    # pyro.optim read the store), so start from an empty one.
    pyro.clear_param_store()
    elbo = elbo or make_elbo()
    kl_weight = ScaleLatents(beta)
    model_fn, guide_fn = (kl_weight(model.model), kl_weight(model.guide)) if (beta != 1 or warmup_epochs) \
        else (model.model, model.guide)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x_train, y_train = data.splits["train"]
    x_val, y_val = data.splits["val"]
    n = len(x_train)
    history = []
    steps = -(-n // batch_size)
    bar = tqdm(total=epochs * steps, desc="training", unit="step", disable=None if progress else True, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        total = torch.zeros((), device=x_train.device)
        for step, idx in enumerate(batches(n, batch_size, device=x_train.device)):
            x = binarize(x_train[idx]) if data.binarized else x_train[idx]
            if warmup_epochs:
                kl_weight.weight = beta * min(1.0, ((epoch - 1) * steps + step + 1) / (warmup_epochs * steps))
            args = model_inputs(model, x, y_train[idx], data.n_classes)
            optimizer.zero_grad(set_to_none=True)
            if hasattr(elbo, "differentiable_loss"):
                loss = elbo.differentiable_loss(model_fn, guide_fn, *args)
                loss.backward()
            else:  # RenyiELBO (the IWAE bound) only offers loss_and_grads
                loss = torch.tensor(elbo.loss_and_grads(model_fn, guide_fn, *args))
            optimizer.step()
            total += loss.detach()
            bar.update()
            if progress and step % max(1, steps // 4) == 0:  # a few host reads per epoch, not one per step
                bar.set_postfix_str(f"epoch {epoch} elbo {-total.item() / ((step + 1) * batch_size):.2f}")
        seconds = time.perf_counter() - start
        model.eval()
        val = elbo_per_example(model.model, model.guide,
                               *model_inputs(model, x_val, y_val, data.n_classes)).mean()
        metrics = {"epoch": epoch, "train_elbo": -total.item() / n, "val_elbo": val.item(), "seconds": seconds}
        history.append(metrics)
        if progress:
            bar.write(f"epoch {epoch:4d}  train ELBO {metrics['train_elbo']:9.3f}  "
                      f"val ELBO {metrics['val_elbo']:9.3f} nats/example  {seconds:6.2f} s")
        if on_epoch:
            on_epoch(metrics, optimizer)
    bar.close()
    return history


def train(config=None, out=None, progress=True, **settings):
    """Train a model as `config` (a `Config`, or keyword settings) says, into run directory `out`.

    Writes config.json, metrics.jsonl, checkpoint.pt (after every epoch) and the figures;
    returns the run directory."""
    config = (config or Config(**settings)).resolved()
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    data = load_dataset(config.dataset, config.data_dir, device, binarize=binarizes(config),
                        val_size=config.val_size, train_size=config.train_size, seed=config.seed)
    model = model_for(config, data).to(device)
    x_val, y_val = data.splits["val"]
    check_objective(model, config.elbo, *model_inputs(model, x_val[:2], y_val[:2], data.n_classes))
    run_dir = make_run_dir(out, config)
    history = []

    def on_epoch(metrics, optimizer):
        history.append(metrics)
        write_metrics(run_dir, history)
        save_checkpoint(run_dir, model, optimizer, metrics["epoch"], config)

    fit(model, data, config.epochs, config.batch_size, config.lr, make_elbo(config.elbo, config.particles, config.jit),
        beta=config.beta, warmup_epochs=config.warmup_epochs, on_epoch=on_epoch, progress=progress)
    figures.run_figures(model, data, history, run_dir)
    if progress:
        print(json.dumps(history[-1]))
    return run_dir
