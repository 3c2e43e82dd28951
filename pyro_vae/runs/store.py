"""Run directories: the files of a run, written so that none is ever half-written (runs layer).

    RUN_DIR/config.json     every setting, enough to rebuild the model
    RUN_DIR/metrics.jsonl   one JSON object per epoch
    RUN_DIR/checkpoint.pt   tensors and plain data only: loads with torch.load(weights_only=True)

Every file is written to a temporary name and renamed, so a killed process leaves the last
complete version behind. The checkpoint also holds the optimizer, every random number generator's
state and the metrics history, so `train(resume=RUN_DIR)` continues exactly where it stopped.
"""

import fcntl
import json
import os
import pickle
import random
import re
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..errors import UserError, finite, first_line
from ..files import atomic_write, is_temporary, write_error, write_json, write_reason
from ..models import build_model
from ..nets import ProductChoices, widths
from .config import ARCHITECTURE, IN_RUN, NET_ROLES, Config, resolve_device

CHECKPOINT_FORMAT = "pyro-vae-checkpoint/1"
MAX_CONFIG_BYTES = 1 << 20


# The files a run directory may hold, all written by this package; --overwrite deletes only these.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "eval.json", "samples.png", "reconstructions.png",
             "elbo.png", "latent.png", "labelled.json", "data.json", "data.npz")
LOCK_FILE = ".pyro-vae.lock"


TENSORBOARD_DIR = "tensorboard"  # the event files of the TensorBoard callback (pip install 'pyro-vae[tensorboard]')


def is_run_file(path):
    """Whether `path` in a run directory is one of the files this package writes there (the
    tensorboard folder counts when it holds event files only)."""
    path = Path(path)
    name = path.name
    if name == TENSORBOARD_DIR and path.is_dir() and not path.is_symlink():
        return all(p.is_file() and not p.is_symlink() and p.name.startswith("events.out.tfevents.")
                   for p in path.iterdir())
    return (name in RUN_FILES or name == LOCK_FILE or is_temporary(path)
            or re.fullmatch(r"samples(_label\d+|-((label\d+|attributes[0-9._]+|covariates[-0-9._e+]+)-)?n\d+-seed\d+)"
                            r"\.png", name) is not None)


def write_metrics(run_dir, history):
    lines = "".join(json.dumps(m) + "\n" for m in history)
    atomic_write(Path(run_dir) / "metrics.jsonl", lambda f: f.write(lines.encode()))


