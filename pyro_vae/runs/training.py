"""`pyro-vae train`: a `Trainer` (svi.py) with the callbacks that make a run directory of it,
and `--resume` (runs layer).

Ctrl-C finishes the current epoch, saves its checkpoint and raises `Interrupted`; a second
Ctrl-C stops at once, keeping the previous checkpoint. A NaN or infinite loss raises `Diverged`
(a `UserError`), keeping the last good checkpoint.
"""

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import pyro
import torch

from .. import distributed
from ..data import Dataset, content_hash, load_source
from ..errors import Diverged, Interrupted, Terminated, UserError, counted
from .. import plots
from ..estimators import active_units, decode, latent_means
from ..files import atomic_write, write_json
from ..models import model_inputs
from ..objectives import check_objective, make_elbo
from ..svi import Callback, Progress, Trainer
from .config import IN_RUN, LR_SCHEDULES, RESUMABLE, SELECT_ON, Config, check_change, resolve_device
from .figures import run_figures
from .store import (TENSORBOARD_DIR, RunLock, check_checkpoint, clear_temporaries, default_run_dir, load_checkpoint,
                    load_weights_and_adam, make_run_dir, model_for, prepare_run_dir, read_config, restore, run_data,
                    save_checkpoint, write_data_facts, write_metrics)

# Seconds a SIGTERM leaves the current epoch to finish before training stops at once (SLURM sends
# SIGKILL 30 s after SIGTERM by default).
GRACE = 20.0


def train(config=None, out=None, progress=True, resume=None, overwrite=False, grace=GRACE, **settings):
    """Train a model as `config` (a `Config`, or keyword settings) says, into run directory `out`.

    Writes config.json, metrics.jsonl, checkpoint.pt (at the start and after every epoch) and the
    figures; returns the run directory. `resume=RUN_DIR` continues that run exactly where its last
    checkpoint stopped, up to `epochs` (its own, or a new total given as a setting). A prior, guide
    or likelihood of your own is a class or function defined at the top level of a module: the
    run records its import path and imports it again to evaluate, sample or resume.

    `out` must be new or empty; `overwrite=True` lets it replace a previous run (its own files
    only). The run holds a lock on its directory while it trains: a second writer fails at once.
    SIGTERM (a scheduler's notice) finishes the current epoch if it ends within `grace` seconds,
    else stops at once; either way the last finished epoch's checkpoint is kept and `Terminated`
    (exit status 143) says how to resume."""
    overrides, raw, arrays = {}, None, None
    if isinstance(settings.get("dataset"), Dataset) or isinstance(getattr(config, "dataset", None), Dataset):
        if resume is not None:
            raise UserError("--resume reads the run's own copy of its data; pass no dataset")
        arrays = settings.pop("dataset") if "dataset" in settings else config.dataset
        if arrays.source is None:
            raise UserError(f"train takes a data set by name or path, or a Dataset made with Dataset.from_arrays; "
                            f"{arrays.name} is neither: pass its name")
        config = Config(**{**(config.to_dict() if config else settings), "dataset": IN_RUN + "data.npz"})
    if resume is not None:
        config, overrides = resume_config(resume, config, settings)
        out = resume
    else:
        raw = config or Config(**settings)
        config = raw.resolved()
    owns_group = distributed.requested() and not torch.distributed.is_initialized()
    device = distributed.setup(resolve_device(config.device))
    try:
        if config.batch_size < distributed.world_size():
            raise UserError(f"--batch-size {config.batch_size} is smaller than the {distributed.world_size()} "
                            f"processes that share each batch")
        with stop_signals(grace) as stop:
            more = resume is not None and settings.get("epochs") is not None  # asked to train on
            return _train(config, out, device, progress and distributed.rank() == 0, resume is not None, stop,
                          overwrite, overrides, raw, arrays, more)
    finally:
        if owns_group:
            distributed.cleanup()


