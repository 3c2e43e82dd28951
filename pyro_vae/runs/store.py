"""Run directories: the files of a run, written so that none is ever half-written (runs layer).

    RUN_DIR/config.json     every setting, enough to rebuild the model
    RUN_DIR/metrics.jsonl   one JSON object per epoch
    RUN_DIR/checkpoint.pt   tensors and plain data only: loads with torch.load(weights_only=True)

Every file is written to a temporary name and renamed, so a killed process leaves the last
complete version behind. The checkpoint also holds the optimizer, every random number generator's
state and the metrics history, so `train(resume=RUN_DIR)` continues exactly where it stopped.
"""

import json
import os
import pickle
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..errors import UserError
from ..models import build_model
from .config import ARCHITECTURE, Config, resolve_device

CHECKPOINT_FORMAT = "pyro-vae-checkpoint/1"


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_metrics(run_dir, history):
    lines = "".join(json.dumps(m) + "\n" for m in history)
    atomic_write(Path(run_dir) / "metrics.jsonl", lambda f: f.write(lines.encode()))


def read_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_run_dir(out, config):
    """Create (or reuse) the run directory and write config.json into it."""
    if out is None:
        out = Path("runs") / f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_dict())
    except OSError as e:
        raise UserError(f"cannot write the run directory {out}: {e.strerror}") from None
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


def save_checkpoint(run_dir, model, optimizer, epoch, config, history=()):
    """Write RUN_DIR/checkpoint.pt atomically: the state after `epoch` complete epochs."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": json.dumps(list(history)),
    }
    atomic_write(Path(run_dir) / "checkpoint.pt", lambda f: torch.save(state, f))


def load_checkpoint(path, device="cpu"):
    """The checkpoint at `path` as a dict, loaded with weights_only=True: a file that carries a
    pickled Python object (which could run code on loading) is refused."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except pickle.UnpicklingError as e:  # what weights_only=True raises for a pickled object
        what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line), "")
        raise UserError(f"{path}: refused: it holds a pickled Python object, not only tensors and plain data "
                        f"(loading it could run code){'; ' + what if what else ''}") from None
    except Exception as e:  # truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable pyro-vae checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a pyro-vae checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def check_checkpoint_config(state, config, path):
    """Refuse a checkpoint written by a run of another model or configuration."""
    try:
        saved = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: checkpoint has no readable configuration") from None
    wrong = [f"{k} {saved.get(k)!r} (config.json: {getattr(config, k)!r})"
             for k in ARCHITECTURE if saved.get(k) != getattr(config, k)]
    if wrong:
        raise UserError(f"{path} comes from another model or configuration: {', '.join(wrong)}")


def load_weights(model, state, path):
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not fit the model in config.json "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None


def model_for(config, data):
    """The model a config describes, sized for the data set."""
    y_dim = data.n_classes
    x_dim = data.x_dim
    return build_model(config.model, x_dim, y_dim, z_dim=config.z_dim, hidden=config.hidden,
                       likelihood=config.likelihood, prior=config.prior, guide=config.guide)


def read_config(run_dir):
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:
        raise UserError(f"{run_dir}/config.json is not readable ({e})") from None
    return Config.from_dict(saved).resolved()


def load_run(run_dir, device="auto"):
    """(model with trained weights, config, data set) of a finished or interrupted run."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    device = resolve_device(device)
    state = load_checkpoint(run_dir / "checkpoint.pt", device)
    check_checkpoint_config(state, config, run_dir / "checkpoint.pt")
    data = load_dataset(config.dataset, config.data_dir, device, binarize=config.binarizes,
                        val_size=config.val_size, seed=config.seed)
    model = model_for(config, data).to(device)
    load_weights(model, state, run_dir / "checkpoint.pt")
    model.eval()
    return model, config, data