def read_metrics(run_dir):
    """The epochs' metrics of a run, in order ([] before the first epoch), or a one-line UserError
    for a file that is not what `write_metrics` writes (it writes whole files, atomically: a bad line
    was put there by something else; `train(resume=...)` writes the file again from the checkpoint)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode(errors="replace").splitlines()  # a bad byte spoils its line only
    except OSError as e:
        raise UserError(f"{path} is not readable ({first_line(e)})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
                and record["epoch"] == len(records) + 1
                and all(isinstance(record.get(k), (int, float)) for k in ("train_elbo", "val_elbo", "seconds"))):
            raise UserError(f"{path}: line {number} is not epoch {len(records) + 1}'s metrics; "
                            f"resuming the run writes the file again from its checkpoint")
        records.append(record)
    return records


class RunLock:
    """An exclusive lock (flock) on RUN_DIR/.pyro-vae.lock, held by the one process that writes
    the run. A second writer fails at once, told which process holds it; the kernel drops the
    lock when its process dies, so a lock left by a killed run never blocks."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd = None

    def acquire(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 1000, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise UserError(f"{self.path.parent} is in use by {holder}; wait for it to finish, or choose "
                            f"another --out") from None
        return self

    def announce(self):
        """Write who holds the lock into the lock file, for a second writer's error message (once the
        run is accepted, so a refused attempt changes nothing)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"process {os.getpid()} on {socket.gethostname()} "
                           f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def default_run_dir(config):
    """runs/MODEL-DATASET-TIME, claimed by creating it: a run started in the same second as another
    (two commands in a loop, a script's grid) gets TIME-2, TIME-3, ... instead of the other's folder."""
    base = Path("runs") / f"{config.model}-{Path(str(config.dataset)).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    create_dir(base.parent, "runs folder")
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot write the run directory {candidate}: {write_reason(e)}") from None
    raise UserError(f"{base}: 999 runs started in the same second; give --out")


def create_dir(out, what="run directory"):
    """Make the folder `out` (and its parents) if it is not there; a one-line error if it cannot be."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file (or a file among its parents) holds the name
        raise UserError(f"cannot write the {what} {out}: it, or a folder above it, is a file") from None
    except OSError as e:
        raise UserError(f"cannot write the {what} {out}: {write_reason(e)}") from None
    if not out.is_dir():
        raise UserError(f"cannot write the {what} {out}: it is not a directory")
    return out


def prepare_run_dir(out, overwrite=False, check_only=False):
    """Create the folder of a new run, or check that an existing one may take it: it must be empty
    (a lock or temporary files of this package aside), or with `overwrite` hold only a previous
    run's own files, which are then deleted. Files the package did not write are never touched."""
    out = create_dir(out)
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE and not is_temporary(p)]
    if entries:
        foreign = sorted(p.name for p in entries if not is_run_file(p))
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        if not (out / "config.json").exists():
            raise UserError(f"{out} is not empty and holds no pyro-vae run ({shown}); choose a new or empty --out "
                            f"(nothing was changed)")
        if not overwrite:
            raise UserError(f"{out} already holds a run; continue it with `pyro-vae train --resume {out}`, or "
                            f"replace it with --overwrite (nothing was changed)")
        if foreign:
            raise UserError(f"--overwrite replaces only a run's own files, and {out} also holds others ({shown}); "
                            f"choose a new or empty --out (nothing was changed)")
    if check_only:
        return out
    for p in out.iterdir():  # a previous run's files (with --overwrite), and temporaries of a killed writer
        if p.name != LOCK_FILE and is_run_file(p) and p.is_file():
            p.unlink()
        elif p.name == TENSORBOARD_DIR and is_run_file(p):  # event files only (checked above)
            for event in p.iterdir():
                event.unlink()
            p.rmdir()
    return out


def clear_temporaries(run_dir):
    """Delete the temporary files a killed writer of this package left (and nothing else)."""
    for p in Path(run_dir).iterdir():
        if is_temporary(p) and p.is_file():
            p.unlink(missing_ok=True)


def make_run_dir(out, config, overwrite=False):
    """Create the run directory (see `prepare_run_dir`) and write config.json into it."""
    out = prepare_run_dir(default_run_dir(config) if out is None else out, overwrite)
    write_json(out / "config.json", config.to_dict())
    return out


def rng_state():
    """Every random number generator training draws from, as tensors and plain data (no pickle):
    torch's CPU generator (batch order, dynamic binarization, Pyro's samples), CUDA's, numpy's
    and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_checkpoint(run_dir, model, optimizer, epoch, config, history=(), name="checkpoint.pt", products=()):
    """Write RUN_DIR/checkpoint.pt (or `name`: best.pt) atomically: the state after `epoch`
    complete epochs. `products` is the trainer's `products.state()`: which library ran each large
    CPU product, so a resumed run orders its sums as before."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": json.dumps(list(history)),
        "products": json.dumps(list(products)),
    }
    atomic_write(Path(run_dir) / name, lambda f: torch.save(state, f))


CHECKPOINT_KEYS = {"format", "config", "epoch", "model", "optimizer", "rng", "history", "products"}
OPTIONAL_KEYS = {"products"}  # checkpoints written before products were timed have none