def resume_config(run_dir, config, settings):
    """The run's own config.json with the settings `--resume` may change: epochs, device and
    data_dir replace the recorded ones; a new lr or clip_grad is kept apart (see `record_changes`)."""
    if config is not None:
        raise UserError("resume continues a run with its own config.json: pass settings, not a Config")
    fixed = sorted(k for k, v in settings.items() if v is not None and k not in RESUMABLE)
    if fixed:
        raise UserError(f"--resume continues {run_dir} with the settings in its config.json; only "
                        f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may be given, "
                        f"not {', '.join('--' + k.replace('_', '-') for k in fixed)}")
    config = read_config(run_dir)
    changed = {k: v for k, v in settings.items() if v is not None and k not in CHANGEABLE}
    config = Config(**{**config.to_dict(), **changed}).resolved()
    return config, {k: settings[k] for k in CHANGEABLE if settings.get(k) is not None}


# What a --resume may change in the middle of a run: recorded with its epoch, the original kept.
CHANGEABLE = ("lr", "clip_grad")


def record_changes(config, overrides, epoch):
    """Append to config.changes the new values of `overrides` that differ from the current ones,
    as holding from `epoch` on; config.json keeps the run's original settings."""
    new = {k: v for k, v in overrides.items() if v != config.current(k)}
    if new:
        change = {"epoch": epoch, **new}
        check_change(change, where="")  # the same check as a change read back from config.json
        config.changes.append(change)


class Checkpoints(Callback):
    """After every epoch: metrics.jsonl and checkpoint.pt (process 0 writes), then a stop if
    Ctrl-C was pressed during the epoch."""

    def __init__(self, run_dir, config, stop):
        self.run_dir, self.config, self.stop = run_dir, config, stop

    def on_epoch_end(self, trainer, metrics):
        if distributed.rank() == 0:
            try:
                write_metrics(self.run_dir, trainer.history)
                save_checkpoint(self.run_dir, trainer.model, trainer.optimizer, trainer.epoch, self.config,
                                trainer.history, products=trainer.products.state())
            except OSError as e:
                raise UserError(f"cannot write the checkpoint in {self.run_dir}: {e}") from None
        if self.stop.asked():
            raise self.stop.error(f"after epoch {trainer.epoch} of {self.config.epochs}; checkpoint saved in "
                                  f"{self.run_dir}/checkpoint.pt; continue with: pyro-vae train --resume {self.run_dir}")

    def on_step_end(self, trainer, epoch, step, steps):
        if self.stop.past_deadline():  # SIGTERM, and the epoch would not end within the grace period
            raise self.stop.error(f"during epoch {epoch}; kept the checkpoint of epoch {trainer.epoch} in "
                                  f"{self.run_dir}/checkpoint.pt; continue with: pyro-vae train --resume {self.run_dir}")


def on_rank0(work):
    """work() on process 0 only; its result, or the UserError it raised, reaches every process."""
    result = None
    if distributed.rank() == 0:
        try:
            result = work()
        except UserError as e:
            result = e
    result = distributed.broadcast(result)
    if isinstance(result, UserError):
        raise result
    return result


def _train(config, out, device, progress, resuming, stop, overwrite=False, overrides=None, raw=None, arrays=None,
           more=False):
    locks = []  # process 0's lock on the run directory, held until training ends

    def lock(run_dir):
        locks.append(RunLock(run_dir).acquire())
        return run_dir

    def announce():
        locks[-1].announce()

    try:
        if resuming:  # nobody else may write the run while it is read and continued
            on_rank0(lambda: lock(Path(out)))
        return _train_locked(config, out, device, progress, resuming, stop, overwrite, overrides or {}, lock, announce,
                             raw, arrays, more)
    finally:
        for held in locks:
            held.release()


