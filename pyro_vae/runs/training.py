"""`pyro-vae train`: a `Trainer` (svi.py) with the callbacks that make a run directory of it,
and `--resume` (runs layer).

Ctrl-C finishes the current epoch, saves its checkpoint and raises `Interrupted`; a second
Ctrl-C stops at once, keeping the previous checkpoint. A NaN or infinite loss raises `Diverged`
(a `UserError`), keeping the last good checkpoint.
"""

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

import pyro
import torch

from .. import distributed
from ..data import load_dataset
from ..errors import Diverged, Interrupted, UserError
from ..models import model_inputs
from ..objectives import check_objective, make_elbo
from ..svi import Callback, Progress, Trainer
from .config import RESUMABLE, Config, resolve_device
from .figures import run_figures
from .store import (check_checkpoint_config, load_checkpoint, load_weights, make_run_dir, model_for, read_config,
                    save_checkpoint, set_rng_state, write_metrics)


def train(config=None, out=None, progress=True, resume=None, **settings):
    """Train a model as `config` (a `Config`, or keyword settings) says, into run directory `out`.

    Writes config.json, metrics.jsonl, checkpoint.pt (at the start and after every epoch) and the
    figures; returns the run directory. `resume=RUN_DIR` continues that run exactly where its last
    checkpoint stopped, up to `epochs` (its own, or a new total given as a setting). A prior, guide
    or likelihood of your own is a class or function defined at the top level of a module: the
    run records its import path and imports it again to evaluate, sample or resume."""
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
    """The run's own config.json, with the settings `--resume` may change."""
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
                                trainer.history)
            except OSError as e:
                raise UserError(f"cannot write the checkpoint in {self.run_dir}: {e}") from None
        if self.stop.asked():
            raise Interrupted(f"interrupted after epoch {trainer.epoch} of {self.config.epochs}; checkpoint saved "
                              f"in {self.run_dir}/checkpoint.pt; continue with: pyro-vae train --resume {self.run_dir}")


def _train(config, out, device, progress, resuming, stop):
    pyro.set_rng_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, device, binarize=config.binarizes,
                        val_size=config.val_size, train_size=config.train_size, seed=config.seed)
    model = model_for(config, data).to(device)
    x_val, y_val = data.splits["val"]
    check_objective(model, config.elbo, *model_inputs(model, x_val[:2], y_val[:2], data.n_classes))
    trainer = Trainer(model, make_elbo(config.elbo, config.particles, config.jit), lr=config.lr, beta=config.beta,
                      warmup_epochs=config.warmup_epochs, clip_grad=config.clip_grad)
    run_dir = Path(out) if resuming else None
    state = None
    if resuming and (run_dir / "checkpoint.pt").exists():  # killed before its first one: start afresh
        state = load_checkpoint(run_dir / "checkpoint.pt", device)
        check_checkpoint_config(state, config, run_dir / "checkpoint.pt")
        load_weights(model, state, run_dir / "checkpoint.pt")
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.set_lr(config.lr)  # the saved state carries the old rate
            trainer.history = json.loads(state["history"])
            trainer.epoch = state["epoch"]
            set_rng_state(state["rng"])  # last: the model and data above drew from the generators
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{run_dir}/checkpoint.pt is incomplete or from another version ({e})") from None
    done = trainer.epoch
    if done > config.epochs:
        raise UserError(f"{run_dir} already has {done} epochs; --epochs is the new total, give more than {done}")
    # process 0 writes the run directory; the others learn its name (or its error) from it
    if distributed.rank() == 0:
        try:
            run_dir = make_run_dir(out, config)
            for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)
            write_metrics(run_dir, trainer.history)  # drops epochs logged after the checkpoint was written
            if not state:
                save_checkpoint(run_dir, model, trainer.optimizer, 0, config)
        except (UserError, OSError) as e:
            run_dir = e if isinstance(e, UserError) else UserError(f"cannot write {run_dir}: {e}")
    run_dir = distributed.broadcast(run_dir)
    if isinstance(run_dir, UserError):
        raise run_dir
    run_dir = Path(run_dir)
    if progress and done:
        print(f"resuming {run_dir} after epoch {done} of {config.epochs}")

    callbacks = [Progress()] * bool(progress) + [Checkpoints(run_dir, config, stop)]
    try:
        trainer.run(data, config.epochs, config.batch_size, callbacks)
    except Diverged as e:
        clip = config.clip_grad / 10 if config.clip_grad else 100
        raise Diverged(f"{e}; kept the checkpoint of epoch {trainer.epoch} in {run_dir}/checkpoint.pt; continue "
                       f"from it with a lower learning rate (--lr, now {config.lr:g}) or clipped gradients "
                       f"(--clip-grad), e.g. pyro-vae train --resume {run_dir} --lr {config.lr / 10:g} "
                       f"--clip-grad {clip:g}", e.epoch, e.step) from None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during epoch {trainer.epoch + 1}; kept the checkpoint of epoch "
                          f"{trainer.epoch} in {run_dir}/checkpoint.pt; continue with: "
                          f"pyro-vae train --resume {run_dir}") from None
    if distributed.rank() == 0:
        run_figures(model, data, trainer.history, run_dir)
        if progress and trainer.history:
            print(json.dumps(trainer.history[-1]))
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
