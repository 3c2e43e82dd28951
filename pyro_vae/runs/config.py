"""The settings of a training run, checked once (runs layer: imports the library layers).

The facts about a model (its default prior, guide and likelihood, what it accepts) are read off
its class in models.py; the sizes that fit each data set are here. A part of your own (a class
or function) is recorded by its import path "package.module:Name", so `evaluate`, `sample` and
`--resume` can build the model again in another process.
"""

import dataclasses
import importlib.util
import os
import re
import typing
from dataclasses import dataclass

import torch
from torch import nn

from pathlib import Path

from ..data import BINARIZATIONS, CONDITIONS, DATASETS, is_builtin
from ..errors import (BadType, BadValue, UserError, count, non_negative_number, one_of, positive_int, positive_number,
                      random_seed, share_or_count)
from ..models import model_class
from ..nets import ACTIVATIONS, NETS, widths
from ..objectives import ELBOS
from ..svi import COMPILE_MODES, LABELLED_BATCHES
from ..parts import GREY_LIKELIHOODS, LIKELIHOODS, REAL_LIKELIHOODS, UNIT_LIKELIHOODS, Y_LIKELIHOODS, import_object, import_path

# Sizes that fit each data set, used where a setting is left as None.
DATASET_DEFAULTS = {
    "digits": {"z_dim": 8, "hidden": 128, "epochs": 100, "batch_size": 64},
    "28x28": {"z_dim": 50, "hidden": 400, "epochs": 20, "batch_size": 256},
    "files": {"z_dim": 16, "hidden": 256, "epochs": 50, "batch_size": 128},  # your own data: a start
}

# A data set value that starts with this names a file inside the run directory (the copy `train`
# keeps of a Dataset handed to it in memory).
IN_RUN = "run:"

# What `--resume` may change: the rest comes from the run's config.json, or it would not be the
# same run. (A new lr or clip_grad, to get past a divergence, makes it differ from an uninterrupted run;
# a compile mode to or from inductor, like another device, rounds differently; auto, on and off agree bit for bit.)
RESUMABLE = ("epochs", "device", "data_dir", "lr", "clip_grad", "compile")

# Settings that decide the model's shape and meaning: a checkpoint must agree with config.json on them.
ARCHITECTURE = ("model", "dataset", "z_dim", "hidden", "likelihood", "prior", "guide", "net", "activation",
                "encoder_net", "decoder_net", "prior_net", "condition")

PARTS = ("likelihood", "prior", "guide")
# Learning-rate schedules on the validation ELBO: (factor, epochs without improvement before it applies).
LR_SCHEDULES = {None: None, "plateau": (0.5, 10)}
# What model selection (--patience, best.pt, the plateau schedule) reads of each epoch's metrics:
# the validation ELBO, or the validation IWAE bound with the training objective's particles.
SELECT_ON = {"elbo": ("val_elbo", "validation ELBO"), "bound": ("val_bound", "validation IWAE bound")}
NET_ROLES = ("encoder_net", "decoder_net", "prior_net")


# The fields training writes, which a user does not set (the train options and compare's settings leave them out).
WRITTEN_BY_TRAINING = ("device_used", "binarization", "changes")