def _train_locked(config, out, device, progress, resuming, stop, overwrite, overrides, lock, announce, raw=None,
                  arrays=None, more=False):
    pyro.set_rng_seed(config.seed)

    def read_data(config):
        if arrays is not None:  # a Dataset in memory: its arrays, split as the run's settings say
            return load_source(arrays.name, arrays.source, device=device, binarize=config.binarizes,
                               val_size=config.val_size, train_size=config.train_size, seed=config.seed,
                               labels=config.labels, condition=config.condition)
        return run_data(config, device, out if resuming else None)

    data = read_data(config)
    if raw is not None:  # what follows from the data: the condition, a likelihood that fits it, the checks
        config = raw.resolved(data)
        if config.binarizes != data.binarized and data.kind == "pixels":
            data = read_data(config)
    model = model_for(config, data).to(device)
    x_val, y_val = data.splits["val"]
    check_objective(model, config.elbo, *model_inputs(model, x_val[:2], y_val[:2], data.n_classes))
    run_dir = Path(out) if resuming else None
    state = None
    if resuming and (run_dir / "checkpoint.pt").exists():  # killed before its first one: start afresh
        state = load_checkpoint(run_dir / "checkpoint.pt", model, config)
        check_checkpoint(state, model, config, run_dir / "checkpoint.pt")
        record_changes(config, overrides, state["epoch"])
    config.device_used = str(device)
    trainer = Trainer(model, make_elbo(config.elbo, config.particles, config.jit), lr=config.current("lr"),
                      beta=config.beta, warmup_epochs=config.warmup_epochs, clip_grad=config.current("clip_grad"),
                      compile=config.compile, labelled_batches=config.labelled_batches,
                      binarization=config.binarization)
    if state:
        restore(trainer, state, config, run_dir / "checkpoint.pt")
    elif config.init_from is not None:  # a new run (or one killed before its first checkpoint)
        start_from(trainer, config, progress)
    done = trainer.epoch
    if more and ModelSelection(None, config).stopped(trainer.history):  # asked to train on after an early stop:
        config.changes.append({"epoch": done, "patience_from": done})  # recorded, so a later resume counts alike
    if done > config.epochs:
        raise UserError(f"{run_dir} already has {done} epochs; --epochs is the new total, give more than {done}")

    def open_run_dir():  # process 0 writes the run directory; the others learn its name (or its error)
        if resuming:
            announce()
            clear_temporaries(run_dir)
            write_json(run_dir / "config.json", config.to_dict())
            target = run_dir
        else:
            target = Path(out) if out is not None else default_run_dir(config)
            prepare_run_dir(target, overwrite, check_only=True)  # refused before anything is written in it
            lock(target)
            target = make_run_dir(target, config, overwrite)  # checked again under the lock, then written
            announce()
        if arrays is not None:  # the run keeps its own copy of data handed to it in memory, and that copy's checksum
            atomic_write(target / "data.npz", arrays.save_arrays)
            copy = str((target / "data.npz").resolve())
            write_data_facts(target, data, dataset=copy, source=copy, sha256=content_hash(target / "data.npz"))
        else:
            write_data_facts(target, data)
        if data.labelled is not None:  # m2 with --labels N: which training examples kept their label
            y_kept = data.splits["train"][1][torch.as_tensor(data.labelled)].cpu()
            write_json(target / "labelled.json", {
                "labels": len(data.labelled), "seed": config.seed,
                "per_class": torch.bincount(y_kept, minlength=data.n_classes).tolist(),
                "indices": data.labelled.tolist(),
                "about": "indices into the training split (after the seeded validation split and --train-size)"})
        write_metrics(target, trainer.history)  # drops epochs logged after the checkpoint was written
        if not state:
            save_checkpoint(target, model, trainer.optimizer, 0, config, products=trainer.products.state())
        return target

    run_dir = Path(on_rank0(open_run_dir))
    if progress:
        what = f"resuming {run_dir} after epoch {done} of {config.epochs}" if done else \
            f"training {config.model} for {counted(config.epochs, 'epoch')} into {run_dir}"
        print(f"pyro-vae: {what}: {config.dataset} ({len(data.splits['train'][0])} training, "
              f"{len(data.splits['val'][0])} validation examples), {device}, {counted(torch.get_num_threads(), 'thread')}",
              flush=True)
        if config.compile in ("on", "inductor"):
            print(f"pyro-vae: {trainer.capture_note}", flush=True)

    selection = ModelSelection(run_dir, config)
    if resuming and not more and selection.stopped(trainer.history):
        if progress:
            print(f"pyro-vae: nothing to do for {run_dir}: {selection.stopped(trainer.history)}; give --epochs N to "
                  f"train on (patience then counts from epoch {trainer.epoch})", flush=True)
        return run_dir
    callbacks = [Progress()] * bool(progress) + [selection, Checkpoints(run_dir, config, stop)]
    if config.tensorboard != "off" and distributed.rank() == 0 and tensorboard_available():
        callbacks.append(TensorBoard(run_dir, data))
    try:
        trainer.run(data, config.epochs, config.batch_size, callbacks)
    except Diverged as e:
        lr, clip = config.current("lr"), config.current("clip_grad")
        raise Diverged(f"{e}; kept the checkpoint of epoch {trainer.epoch} in {run_dir}/checkpoint.pt; continue "
                       f"from it with a lower learning rate (--lr, now {lr:g}) or clipped gradients "
                       f"(--clip-grad), e.g. pyro-vae train --resume {run_dir} --lr {lr / 10:g} "
                       f"--clip-grad {clip / 10 if clip else 100:g}", e.epoch, e.step) from None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during epoch {trainer.epoch + 1}; kept the checkpoint of epoch "
                          f"{trainer.epoch} in {run_dir}/checkpoint.pt; continue with: "
                          f"pyro-vae train --resume {run_dir}") from None
    if distributed.rank() == 0:
        run_figures(model, data, trainer.history, run_dir, SELECT_ON[config.select_on][0])
        if progress and getattr(model.encoder, "has_density", True):
            note = collapse_note(active_units(latent_means(model, *model_inputs(model, x_val, y_val, data.n_classes))),
                                 where=f"of {config.z_dim}, on the validation split")
            if note:
                print(f"pyro-vae: warning: {note}", file=sys.stderr, flush=True)
        if progress and trainer.captured is not None and trainer.captured.graphs:
            print(f"pyro-vae: captured step: {len(trainer.captured.graphs)} graph(s), one per batch shape, "
                  f"{trainer.captured.seconds:.1f} s to capture{' and compile' if config.compile == 'inductor' else ''}",
                  flush=True)
        elif progress and config.compile == "auto" and "could not be captured" in trainer.capture_note:
            print(f"pyro-vae: {trainer.capture_note}", flush=True)  # "on" said so on stderr when it happened
        products = trainer.products.summary()
        if progress and products:
            print(f"pyro-vae: {products}", flush=True)
        if progress and trainer.stop_reason:
            print(f"pyro-vae: {trainer.stop_reason}", flush=True)
        if progress and trainer.history:
            last = trainer.history[-1]
            bound = f", IWAE bound {last['val_bound']:.3f}" if "val_bound" in last else ""
            print(f"pyro-vae: done after epoch {last['epoch']}: validation ELBO {last['val_elbo']:.3f}{bound} nats per "
                  f"example; metrics, checkpoint and figures in {run_dir}", flush=True)
    return run_dir


