"""Training: stochastic variational inference with an ELBO from `pyro.infer`.

The loss is the ELBO object's `differentiable_loss` of the model/guide pair (the PPL computes
it: Pyro traces the guide, replays the model and scores every site; no loss is written by hand
for a model), minimised by one `torch.optim.Adam` over all the model's parameters. The epoch's
loss is summed on the device and read once per epoch by this loop. The default objective is
`DeviceTrace_ELBO`: Pyro's Trace_ELBO with a `differentiable_loss` that sums the same traced
log-densities the same way but never reads the device (Pyro 1.9's reads every site's log-prob
sum with `.item()` and tests the loss for NaN on the host, which on a GPU makes every step wait
for its kernels).

Speed (see experiments/benchmark.py): Pyro's validation (argument checks on every distribution,
model/guide site matching, shape checks) costs up to ~10% of a small VAE's step on the CPU. It
runs on the first step only, where it catches a malformed model/guide with Pyro's own message, and
is off for the rest of training. `--jit` selects JitTrace_ELBO, but it is not the default: with
torch 2.13's TorchScript executor it measured 2-4x slower than the plain ELBO here
(experiments/jit_check.py), and torch.compile graph-breaks on Pyro's effect handlers.
"""

import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence
from tqdm import tqdm

from . import distributed, figures
from .data import batches, binarize, load_dataset
from .errors import Diverged, Interrupted, UserError
from .evaluate import elbo_per_example
from .models import model_inputs
from .runs import (Config, binarizes, check_checkpoint_config, load_checkpoint, load_weights, make_run_dir,
                   model_for, read_config, resolve_device, save_checkpoint, set_rng_state, write_metrics)


class DeviceTrace_ELBO(Trace_ELBO):
    """Trace_ELBO whose `differentiable_loss` stays on the device: the same traces (Pyro's
    `_get_traces`: guide traced, model replayed against it, log-densities and score parts from
    the trace), the same value (the ELBO estimate) and the same gradient (reparameterised and
    score-function terms alike), without the host reads: no `.item()` per site, no NaN test on
    the host (fit tests the loss on the device and reads the test once per epoch)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._loss_particle(model_trace, guide_trace)
        return loss / self.num_particles if self.num_particles > 1 else loss

    @staticmethod
    def _loss_particle(model_trace, guide_trace):
        """-ELBO of one particle, with the gradient of Trace_ELBO's surrogate."""
        elbo = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
        extra, log_r = [], None  # terms of surrogate - ELBO: none while every site is reparameterised
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_prob, score_function, entropy = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if entropy is not log_prob:  # reparameterised sites use their log-density as entropy term
                extra.append(site["log_prob_sum"] - (0.0 if is_identically_zero(entropy) else entropy.sum()))
            if not is_identically_zero(score_function):  # REINFORCE, Rao-Blackwellised as Pyro does
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                extra.append((log_r.sum_to(site["cond_indep_stack"]) * score_function).sum())
        if not extra:
            return -elbo
        extra = sum(extra)
        return -(elbo + extra - extra.detach())  # the ELBO's value, the surrogate's gradient


def iwae_bound(num_particles, **kwargs):
    """The IWAE bound (Burda et al.): Renyi's alpha = 0 with K vectorized particles."""
    return RenyiELBO(alpha=0, num_particles=num_particles, **kwargs)