@dataclass
class Config:
    """Every setting of a training run. None means: the data set's default (DATASET_DEFAULTS) for a
    size, the model's own default (its class in models.py) for a part."""

    model: str = "vae"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    z_dim: int | None = None
    hidden: int | list | None = None  # one width, or one per hidden layer
    net: str = "mlp"  # the body of every network: mlp, gated, conv, or "module:Name" of your own
    activation: str = "softplus"
    encoder_net: str | None = None  # another body for one role (None: net)
    decoder_net: str | None = None
    prior_net: str | None = None
    condition: str | None = None  # what conditional models read as y: label, attributes, covariates (None: inferred)
    likelihood: str | None = None
    prior: str | None = None
    guide: str | None = None
    part_args: dict | None = None  # a part's own keyword arguments by kind: {"prior": {"pseudo_inputs": 500}}
    elbo: str | None = None
    particles: int = 1
    beta: float = 1.0
    warmup_epochs: int = 0
    jit: bool = False
    device: str = "auto"
    seed: int = 0
    train_size: int | None = None
    val_size: float = 0.1  # a share of the training split, or (>= 1) a number of examples
    patience: int | None = None  # stop when the validation ELBO has not improved for this many epochs; keep best.pt
    lr_schedule: str | None = None  # "plateau": halve the learning rate after 10 epochs without improvement
    select_on: str = "elbo"  # what patience, best.pt and lr_schedule read: SELECT_ON ("bound" with elbo "iwae")
    init_from: str | None = None  # start from the weights of this run (its best.pt, else checkpoint.pt) or checkpoint
    tensorboard: str = "auto"  # event files in RUN/tensorboard: auto (where tensorboard is installed), on, off
    compile: str = "auto"  # the SVI step captured once per batch shape (capture.py): auto, on, inductor, off
    clip_grad: float | None = None  # clip the gradient's global norm to this; None: no clipping
    labels: int | str | None = None  # m2: keep this many training labels (balanced, seeded), or "all"
    alpha: float = 46.0  # m2: weight of log q(y|x) per labelled example (Pyro's SS-VAE example: 46)
    labelled_batches: str = "mixed"  # m2 with --labels N: labelled examples mixed into every batch, or "separate"
    # Written by training, not set by a user: the device each training call ran on, how its batches
    # were binarized (data.BINARIZATIONS), and the learning rate or clipping a --resume changed,
    # with the epoch from which it held.
    device_used: str | None = None
    binarization: str = "uniform"  # how training pixels are drawn; runs from before it existed: "bernoulli"
    changes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # a path given as a pathlib.Path (dataset, data_dir, init_from): its string
            if isinstance(getattr(self, f.name), os.PathLike):
                setattr(self, f.name, os.fspath(getattr(self, f.name)))

    def current(self, name):
        """A setting as training uses it now: the last --resume change of it, else its value."""
        return next((c[name] for c in reversed(self.changes) if name in c), getattr(self, name))

    def resolved(self, data=None):
        """A copy with the defaults filled in, parts of your own as import paths, every value checked.
        Given the loaded `data`, also what follows from it: the condition, a likelihood that fits
        the data (gaussian for real values; for cvae3, the one over what y is), and the checks that
        the model and the data fit each other (`check_fit`)."""
        self.check_types()
        cls = model_class(self.model)
        if self.dataset not in DATASETS and not self.dataset.startswith(("torchvision:", IN_RUN)):
            if not Path(self.dataset).exists():
                if Path(self.dataset).is_absolute():  # as a run records its own data: gone since
                    raise UserError(f"the data set {self.dataset} is not there (moved or deleted?): put it back "
                                    f"at that path, or a symlink to it (its checksum is checked)")
                raise UserError(f"unknown data set {self.dataset!r}; choose from {', '.join(DATASETS)}, or give a "
                                f".npz or .npy file or a folder of images")
            # found from any folder; a symlink is kept as named (data.json records the file behind it)
            self = dataclasses.replace(self, dataset=os.path.abspath(self.dataset))
        if (self.elbo or "trace") not in ELBOS:
            raise UserError(f"unknown objective {self.elbo!r}; choose from {', '.join(ELBOS)}")
        if isinstance(self.likelihood, str) and ":" not in self.likelihood and self.likelihood not in LIKELIHOODS:
            raise UserError(f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
        for name, value in [("net", self.net)] + [(r, getattr(self, r)) for r in NET_ROLES]:
            if isinstance(value, str) and ":" not in value and value not in NETS:
                raise UserError(f"unknown {name.replace('_', ' ')} {value!r}; choose from {', '.join(NETS)}, or give "
                                f"module:Name of your own")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.condition is not None and self.condition not in CONDITIONS:
            raise UserError(f"unknown condition {self.condition!r}; choose from {', '.join(CONDITIONS)}")
        defaults = DATASET_DEFAULTS["digits" if self.dataset == "digits" else
                                    "28x28" if is_builtin(self.dataset) else "files"]
        filled = {k: defaults[k] if getattr(self, k) is None and k in defaults else getattr(self, k)
                  for k in self.to_dict()}
        if data is not None:
            filled["condition"] = data.condition
            if filled["likelihood"] is None and cls.observed == "y" and data.condition in Y_LIKELIHOODS:
                filled["likelihood"] = Y_LIKELIHOODS[data.condition][0]
            elif filled["likelihood"] is None and data.kind == "real":
                filled["likelihood"] = REAL_LIKELIHOODS[0]
        filled.update({kind: recorded_part(kind, filled[kind]) for kind in PARTS})
        filled.update({role: recorded_part(role.replace("_", " "), filled[role]) for role in ("net",) + NET_ROLES})
        if isinstance(filled["hidden"], (list, tuple)):
            filled["hidden"] = list(widths(filled["hidden"]))
        filled.update(cls.choose_parts(**{kind: filled[kind] for kind in PARTS}))
        c = Config(**filled)
        c.elbo = c.elbo or cls.defaults["elbo"]
        if cls.elbos is not None and c.elbo not in cls.elbos:
            raise BadValue(f"{c.model} sums its label out exactly: its objective is {' or '.join(cls.elbos)}, "
                           f"not {c.elbo!r}")
        if c.labels is not None:
            if c.model != "m2":
                raise BadValue(f"--labels hides training labels for the semi-supervised m2; {c.model} needs every "
                               f"label (or none)")
            if isinstance(c.labels, str) and c.labels != "all":
                raise BadValue(f"labels must be a positive whole number or 'all', got {c.labels!r}")
            if not isinstance(c.labels, str):
                positive_int("labels", c.labels)
        if c.model == "m2" and c.labels is None:
            c.labels = "all"
        non_negative_number("alpha", c.alpha)
        one_of("binarization", c.binarization, BINARIZATIONS)
        one_of("labelled_batches", c.labelled_batches, LABELLED_BATCHES)
        if c.labelled_batches == "separate" and (c.model != "m2" or c.labels == "all"):
            raise BadValue("--labelled-batches separate is for m2 with --labels N, where some labels are hidden")
        for name in ("epochs", "batch_size", "z_dim", "particles"):
            positive_int(name, getattr(c, name))
        widths(c.hidden)
        if data is not None:
            check_fit(c, data)
        for name in ("lr", "clip_grad"):
            if getattr(c, name) is not None:
                positive_number(name, getattr(c, name))
        random_seed("seed", c.seed)
        share_or_count("val_size", c.val_size)
        if c.patience is not None:
            positive_int("patience", c.patience)
        if c.compile not in COMPILE_MODES:
            raise UserError(f"compile is {', '.join(COMPILE_MODES)}, got {c.compile!r}")
        if c.tensorboard not in ("auto", "on", "off"):
            raise UserError(f"tensorboard is auto, on or off, got {c.tensorboard!r}")
        if c.tensorboard == "on" and importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard on needs the tensorboard package: pip install 'pyro-vae[tensorboard]'")
        if c.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown lr_schedule {c.lr_schedule!r}; choose from "
                            f"{', '.join(str(k) for k in LR_SCHEDULES)}")
        if c.train_size is not None:
            positive_int("train_size", c.train_size)
        one_of("select_on", c.select_on, SELECT_ON)
        if c.select_on == "bound" and c.elbo != "iwae":
            raise BadValue(f"--select-on bound reads the validation IWAE bound of --elbo iwae; this run's objective "
                           f"is {c.elbo}: select on its validation ELBO (--select-on elbo)")
        if c.init_from is not None:
            c.init_from = weights_file(c.init_from)
        non_negative_number("beta", c.beta)  # beta 0 with the delta guide: a plain autoencoder
        count("warmup_epochs", c.warmup_epochs)
        if c.jit and (c.warmup_epochs or c.elbo == "iwae"):
            raise UserError("--jit compiles the loss once, so it cannot follow a KL warm-up or the iwae "
                            "objective; drop --jit or those")
        return c

    def check_types(self):
        """Each setting of the type its field declares (a hand-edited config.json is read with this)."""
        if isinstance(self.changes, list):
            for change in self.changes:  # before anything copies them: a deep nesting is refused here
                check_change(change)
        check_part_args(self.part_args)  # before anything copies it, as changes above
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in PARTS + ("net",) + NET_ROLES and (callable(value) or isinstance(value, nn.Module)):
                continue  # a part of your own, in memory: recorded by import path in resolved()
            if not has_type(value, f.type):
                kinds = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
                         list: "a list", dict: "an object", type(None): "null"}
                wanted = " or ".join(kinds[t] for t in typing.get_args(f.type) or (f.type,))
                raise BadType(f"{f.name} must be {wanted}, got {repr(value)[:60]}")

    @property
    def binarizes(self):
        """Whether the data pipeline binarizes pixels: always, except for a likelihood over grey levels."""
        return self.likelihood not in GREY_LIKELIHOODS

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        # a run from before `binarization` was recorded drew its batches with torch.bernoulli
        return cls(**{"binarization": "bernoulli", **{k: v for k, v in d.items() if k in known}})