def start_from(trainer, config, progress):
    """Put into the trainer's model and optimizer the weights and Adam's moments of config.init_from
    (weights_file made it a checkpoint file): a checkpoint of a model of the same architecture and
    part settings, checked as --resume checks its own. Adam goes on from its moments at this run's
    learning rate (a fresh Adam's first steps are about lr in every weight whatever its gradient,
    a jolt to trained weights). The epochs, the history and the random state start afresh."""
    path = Path(config.init_from)
    where = f"--init-from {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such run directory or checkpoint file")
    try:
        source = dataclasses.replace(config, select_on="elbo")  # its history need not hold the bound
        state = load_checkpoint(path, trainer.model, source)
        check_checkpoint(state, trainer.model, source, path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    saved = json.loads(state["config"]).get("part_args")
    if (saved or None) != (config.part_args or None):  # e.g. the VampPrior's pixels: no shape tells them apart
        raise UserError(f"{where}: its part settings {saved} differ from this run's {config.part_args}")
    try:
        load_weights_and_adam(trainer, state, config, path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if progress:
        print(f"pyro-vae: starting from the weights and Adam's moments of epoch {state['epoch']} in {path}", flush=True)


COLLAPSED_RATE = 0.1  # nats per example: below it the posterior carries next to nothing about x


def collapse_note(units, rate=None, where=""):
    """A sentence saying a posterior collapsed (no active unit, or a rate under COLLAPSED_RATE),
    with what to try; None when it did not. Training, evaluate and compare's summary say it alike."""
    if units != 0 and (rate is None or rate >= COLLAPSED_RATE):
        return None
    said = f"{units} active latent units{' ' + where if where else ''}" + (
        f", KL {rate:.3f} nats per example" if rate is not None else "")
    return (f"posterior collapse ({said}): the decoder ignores z; try more epochs, a KL warm-up "
            f"(--warmup-epochs), or a smaller --beta")


class ModelSelection(Callback):
    """On the validation ELBO (or, select_on "bound", the validation IWAE bound): keep the best
    epoch's state as best.pt, stop when `patience` epochs passed without improvement, and
    (lr_schedule "plateau") scale the learning rate by a factor after a number of epochs without
    improvement. Its state is what the history says, replayed on
    every (re)start, so a resumed run decides as an uninterrupted one would. Epochs before a
    --resume that asked for more epochs after an early stop (config.changes "patience_from") do not
    count against patience."""

    def __init__(self, run_dir, config):
        self.run_dir, self.config = run_dir, config
        # where a --resume asked to train on after an early stop (recorded in config.changes)
        self.since = next((c["patience_from"] for c in reversed(config.changes) if "patience_from" in c), 0)
        self.schedule = LR_SCHEDULES[config.lr_schedule]
        self.key, self.what = SELECT_ON[config.select_on]

    def replay(self, history):
        """(best epoch, best value, epochs without improvement, learning-rate scale) after `history`."""
        best_epoch, best, bad, scale = 0, -math.inf, 0, 1.0
        for m in history:
            if m[self.key] > best:
                best_epoch, best, bad = m["epoch"], m[self.key], 0
            else:
                bad += 1
                if self.schedule and bad % self.schedule[1] == 0:
                    scale *= self.schedule[0]
        return best_epoch, best, bad, scale

    def on_train_start(self, trainer, epochs, steps):
        if self.schedule:
            trainer.set_lr(self.config.current("lr") * self.replay(trainer.history)[3])

    def on_epoch_end(self, trainer, metrics):
        best_epoch, _, bad, scale = self.replay(trainer.history)
        if best_epoch == metrics["epoch"] and self.config.patience and distributed.rank() == 0:
            save_checkpoint(self.run_dir, trainer.model, trainer.optimizer, trainer.epoch, self.config,
                            trainer.history, name="best.pt", products=trainer.products.state())
        if self.schedule:
            trainer.set_lr(self.config.current("lr") * scale)
        waited = min(bad, trainer.epoch - self.since)
        if self.config.patience and waited >= self.config.patience:
            trainer.stop_reason = (f"stopped early after epoch {trainer.epoch}: no better {self.what} for "
                                   f"{self.config.patience} epochs; best epoch {best_epoch}, kept in best.pt")

    def stopped(self, history):
        """The reason a run whose history this is stopped early, or None."""
        best_epoch, _, bad, _ = self.replay(history)
        if self.config.patience and history and min(bad, history[-1]["epoch"] - self.since) >= self.config.patience:
            return f"it stopped early after epoch {history[-1]['epoch']} (best epoch {best_epoch})"
        return None


class TensorBoard(Callback):
    """TensorBoard event files in RUN/tensorboard: the ELBOs, seconds and learning rate per epoch,
    and a grid of samples at the end. metrics.jsonl stays the record; this is for watching."""

    def __init__(self, run_dir, data):
        from torch.utils.tensorboard import SummaryWriter  # the optional extra: present, checked by the caller

        self.writer, self.data = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR)), data

    def on_epoch_end(self, trainer, metrics):
        for key in ("train_elbo", "val_elbo", "val_bound", "seconds"):
            if key in metrics:
                self.writer.add_scalar(key, metrics[key], metrics["epoch"])
        self.writer.add_scalar("lr", trainer.optimizer.param_groups[0]["lr"], metrics["epoch"])
        self.writer.flush()

    def on_train_end(self, trainer):
        try:
            self.add_samples(trainer)
        except (ValueError, RuntimeError):  # training ended on bad weights (a divergence): the scalars say so
            pass
        finally:
            self.writer.close()

    def add_samples(self, trainer):
        model, data = trainer.model, self.data
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        if model.observed == "x" and data.is_image and trainer.history and finite:
            model.eval()
            with torch.no_grad():
                device = next(model.parameters()).device
                labels = torch.arange(16, device=device) % max(1, data.n_classes)
                images, _ = decode(model, *model_inputs(model, torch.zeros(16, data.x_dim, device=device), labels,
                                                        data.n_classes)) if model.conditional and \
                    data.condition == "label" else decode(model, torch.zeros(16, data.x_dim, device=device))
            canvas = plots.grid_canvas(images, data.shape, 8)
            self.writer.add_image("samples", torch.as_tensor(canvas).unsqueeze(0) if canvas.ndim == 2 else
                                  torch.as_tensor(canvas).permute(2, 0, 1), trainer.epoch)