# name -> (plain, JIT-compiled) objective; None where no JIT variant gives the same loss
ELBOS = {
    "trace": (DeviceTrace_ELBO, JitTrace_ELBO),
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


def diverged(error):
    """Whether a ValueError is torch's validation refusing a NaN or infinite distribution parameter."""
    return "found invalid values" in str(error)


def make_optimizer(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr)


def fit(model, data, epochs, batch_size=128, lr=1e-3, elbo=None, beta=1.0, warmup_epochs=0, on_epoch=None,
        progress=True, optimizer=None, start_epoch=0, clip_grad=None, inputs=None):
    """Train `model` on `data` (a `Dataset`) with SVI; returns the per-epoch metrics.

    Each metric is a dict with `epoch`, `train_elbo` (the training objective: the ELBO, or its
    beta-weighted or IWAE form), `val_elbo` (the plain ELBO, one Monte Carlo draw per example on
    the fixed binarization), both in nats per example, and `seconds` (training time of the
    epoch). The KL weight is `beta`, ramped up linearly over the first `warmup_epochs`.
    `on_epoch(metrics, optimizer)` is called after each epoch. To continue a run, pass its
    `optimizer` and the number of epochs done as `start_epoch`. `clip_grad` clips the gradient's
    global norm. A NaN or infinite loss raises `Diverged` at the end of its epoch. Under torchrun
    each process takes its shard of every batch (distributed.py). `inputs(images, labels)` gives
    the model's arguments for a batch (default: `model_inputs`; the quadrant task splits images)."""
    # pyro.module registers parameters by name in Pyro's global store; a store still holding an
    # earlier model's tensors under the same names would shadow this model's (JIT tracing and
    # pyro.optim read the store), so start from an empty one.
    pyro.clear_param_store()
    elbo = elbo or make_elbo()
    inputs = inputs or (lambda images, labels: model_inputs(model, images, labels, data.n_classes))
    optimizer = optimizer or make_optimizer(model, lr)
    kl_weight = ScaleLatents(beta)
    model_fn, guide_fn = (kl_weight(model.model), kl_weight(model.guide)) if (beta != 1 or warmup_epochs) \
        else (model.model, model.guide)
    loss_fn = distributed.loss_module(model, elbo, model_fn, guide_fn)  # DDP around the ELBO under torchrun
    world = distributed.world_size()
    if world > 1 and not hasattr(elbo, "differentiable_loss"):
        raise UserError("the iwae objective cannot run under torchrun (RenyiELBO has no differentiable loss)")
    x_train, y_train = data.splits["train"]
    x_val, y_val = data.splits["val"]
    n = len(x_train)
    history = []
    steps = -(-n // batch_size)
    bar = tqdm(total=(epochs - start_epoch) * steps, desc="training", unit="step",
               disable=None if progress else True, leave=False)
    for epoch in range(start_epoch + 1, epochs + 1):
        model.train()
        start = time.perf_counter()
        total = torch.zeros((), device=x_train.device)
        # the first step whose loss was not finite (`steps`: none), kept on the device and read
        # once per epoch, so the check costs no host synchronisation per step
        first_bad = torch.full((), steps, dtype=torch.long, device=x_train.device)
        for step, idx in enumerate(batches(n, batch_size, device=x_train.device)):
            x = binarize(x_train[idx]) if data.binarized else x_train[idx]
            y = y_train[idx]
            if world > 1:  # binarized as a whole first, so the bits do not depend on the number of processes
                part = distributed.shard(len(idx))
                x, y = x[part], y[part]
            if warmup_epochs:
                kl_weight.weight = beta * min(1.0, ((epoch - 1) * steps + step + 1) / (warmup_epochs * steps))
            args = inputs(x, y)
            optimizer.zero_grad(set_to_none=True)
            try:
                # Pyro's argument and support checks cost time on every step: run them on the first
                # step of the run, which is enough to catch a malformed model or guide.
                with pyro.validation_enabled(epoch == start_epoch + 1 and step == 0):
                    if hasattr(elbo, "differentiable_loss"):
                        loss = loss_fn(*args)
                        distributed.backward(loss)  # loss.backward(); under DDP the whole batch's gradient
                    else:  # RenyiELBO (the IWAE bound) only offers loss_and_grads
                        loss = torch.tensor(elbo.loss_and_grads(model_fn, guide_fn, *args))
            except ValueError as e:  # Pyro's validation of a NaN/inf distribution parameter lands here
                if not diverged(e):
                    raise
                first_bad.clamp_(max=step)
                break
            finite = torch.isfinite(loss)
            if clip_grad:
                finite &= torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad))
            first_bad = torch.where(finite | (first_bad < steps), first_bad, step)
            optimizer.step()
            total += loss.detach()
            bar.update()
            if progress and step % max(1, steps // 4) == 0:  # a few host reads per epoch, not one per step
                bar.set_postfix_str(f"epoch {epoch} elbo {-total.item() * world / ((step + 1) * batch_size):.2f}")
        distributed.all_sum(total)
        train_elbo = -total.item() / n  # the one host read of the epoch; on a GPU it waits for the last step
        seconds = time.perf_counter() - start
        if distributed.all_min(first_bad).item() < steps:
            bar.close()
            raise Diverged(f"training diverged: the loss became NaN or infinite at epoch {epoch}, "
                           f"step {first_bad.item() + 1} of {steps}", epoch, first_bad.item() + 1)
        model.eval()
        try:
            val = elbo_per_example(model.model, model.guide,
                                   *inputs(x_val, y_val)).mean()
        except ValueError as e:
            if not diverged(e):
                raise
            val = torch.tensor(float("nan"))
        metrics = {"epoch": epoch, "train_elbo": train_elbo, "val_elbo": val.item(), "seconds": seconds}
        if not math.isfinite(metrics["val_elbo"]):  # the epoch's last step broke the weights
            bar.close()
            raise Diverged(f"training diverged: the weights became NaN or infinite at epoch {epoch}, "
                           f"step {steps} of {steps}", epoch, steps)
        history.append(metrics)
        if progress:
            bar.write(f"epoch {epoch:4d}  train ELBO {metrics['train_elbo']:9.3f}  "
                      f"val ELBO {metrics['val_elbo']:9.3f} nats/example  {seconds:6.2f} s")
        if on_epoch:
            on_epoch(metrics, optimizer)
    bar.close()
    return history


# What `resume` may change: the rest comes from the run's config.json, or it would not be the same run.
# (A new lr or clip_grad, to get past a divergence, makes it differ from an uninterrupted run.)
RESUMABLE = ("epochs", "device", "data_dir", "lr", "clip_grad")


def train(config=None, out=None, progress=True, resume=None, **settings):
    """Train a model as `config` (a `Config`, or keyword settings) says, into run directory `out`.

    Writes config.json, metrics.jsonl, checkpoint.pt (at the start and after every epoch) and the
    figures; returns the run directory. `resume=RUN_DIR` continues that run exactly where its last
    checkpoint stopped, up to `epochs` (its own, or a new total given as a setting).

    Ctrl-C finishes the current epoch, saves its checkpoint and raises `Interrupted`; a second
    Ctrl-C stops at once, keeping the previous checkpoint. A NaN or infinite loss raises
    `Diverged` (a `UserError`), keeping the last good checkpoint."""
    if resume is not None:
        config = resume_config(resume, config, settings)
        out = resume
    else:
        config = (config or Config(**settings)).resolved()
    owns_group = distributed.requested() and not torch.distributed.is_initialized()
    device = distributed.setup(resolve_device(config.device))
    try:
        if config.batch_size < distributed.world_size():
            raise UserError(f"--batch-size {config.batch_size} is smaller than the {distributed.world_size()} "
                            f"processes that share each batch")
        with ctrl_c() as stop:
            return _train(config, out, device, progress and distributed.rank() == 0, resume is not None, stop)
    finally:
        if owns_group:
            distributed.cleanup()


def resume_config(run_dir, config, settings):
    if config is not None:
        raise UserError("resume continues a run with its own config.json: pass settings, not a Config")
    fixed = sorted(k for k, v in settings.items() if v is not None and k not in RESUMABLE)
    if fixed:
        raise UserError(f"--resume continues {run_dir} with the settings in its config.json; only "
                        f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may be given, "
                        f"not {', '.join('--' + k.replace('_', '-') for k in fixed)}")
    config = read_config(run_dir)
    changed = {k: v for k, v in settings.items() if v is not None}
    return Config(**{**config.to_dict(), **changed}).resolved()


def _train(config, out, device, progress, resuming, stop):
    pyro.set_rng_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, device, binarize=binarizes(config),
                        val_size=config.val_size, train_size=config.train_size, seed=config.seed)
    model = model_for(config, data).to(device)
    x_val, y_val = data.splits["val"]
    check_objective(model, config.elbo, *model_inputs(model, x_val[:2], y_val[:2], data.n_classes))
    optimizer = make_optimizer(model, config.lr)
    run_dir = Path(out) if resuming else None
    state, history = None, []
    if resuming and (run_dir / "checkpoint.pt").exists():  # killed before its first one: start afresh
        state = load_checkpoint(run_dir / "checkpoint.pt", device)
        check_checkpoint_config(state, config, run_dir / "checkpoint.pt")
        load_weights(model, state, run_dir / "checkpoint.pt")
        try:
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # the saved state carries the old rate
                group["lr"] = config.lr
            history = json.loads(state["history"])
            set_rng_state(state["rng"])  # last: the model and data above drew from the generators
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{run_dir}/checkpoint.pt is incomplete or from another version ({e})") from None
    done = state["epoch"] if state else 0
    if done > config.epochs:
        raise UserError(f"{run_dir} already has {done} epochs; --epochs is the new total, give more than {done}")
    # process 0 writes the run directory; the others learn its name (or its error) from it
    if distributed.rank() == 0:
        try:
            run_dir = make_run_dir(out, config)
            for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)
            write_metrics(run_dir, history)  # drops epochs logged after the checkpoint was written
            if not state:
                save_checkpoint(run_dir, model, optimizer, 0, config)
        except (UserError, OSError) as e:
            run_dir = e if isinstance(e, UserError) else UserError(f"cannot write {run_dir}: {e}")
    run_dir = distributed.broadcast(run_dir)
    if isinstance(run_dir, UserError):
        raise run_dir
    run_dir = Path(run_dir)
    if progress and done:
        print(f"resuming {run_dir} after epoch {done} of {config.epochs}")

    last_saved = [done]

    def on_epoch(metrics, optimizer):
        history.append(metrics)
        if distributed.rank() == 0:
            try:
                write_metrics(run_dir, history)
                save_checkpoint(run_dir, model, optimizer, metrics["epoch"], config, history)
            except OSError as e:
                raise UserError(f"cannot write the checkpoint in {run_dir}: {e}") from None
        last_saved[0] = metrics["epoch"]
        if stop.asked():
            raise Interrupted(f"interrupted after epoch {metrics['epoch']} of {config.epochs}; checkpoint saved "
                              f"in {run_dir}/checkpoint.pt; continue with: pyro-vae train --resume {run_dir}")

    try:
        fit(model, data, config.epochs, config.batch_size, config.lr,
            make_elbo(config.elbo, config.particles, config.jit), beta=config.beta,
            warmup_epochs=config.warmup_epochs, on_epoch=on_epoch, progress=progress, optimizer=optimizer,
            start_epoch=done, clip_grad=config.clip_grad)
    except Diverged as e:
        clip = config.clip_grad / 10 if config.clip_grad else 100
        raise Diverged(f"{e}; kept the checkpoint of epoch {last_saved[0]} in {run_dir}/checkpoint.pt; continue "
                       f"from it with a lower learning rate (--lr, now {config.lr:g}) or clipped gradients "
                       f"(--clip-grad), e.g. pyro-vae train --resume {run_dir} --lr {config.lr / 10:g} "
                       f"--clip-grad {clip:g}", e.epoch, e.step) from None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during epoch {last_saved[0] + 1}; kept the checkpoint of epoch "
                          f"{last_saved[0]} in {run_dir}/checkpoint.pt; continue with: "
                          f"pyro-vae train --resume {run_dir}") from None
    if distributed.rank() == 0:
        figures.run_figures(model, data, history, run_dir)
        if progress and history:
            print(json.dumps(history[-1]))
    return run_dir


@contextlib.contextmanager
def ctrl_c():
    """Within: the first Ctrl-C (SIGINT) asks training to stop after the current epoch, whose
    checkpoint is then exact; a second raises KeyboardInterrupt at once. Yields an object whose
    `asked()` says whether any process got one."""

    class Stop:
        flag = False

        def asked(self):
            return distributed.any_process(self.flag)  # every process must stop after the same epoch

    stop = Stop()

    def handler(signum, frame):
        if stop.flag:
            raise KeyboardInterrupt
        stop.flag = True
        print("\npyro-vae: Ctrl-C: finishing this epoch to save its checkpoint "
              "(Ctrl-C again to stop at once, keeping the last one)", file=sys.stderr, flush=True)

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
