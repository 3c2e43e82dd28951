"""Training: stochastic variational inference with an ELBO from `pyro.infer`.

The loss is the ELBO object's `differentiable_loss` of the model/guide pair (the PPL computes
it; nothing here writes a loss by hand), minimised by one `torch.optim.Adam` over all the
model's parameters. The epoch's loss is summed on the device and read once per epoch by this
loop. (Pyro 1.9's ELBOs still read the device inside `differentiable_loss`: Trace_ELBO calls
`.item()` on each site's log-prob sum, and every ELBO's `warn_if_nan` tests the loss on the host,
so on a GPU each step synchronises once inside Pyro.)

Speed (see experiments/benchmark.py): Pyro's validation (argument checks on every distribution,
model/guide site matching, shape checks) costs up to ~10% of a small VAE's step on the CPU. It
runs on the first step only, where it catches a malformed model/guide with Pyro's own message, and
is off for the rest of training. JitTrace_ELBO is not used: with torch 2.13's TorchScript
executor it measured 2-4x slower than the plain ELBO here, and torch.compile graph-breaks on
Pyro's effect handlers.
"""

import json
import time

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from tqdm import tqdm

from . import figures
from .data import batches, binarize, load_dataset
from .errors import UserError
from .evaluate import elbo_per_example
from .models import model_inputs
from .runs import (Config, binarizes, make_run_dir, model_for, resolve_device, save_checkpoint,
                   write_metrics)

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}


def make_elbo(name="trace", particles=1):
    if name not in ELBOS:
        raise UserError(f"unknown objective {name!r}; choose from {', '.join(ELBOS)}")
    return ELBOS[name](num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)


def fit(model, data, epochs, batch_size=128, lr=1e-3, elbo=None, on_epoch=None, progress=True):
    """Train `model` on `data` (a `Dataset`) with SVI; returns the per-epoch metrics.

    Each metric is a dict with `epoch`, `train_elbo` and `val_elbo` (nats per example, the
    validation one a one-sample Monte Carlo estimate on the fixed binarization), and `seconds`
    (training time of the epoch). `on_epoch(metrics)` is called after each epoch."""
    elbo = elbo or make_elbo()
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
            with pyro.validation_enabled(epoch == 1 and step == 0):  # validate once, then run fast
                loss = elbo.differentiable_loss(model.model, model.guide,
                                                *model_inputs(model, x, y_train[idx], data.n_classes))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            bar.update()
            if progress and step % max(1, steps // 4) == 0:  # a few host reads per epoch, not one per step
                bar.set_postfix_str(f"epoch {epoch} elbo {-total.item() / ((step + 1) * batch_size):.2f}")
        train_elbo = -total.item() / n  # the one host read of the epoch; on a GPU it waits for the last step
        seconds = time.perf_counter() - start
        model.eval()
        val = elbo_per_example(model.model, model.guide,
                               *model_inputs(model, x_val, y_val, data.n_classes)).mean()
        metrics = {"epoch": epoch, "train_elbo": train_elbo, "val_elbo": val.item(), "seconds": seconds}
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
    run_dir = make_run_dir(out, config)
    history = []

    def on_epoch(metrics, optimizer):
        history.append(metrics)
        write_metrics(run_dir, history)
        save_checkpoint(run_dir, model, optimizer, metrics["epoch"], config)

    fit(model, data, config.epochs, config.batch_size, config.lr,
        make_elbo(config.elbo, config.particles), on_epoch=on_epoch, progress=progress)
    figures.run_figures(model, data, history, run_dir)
    if progress:
        print(json.dumps(history[-1]))
    return run_dir