def load_checkpoint(path, model=None, config=None):
    """The checkpoint at `path` as a dict of tensors and plain data, loaded with weights_only=True
    (a file that carries a pickled Python object, which could run code on loading, is refused).

    The file is memory-mapped first and nothing is read into memory until its entries pass: no
    unexpected entry, with `config` the same configuration, and with `model` weights of the model's names and shapes and no more
    tensor data than the model's weights and Adam's two moments (so a small file that claims a
    huge tensor is refused before it is materialised). Then every tensor is copied into memory,
    so the returned dict does not depend on the file staying as it is."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save's format: torch's own message here is about mmap
        size = path.stat().st_size
        raise UserError(f"{path}: not a loadable pyro-vae checkpoint ("
                        f"{'an empty file' if size == 0 else 'cut short, or not the zip archive torch.save writes'})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:  # what weights_only=True raises for a pickled object
        what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line), "")
        raise UserError(f"{path}: refused: it holds a pickled Python object, not only tensors and plain data "
                        f"(loading it could run code){'; ' + what if what else ''}") from None
    except Exception as e:  # truncated or foreign files
        raise UserError(f"{path}: not a loadable pyro-vae checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a pyro-vae checkpoint (format {CHECKPOINT_FORMAT} expected)")
    extra = sorted(map(str, set(state) - CHECKPOINT_KEYS))
    if extra:
        raise UserError(f"{path}: refused: unexpected entries {', '.join(extra)[:100]}")
    missing = sorted(CHECKPOINT_KEYS - OPTIONAL_KEYS - set(state))
    if missing:
        raise UserError(f"{path}: incomplete checkpoint: no {', '.join(missing)}")
    held = sum(t.numel() * t.element_size() for t in tensors_in(state, path))  # also refuses a deep nesting
    if config is not None:
        check_checkpoint_config(state, config, path)
    if model is not None:
        check_weights(state["model"], model, path)
        budget = 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)
        if held > budget:
            raise UserError(f"{path}: refused: it holds {held / 2**20:.0f} MB of tensors, and a checkpoint of this "
                            f"model at most {budget / 2**20:.0f} MB")
    return copy_tensors(state)


MAX_DEPTH = 8  # a checkpoint's entries nest 5 deep (optimizer -> state -> id -> name -> tensor)


def tensors_in(obj, path="checkpoint"):
    """Every tensor in nested dicts, lists and tuples; a UserError past MAX_DEPTH levels."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: refused: entries nested more than {MAX_DEPTH} deep")
        if torch.is_tensor(item):
            yield item
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)


def copy_tensors(obj, depth=0):
    """`obj` with every tensor copied into memory (off a memory-mapped file); its depth was checked."""
    if torch.is_tensor(obj):
        return obj.clone()
    if depth > MAX_DEPTH:
        raise UserError(f"refused: checkpoint entries nested more than {MAX_DEPTH} deep")
    if isinstance(obj, dict):
        return {k: copy_tensors(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(v, depth + 1) for v in obj)
    return obj


def check_weights(weights, model, path):
    """Weights of exactly the model's names, shapes and dtypes."""
    expected = model.state_dict()
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise UserError(f"{path}: model must map parameter names to tensors")
    wrong = sorted(set(map(str, weights)) ^ set(expected))
    if wrong:
        raise UserError(f"{path} does not fit the model in config.json (parameters {', '.join(wrong)[:120]} "
                        f"differ)")
    for name, value in weights.items():
        if value.shape != expected[name].shape or value.dtype != expected[name].dtype:
            raise UserError(f"{path} does not fit the model in config.json ({name}: {value.dtype} "
                            f"{tuple(value.shape)}, the model has {expected[name].dtype} {tuple(expected[name].shape)})")


def check_checkpoint(state, model, config, path):
    """Refuse, one field at a time, a checkpoint that does not fit `model` and `config`: another
    configuration, weights of other names, shapes or types, NaN weights, a damaged epoch, history,
    optimizer or random generator state. Nothing large is read before its name and shape pass."""
    check_checkpoint_config(state, config, path)
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UserError(f"{path}: epoch must be a whole number >= 0, got {epoch!r}")
    try:
        history = json.loads(state["history"]) if isinstance(state["history"], str) else None
    except (ValueError, RecursionError):
        history = None
    if not isinstance(history, list) or len(history) != epoch or not all(
            isinstance(m, dict) and m.get("epoch") == i + 1 and all(
                isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) and finite(m[k])
                for k in ("train_elbo", "val_elbo", "seconds") + ("val_bound",) * (config.select_on == "bound"))
            for i, m in enumerate(history)):
        raise UserError(f"{path}: history must be a JSON list of the {epoch} epochs' metrics (epoch, train_elbo, "
                        f"val_elbo{', val_bound' * (config.select_on == 'bound')}, seconds)")
    check_weights(state["model"], model, path)
    for name, value in state["model"].items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: {name} holds NaN or infinite weights")
    if not isinstance(state["optimizer"], dict) or not isinstance(state["rng"], dict):
        raise UserError(f"{path}: optimizer and rng must be dictionaries")
    products_in(state, path)