def tensorboard_available():
    try:
        import torch.utils.tensorboard  # noqa: F401 (needs the tensorboard package)
    except ImportError:
        return False
    return True


class Stop:
    """What the signal handlers asked for: stop after this epoch (Ctrl-C, or SIGTERM), or at once
    once the SIGTERM grace period is over."""

    def __init__(self, grace):
        self.grace, self.flag, self.signal, self.deadline = grace, False, None, None

    def ask(self, signum):
        self.flag, self.signal = True, signum
        if signum == signal.SIGTERM and self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def asked(self):
        return distributed.any_process(self.flag)  # every process must stop after the same epoch

    def past_deadline(self):
        """Under torchrun, processes stop together at an epoch's end only (a per-step vote would cost a sync)."""
        return self.deadline is not None and distributed.world_size() == 1 and time.monotonic() > self.deadline

    def error(self, when):
        if self.signal == signal.SIGTERM:
            return Terminated(f"terminated (SIGTERM) {when}")
        return Interrupted(f"interrupted {when}")


@contextlib.contextmanager
def stop_signals(grace=GRACE):
    """Within: the first Ctrl-C (SIGINT) asks training to stop after the current epoch, whose
    checkpoint is then exact; a second raises KeyboardInterrupt at once. SIGTERM asks the same,
    with `grace` seconds for the epoch to end, after which training stops at once keeping the
    last checkpoint. Yields the `Stop` the training callbacks read."""
    stop = Stop(grace)

    def on_sigint(signum, frame):
        if stop.flag:
            raise KeyboardInterrupt
        stop.ask(signum)
        print("\npyro-vae: Ctrl-C: finishing this epoch to save its checkpoint "
              "(Ctrl-C again to stop at once, keeping the last one)", file=sys.stderr, flush=True)

    def on_sigterm(signum, frame):
        stop.ask(signum)

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return
    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