def weights_file(where):
    """The checkpoint file --init-from names, as an absolute path: a run directory's best.pt where
    it kept one, else its checkpoint.pt; or a file. A path that is gone is kept as it was recorded
    (a resumed run does not read it again); training a new run from it says it is missing."""
    path = Path(where).expanduser()
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "checkpoint.pt"
    return str(path.resolve()) if path.exists() else str(where)


def check_part_args(part_args):
    """part_args: None, or {kind: {keyword: value}} for kinds guide, prior, likelihood, with plain
    values (numbers, text, true/false, null), as config.json can hold them."""
    if part_args is None:
        return
    if not isinstance(part_args, dict) or set(part_args) - {"guide", "prior", "likelihood"}:
        raise BadType(f"part_args maps guide, prior or likelihood to keyword arguments, got {repr(part_args)[:80]}")
    for kind, args in part_args.items():
        if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
            raise BadType(f"part_args[{kind!r}] is {{keyword: value}}, got {repr(args)[:80]}")
        bad = [k for k, v in args.items() if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise BadType(f"part_args[{kind!r}][{bad[0]!r}] must be a number, text, true/false or null, got "
                          f"{repr(args[bad[0]])[:60]}")


def check_change(change, where="changes: "):
    """One entry of Config.changes: {"epoch": N, "lr" and/or "clip_grad": value}, each value as the
    setting itself must be (lr positive, clip_grad positive or null), or {"epoch": N,
    "patience_from": N} where a --resume asked for more epochs after an early stop. `where` starts
    each message."""
    if (not isinstance(change, dict) or set(change) - {"epoch", "lr", "clip_grad", "patience_from"} or not all(
            v is None or isinstance(v, (int, float)) for v in change.values())
            or not isinstance(change.get("epoch"), int) or isinstance(change.get("epoch"), bool)):
        raise BadType(f"{where}each entry is {{\"epoch\": N, \"lr\" or \"clip_grad\": value}}, got "
                      f"{repr(change)[:80]}")
    if "lr" in change:
        positive_number(f"{where}lr", change["lr"])
    if change.get("clip_grad") is not None:
        positive_number(f"{where}clip_grad", change["clip_grad"])
    if "patience_from" in change and (not isinstance(change["patience_from"], int) or change["patience_from"] < 0):
        raise BadType(f"{where}patience_from is an epoch number, got {change['patience_from']!r}")


def check_fit(config, data):
    """Refuse, in one line before training, a model that cannot read this data or a likelihood
    that cannot describe it."""
    cls = model_class(config.model)
    name = config.model
    if cls.conditional and data.condition is None:
        raise UserError(f"{name} conditions on y, and {data.name} has no class labels and no y; give labels or y "
                        f"with the data, or use vae")
    if config.model == "m2" and data.condition != "label":
        raise UserError(f"m2's y is a class label it can sum out; {data.name} conditions on {data.condition}")
    lik = config.likelihood
    if cls.observed == "y":
        wanted = Y_LIKELIHOODS.get(data.condition, ())
        if isinstance(lik, str) and ":" not in lik and lik not in wanted:
            raise UserError(f"{name} predicts y, here {data.condition}: its likelihood is {' or '.join(wanted)}, "
                            f"not {lik}")
    elif data.kind == "real" and lik in UNIT_LIKELIHOODS:
        raise UserError(f"{data.name}: x holds real values ({data.facts.get('scaling', 'standardised')}); the {lik} "
                        f"likelihood is for pixels in [0, 1]: use --likelihood {' or '.join(REAL_LIKELIHOODS)}")


def has_type(value, annotation):
    """isinstance against a field's annotation (e.g. `int | None`), where a bool is not a number
    and a whole number is a float."""
    options = typing.get_args(annotation) or (annotation,)
    if isinstance(value, bool):
        return bool in options
    if isinstance(value, int) and float in options:
        return True
    return isinstance(value, tuple(options))


def recorded_part(kind, choice):
    """How config.json records a part: its name, or the import path of a constructor of your own
    (checked to import again). A built module cannot be recorded: pass its class."""
    if choice is None or (isinstance(choice, str) and ":" not in choice):
        return choice
    if isinstance(choice, str):
        import_object(choice)  # says clearly when it no longer imports
        return choice
    if isinstance(choice, nn.Module):
        raise UserError(f"a run records its {kind} in config.json to build it again: pass the class or "
                        f"constructor of {type(choice).__name__}, not a built module")
    if not callable(choice):
        raise UserError(f"a {kind} is a name, an import path, a constructor or an nn.Module, not "
                        f"{type(choice).__name__}")
    path = import_path(choice)
    if path is None:
        raise UserError(f"{kind} {getattr(choice, '__qualname__', choice)!r} cannot be imported again by another "
                        f"process (it is defined in __main__ or inside a function); define it at the top level of "
                        f"a module so the run can be evaluated, sampled and resumed")
    return path


def resolve_device(name):
    """The torch device a --device setting names (auto: CUDA when torch sees one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")
    return torch.device(name)