def products_in(state, path):
    """The checkpoint's product choices as plain data (None in one written before they were
    timed), checked: a UserError naming the file where they are damaged."""
    if "products" not in state:
        return None
    try:
        products = json.loads(state["products"]) if isinstance(state["products"], str) else None
        if not isinstance(products, list):
            raise ValueError
        ProductChoices("auto").load(products)  # checks them
    except (ValueError, RecursionError, UserError):
        raise UserError(f"{path}: products must be a JSON list of [rows, in, out, forward, grad_x, grad_w] "
                        f"choices (true, false or null)") from None
    return products


def load_weights_and_adam(trainer, state, config, path):
    """The checkpoint's weights and Adam's state into the trainer, at the config's current rate
    (the saved state carries the rate it was saved with): for --resume and --init-from."""
    load_weights(trainer.model, state, path)
    check_optimizer_state(state["optimizer"], trainer.optimizer, path)
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise UserError(f"{path}: damaged optimizer state ({str(e)[:100]})") from None
    trainer.set_lr(config.current("lr"))


def restore(trainer, state, config, path):
    """Continue `trainer` from a checked checkpoint: weights, optimizer, epoch, history, every random
    generator (last: building the model and data drew from them). Everything is checked before the
    run directory is written to."""
    load_weights_and_adam(trainer, state, config, path)
    trainer.history = json.loads(state["history"])
    trainer.epoch = state["epoch"]
    trainer.products.load(products_in(state, path))
    try:
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as e:
        raise UserError(f"{path}: damaged random generator state ({str(e)[:100]})") from None


def check_optimizer_state(saved, optimizer, path):
    """Adam's state as this package writes it: the settings of a fresh Adam (the rate aside) and,
    per parameter, a step count and two moments of the parameter's shape."""
    bad = f"{path}: damaged optimizer state"
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or not isinstance(
            saved.get("param_groups"), list) or len(saved["param_groups"]) != len(optimizer.param_groups):
        raise UserError(f"{bad}: not Adam's state of this model")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group, fresh in zip(saved["param_groups"], optimizer.param_groups):
        if not isinstance(group, dict) or set(group) != set(fresh):
            raise UserError(f"{bad}: its settings are not Adam's")
        # the rate may change; fused/foreach say how torch computes the same update, not what it is
        wrong = [k for k in fresh if k not in ("params", "lr", "fused", "foreach") and group[k] != fresh[k]]
        if wrong:
            raise UserError(f"{bad}: {', '.join(wrong)} differ from the Adam this package uses")
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise UserError(f"{bad}: an entry for no parameter")
        shape = params[index].shape
        if set(entry) != {"step", "exp_avg", "exp_avg_sq"} or not all(
                torch.is_tensor(entry[k]) and entry[k].shape == shape and entry[k].is_floating_point()
                and torch.isfinite(entry[k]).all() for k in ("exp_avg", "exp_avg_sq")) or not (
                torch.is_tensor(entry["step"]) and entry["step"].numel() == 1):
            raise UserError(f"{bad}: the moments of parameter {index} are not two finite tensors of its shape "
                            f"{tuple(shape)} with a step count")


def check_checkpoint_config(state, config, path):
    """Refuse a checkpoint written by a run of another model or configuration."""
    try:
        saved = json.loads(state["config"])
        if not isinstance(saved, dict):
            raise ValueError
    except (KeyError, TypeError, ValueError, RecursionError):
        raise UserError(f"{path}: checkpoint has no readable configuration") from None
    wrong = [f"{k} {saved.get(k)!r} (config.json: {getattr(config, k)!r})"
             for k in ARCHITECTURE if k in saved and not same_setting(k, saved[k], getattr(config, k))]
    if wrong:
        raise UserError(f"{path} comes from another model or configuration: {', '.join(wrong)}")


def load_weights(model, state, path):
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not fit the model in config.json "
                        f"({first_line(e)})") from None


def same_setting(key, saved, now):
    """Whether a checkpoint's architecture setting is config.json's: a condition recorded as None
    (before it was recorded) is the one inferred; one width is a list of one."""
    if key == "condition" and saved is None:
        return True
    if key == "hidden" and saved is not None and now is not None:
        return widths(saved) == widths(now)
    return saved == now


def model_for(config, data):
    """The model a config describes, sized for the data set."""
    model = build_model(config.model, data.x_dim, data.y_dim, z_dim=config.z_dim, hidden=config.hidden,
                        likelihood=config.likelihood, prior=config.prior, guide=config.guide, net=config.net,
                        activation=config.activation, shape=data.shape,
                        nets={r.removesuffix("_net"): getattr(config, r) for r in NET_ROLES},
                        part_args=config.part_args)
    if hasattr(model, "alpha"):  # m2's auxiliary weight
        model.alpha = config.alpha
    return model


def read_config(run_dir):
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    size = (run_dir / "config.json").stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{run_dir}/config.json is {size} bytes; a run's configuration is a few hundred")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:
        raise UserError(f"{run_dir}/config.json is not readable ({str(e)[:100]})") from None
    except RecursionError:
        raise UserError(f"{run_dir}/config.json is not readable (nested too deeply)") from None
    try:
        return Config.from_dict(saved).resolved()
    except UserError as e:  # say which file: the run's own settings are what is wrong
        raise type(e)(f"{run_dir}/config.json: {e}") from None


DATA_FILE = "data.json"  # what the run's data was: source, checksum, scaling, test split, condition


def checkpoint_file(run_dir, which="best"):
    """The file of a run's weights: "best" is best.pt where the run kept one, else checkpoint.pt."""
    if which not in ("best", "last"):
        raise UserError(f"checkpoint is best or last, got {which!r}")
    return "best.pt" if which == "best" and (Path(run_dir) / "best.pt").is_file() else "checkpoint.pt"


def run_data(config, device, run_dir=None):
    """The data set of a run's config, on `device`. A data set in the run directory ("run:NAME")
    is read from `run_dir`; a data file's checksum is checked against the run's data.json, so a
    run is never scored on data that changed under it."""
    name = config.dataset
    if name.startswith(IN_RUN):
        if run_dir is None:
            raise UserError(f"data set {name!r} is a file in a run directory: give the run")
        name = str(Path(run_dir) / name[len(IN_RUN):])
    data = load_dataset(name, config.data_dir, device, binarize=config.binarizes, val_size=config.val_size,
                        train_size=config.train_size, seed=config.seed, labels=config.labels,
                        condition=config.condition)
    recorded = Path(run_dir) / DATA_FILE if run_dir is not None else None
    if recorded is not None and recorded.is_file() and "sha256" in data.facts:
        try:
            then = json.loads(recorded.read_text()).get("sha256")
        except (ValueError, OSError, AttributeError):
            raise UserError(f"{recorded} is not readable JSON") from None
        if then and then != data.facts["sha256"]:
            raise UserError(f"{data.facts['source']} changed since this run was trained (sha256 {then[:12]}... then, "
                            f"{data.facts['sha256'][:12]}... now): its numbers would not be this run's")
    return data


def write_data_facts(run_dir, data, **facts):
    """data.json: where the run's data came from and how it was read (and its checksum); `facts`
    add to or replace what `data` says (the run's own copy of arrays handed to it in memory)."""
    facts = {"dataset": data.name, "shape": list(data.shape), "kind": data.kind, "condition": data.condition,
             "classes": data.classes, "y_names": data.y_names,
             "examples": {s: len(data.splits[s][0]) for s in ("train", "val", "test")}, **data.facts, **facts}
    write_json(Path(run_dir) / DATA_FILE, facts)


def load_run(run_dir, device="auto", checkpoint="best"):
    """(model with trained weights, config, data set) of a finished or interrupted run: the weights
    of its best epoch by validation ELBO (or IWAE bound, --select-on) where it kept them (best.pt,
    with --patience), else of its last (checkpoint.pt); `checkpoint="last"` takes the last."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    device = resolve_device(device)
    data = run_data(config, device, run_dir)
    model = model_for(config, data).to(device)
    path = run_dir / checkpoint_file(run_dir, checkpoint)
    state = load_checkpoint(path, model, config)
    check_checkpoint(state, model, config, path)
    load_weights(model, state, path)
    model.eval()
    model.checkpoint = {"file": path.name, "epoch": state["epoch"]}  # which weights these are
    return model, config, data


def untrained_note(run_dir, model):
    """The warning for weights `load_run` took from before the first epoch ended (a run stopped in
    its first epoch): what evaluate and sample then score or draw is the initial weights."""
    if model.checkpoint["epoch"] == 0:
        return (f"{run_dir} has no finished epoch: these are its initial, untrained weights "
                f"(continue it with --resume)")
    return None
