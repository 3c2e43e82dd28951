"""The `pyro-vae` command: train, evaluate, sample, figures, quadrants, compare, download (the top layer).

Each subcommand calls one function of the Python API (runs/, data.py); the option lists and the
models' defaults in the help are read from the tables and classes they describe (`facts`), and the
library is imported only once a command runs, so --help and argument errors answer at once."""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from . import errors
from .errors import UserError
from .files import atomic_write, cache_dir

# `pyro-vae --help` and a mistyped option answer without importing torch (seconds on its own): the
# option lists and defaults come from `facts()`, read off the tables and classes once and cached
# by the package's source hash; the library is imported when a command runs.


def facts():
    """What the parser shows and checks, read off the package's tables and classes: live where the
    library is already imported (a test that patches a class sees it), else from a cache file kept
    per source hash (so it can never be stale), computed and written on the first call."""
    if "pyro_vae.runs" in sys.modules:
        return compute_facts()
    package = Path(__file__).resolve().parent
    h = hashlib.sha256(sys.version.encode())
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    source = h.hexdigest()
    cache = cache_dir() / f"cli-{source[:24]}.json"
    try:  # a file that is not one this function wrote (damaged, or other JSON) is computed again
        cached = json.loads(cache.read_text())
        if isinstance(cached, dict) and cached.get("source") == source and isinstance(cached.get("facts"), dict):
            return cached["facts"]
    except (OSError, ValueError):
        pass
    found = compute_facts()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: f.write(json.dumps({"source": source, "facts": found}).encode()))
    except (OSError, UserError):  # a read-only home: no cache, only a slower start
        pass
    return found


def compute_facts():
    import dataclasses

    from .data import CONDITIONS, DATASETS
    from .estimators import MAX_BATCH
    from .models import MODELS
    from .nets import ACTIVATIONS, NETS
    from .objectives import ELBOS
    from .parts import GUIDES, LIKELIHOODS, PRIORS
    from .runs import DATASET_DEFAULTS, RESUMABLE, Config
    from .runs.compare import EVALUATION, SETTINGS
    from .runs.config import WRITTEN_BY_TRAINING
    from .runs.quadrants import MODELS as QUADRANT_MODELS
    from .runs.training import GRACE

    return {"models": {name: dict(cls.defaults) for name, cls in MODELS.items()}, "datasets": list(DATASETS),
            "conditions": list(CONDITIONS), "max_batch": MAX_BATCH, "activations": list(ACTIVATIONS),
            "nets": list(NETS), "elbos": list(ELBOS), "priors": list(PRIORS), "guides": list(GUIDES),
            "likelihoods": list(LIKELIHOODS), "dataset_defaults": DATASET_DEFAULTS, "resumable": list(RESUMABLE),
            "config": dataclasses.asdict(Config()),
            "train_settings": [f.name for f in dataclasses.fields(Config)
                               if f.name not in WRITTEN_BY_TRAINING],
            "evaluation": EVALUATION, "compare_settings": [f for f in SETTINGS if f != "seed"],
            "quadrant_models": list(QUADRANT_MODELS), "grace": GRACE}


def per_dataset(setting, F):
    """'per data set: digits N, 28x28 sets M, your own data K', read off the run defaults."""
    d = F["dataset_defaults"]
    return f"per data set: digits {d['digits'][setting]}, 28x28 sets {d['28x28'][setting]}, your own {d['files'][setting]}"


def checked(parse, check):
    """An argparse type: `parse` the text, then the package's own `check` (errors.py) of the value."""

    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if parse is int else ''}number: {text!r}") from None
        try:
            return check("value", value)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be")) from None

    return convert


positive_int = checked(int, errors.positive_int)
positive_float = checked(float, errors.positive_number)


def part_choice(kind, table):
    """An argparse type: a name from the part's table, or an import path MODULE:NAME of your own."""

    def convert(text):
        if text in table or (":" in text and all(text.partition(":")[::2])):
            return text
        raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; choose from {', '.join(table)}, "
                                         f"or MODULE:NAME for one of your own")

    return convert


def val_size_setting(text):
    """--val-size: a share in (0, 1), or a whole number of examples."""
    value = checked(float, errors.share_or_count)(text)
    return int(value) if value >= 1 else value


def widths_setting(text):
    """--hidden: one width, or a comma list of them (one per hidden layer)."""
    values = [positive_int(v.strip()) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def dataset_choice(datasets):
    """--dataset: a built-in name, torchvision:NAME, or the path of a file or folder that exists."""

    def convert(text):
        if text in datasets or text.startswith("torchvision:") or os.path.exists(text):
            return text
        raise argparse.ArgumentTypeError(f"unknown data set {text!r}: not one of {', '.join(datasets)}, and no such "
                                         f"file or folder")

    return convert


def numbers(text):
    """A comma list of numbers, e.g. --covariates 0.3,-1.2."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of numbers, got {text!r}") from None


def class_setting(text):
    """--label: a class's number (7, -1 refused later with the range), or its name (Sneaker)."""
    try:
        return int(text)
    except ValueError:
        return text


def seeds_setting(text):
    """--seeds: N (seeds 0..N-1), or a comma list of seeds."""
    values = [seed_setting(v) for v in text.split(",")]
    return values if "," in text else positive_int(text)


seed_setting = checked(int, errors.random_seed)
non_negative_int = checked(int, errors.count)
non_negative_float = checked(float, errors.non_negative_number)
threads_setting = checked(int, errors.cpu_threads)


def shard_setting(text):
    """--shard I/N."""
    i, _, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"I/N, e.g. 1/2, got {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"I/N with 1 <= I <= N, got {text!r}")
    return i, n


def setting_value(text):
    """A value of a compare option as its type: a whole number, a number, true/false, none, or the text."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def compare_grid(args, COMPARE_SETTINGS):
    """(shared, vary) from compare's options: one value is shared, several are varied."""
    shared, vary = {}, {}
    given = {"model": (args.models or []) + (getattr(args, "model") or [])}
    given.update({f: getattr(args, f) for f in COMPARE_SETTINGS if f != "model"})
    for field, occurrences in given.items():
        if not occurrences:
            continue
        if field == "hidden":
            values = [widths_setting(o) for o in occurrences]
        elif field == "part_args":  # JSON, whose commas are its own: varied by repeating the option
            values = [part_args_setting(o) for o in occurrences]
        else:
            values = [setting_value(v.strip()) for o in occurrences for v in o.split(",")]
        if len(values) == 1:
            shared[field] = values[0]
        else:
            vary[field] = values
    return shared, vary


def part_args_setting(text):
    """compare's --part-args: a JSON object such as {"prior": {"pseudo_inputs": 500}}."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UserError(f"--part-args takes a JSON object such as '{{\"prior\": {{\"pseudo_inputs\": 500}}}}', "
                        f"got {text[:60]!r}") from None


class PartArg(argparse.Action):
    """--prior-arg / --guide-arg / --likelihood-arg KEY=VALUE: one keyword argument of that part's
    constructor (VALUE read as a Python number, True/False/None, else text), gathered by kind into
    the one setting part_args, e.g. {"prior": {"pseudo_inputs": 500}}."""

    def __call__(self, parser, namespace, text, option_string=None):
        import ast

        key, eq, value = text.partition("=")
        if not eq or not key.strip().isidentifier():
            parser.error(f"{option_string} takes KEY=VALUE (a keyword of the part's constructor), got {text!r}")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = value.strip()
        gathered = dict(getattr(namespace, self.dest) or {})
        gathered[self.const] = {**gathered.get(self.const, {}), key.strip(): value}
        setattr(namespace, self.dest, gathered)


def labels_setting(text):
    """--labels: a positive whole number, or all."""
    return text if text == "all" else positive_int(text)


def model_defaults(part, otherwise, F):
    """'default: X for m1/m2, Y otherwise' for a part, read off the model classes."""
    by_default = {}
    for name, defaults in F["models"].items():
        by_default.setdefault(defaults[part], []).append(name)
    common = max(by_default, key=lambda k: len(by_default[k]))
    rest = "; ".join(f"{value} for {'/'.join(names)}" for value, names in by_default.items() if value != common)
    return f"default: {rest}{'; ' if rest else ''}{common} otherwise{otherwise}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except None: those options say in their help what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"pyro-vae: error: {message} (see: {self.prog} --help)\n")


class Version(argparse.Action):
    """--version: the installed package's version, read from its metadata only when asked (the
    lookup costs some 30 ms, which every other command would pay if the parser read it up front)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the installed version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("pyro-vae")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "(not installed)"
        print(f"pyro-vae {found}")  # on stdout, as argparse's own version action prints
        parser.exit(0)


def parser():
    F = facts()
    p = Parser(prog="pyro-vae", description="Variational autoencoders and conditional VAEs in Pyro.")
    p.add_argument("--version", action=Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = HelpFormatter

    t = sub.add_parser("train", help="train a model into a run directory", formatter_class=fmt)
    c = argparse.Namespace(**F["config"])
    MODELS, DATASETS = F["models"], F["datasets"]
    t.add_argument("--model", default=c.model, choices=list(MODELS),
                   help="vae; cvae1..cvae4 (conditional VAEs); m2 (semi-supervised); ae, dae (autoencoder baselines)")
    t.add_argument("--dataset", default=c.dataset, type=dataset_choice(DATASETS), metavar="{" + ",".join(DATASETS) + "}|PATH",
                   help="a built-in data set; or your own: a .npz file (arrays x, and optionally labels, y, x_test, "
                        "labels_test, y_test), a .npy file of x, a folder of images in one subfolder per class, or "
                        "torchvision:NAME (with --data-dir; needs torchvision)")
    t.add_argument("--data-dir", default=None, help="folder holding the IDX .gz files, searched first; then $PYRO_VAE_DATA, "
                   "~/.cache/pyro-vae, /usr/share/datasets")
    t.add_argument("--condition", default=None, choices=F["conditions"],
                   help="what conditional models read as y: the class label (one-hot), attributes (0/1 values of the "
                        "array y) or covariates (real values of y) (default: label where there are labels, else y)")
    t.add_argument("--epochs", type=positive_int, default=None, help=per_dataset("epochs", F))
    t.add_argument("--batch-size", type=positive_int, default=None, help=per_dataset("batch_size", F))
    t.add_argument("--lr", type=positive_float, default=c.lr, help="Adam learning rate")
    t.add_argument("--z-dim", type=positive_int, default=None, help=per_dataset("z_dim", F))
    t.add_argument("--hidden", type=widths_setting, default=None, metavar="N[,N...]",
                   help=per_dataset("hidden", F) + "; a list gives one hidden layer per width, e.g. 512,256")
    t.add_argument("--net", type=part_choice("net", F["nets"]), default=c.net,
                   metavar="{" + ",".join(F["nets"]) + "}|MODULE:NAME",
                   help="the body of every network: fully connected, gated dense layers (VampPrior paper), or "
                        "convolutions for images; or a network class of your own")
    for role in ("encoder", "decoder", "prior"):
        t.add_argument(f"--{role}-net", type=part_choice("net", F["nets"]), default=None, metavar="NAME|MODULE:NAME",
                       help=f"another body for the {role}'s network (default: --net)")
    t.add_argument("--activation", default=c.activation, choices=F["activations"], help="hidden layers' activation")
    t.add_argument("--prior", type=part_choice("prior", F["priors"]), metavar="{" + ",".join(F["priors"]) + "}|MODULE:NAME", default=None,
                   help=f"prior ({model_defaults('prior', '', F)})")
    t.add_argument("--guide", type=part_choice("guide", F["guides"]), metavar="{" + ",".join(F["guides"]) + "}|MODULE:NAME", default=None,
                   help=f"guide q(z|.) ({model_defaults('guide', '', F)})")
    t.add_argument("--likelihood", type=part_choice("likelihood", F["likelihoods"]),
                   metavar="{" + ",".join(F["likelihoods"]) + "}|MODULE:NAME", default=None,
                   help=f"p(x|.) ({model_defaults('likelihood', '; cbernoulli and normal train on grey pixels', F)})")
    for kind, example in (("prior", "e.g. pseudo_inputs=500 (vamp) or components=20 (mog)"),
                          ("guide", "e.g. flows=4 (iaf) or rank=5 (lowrank)"), ("likelihood", "of your own, say")):
        t.add_argument(f"--{kind}-arg", dest="part_args", action=PartArg, const=kind, default=None,
                       metavar="KEY=VALUE", help=f"a keyword argument of the {kind}'s constructor, {example}; "
                                                 f"repeat for more")
    t.add_argument("--elbo", default=None, choices=F["elbos"],
                   help=f"objective: Trace_ELBO, TraceMeanField_ELBO (analytic KL), the IWAE bound, TraceEnum_ELBO "
                        f"({model_defaults('elbo', '', F)})")
    t.add_argument("--particles", type=positive_int, default=c.particles,
                   help="ELBO particles per example (K of the IWAE bound)")
    t.add_argument("--beta", type=non_negative_float, default=c.beta,
                   help="KL weight (beta-VAE); with --model ae, 0 drops the prior term: a plain autoencoder")
    t.add_argument("--warmup-epochs", type=non_negative_int, default=c.warmup_epochs,
                   help="ramp the KL weight linearly from 0 to beta over this many epochs")
    t.add_argument("--jit", action="store_true", help="JIT-compiled ELBO (trace, meanfield)")
    t.add_argument("--device", default=c.device, help="auto (CUDA when available), cpu or cuda")
    t.add_argument("--seed", type=seed_setting, default=c.seed, help="random seed (a CPU run repeats exactly)")
    t.add_argument("--labels", type=labels_setting, default=None, metavar="N|all",
                   help="m2: keep the labels of N training examples (balanced over classes, drawn with --seed) and "
                        "hide the rest (default: all)")
    t.add_argument("--alpha", type=checked(float, errors.non_negative_number), default=c.alpha,
                   help="m2: weight of log q(y|x) per labelled example (Kingma et al.'s alpha; Pyro's example: 46)")
    t.add_argument("--labelled-batches", default=c.labelled_batches, choices=["mixed", "separate"],
                   help="m2 with --labels N: mix the labelled examples into every batch, or give them batches (and "
                        "Adam steps) of their own spread over the epoch, as Pyro's example does")
    t.add_argument("--train-size", type=positive_int, default=None, help="keep only the first N training examples (default: all)")
    t.add_argument("--val-size", type=val_size_setting, default=c.val_size, metavar="SHARE|N",
                   help="the validation split: a share of the training split, or N examples (the published "
                        "Fashion-MNIST setups hold out 10000)")
    t.add_argument("--patience", type=positive_int, default=None, metavar="N",
                   help="early stopping: stop when the validation ELBO (or bound: --select-on) has not improved for N "
                        "epochs, and keep the best epoch's weights as best.pt, which evaluate, sample and figures "
                        "then use (default: off)")
    t.add_argument("--select-on", default=c.select_on, choices=["elbo", "bound"],
                   help="what --patience, best.pt and --lr-schedule read each epoch: the validation ELBO, or (with "
                        "--elbo iwae) the validation IWAE bound with --particles K, the bound the run trains on")
    t.add_argument("--init-from", default=None, metavar="RUN|CHECKPOINT",
                   help="start from the weights of another run of the same model and sizes (its best.pt where it "
                        "kept one, else its last checkpoint), e.g. to train on with another objective; Adam goes "
                        "on from its moments at this run's --lr, the epochs count from 1")
    t.add_argument("--tensorboard", default=c.tensorboard, choices=["auto", "on", "off"],
                   help="TensorBoard event files in RUN/tensorboard (auto: where `pip install 'pyro-vae[tensorboard]'` "
                        "put the package); metrics.jsonl is the record either way")
    t.add_argument("--compile", default=c.compile, choices=["auto", "on", "inductor", "off"],
                   help="on: capture the SVI step (loss and gradient) once per batch shape and replay it, bit for "
                        "bit the eager step's numbers without Pyro's Python per step; auto (default): the same on the "
                        "CPU, where it measures faster, eager elsewhere and, quietly, where the loss cannot be "
                        "captured; inductor: and compile it with Inductor (11-17 s the first time, ~2 s from its disk "
                        "cache; epochs 8-12%% shorter on the README's AMD EPYC); off: Pyro's eager step")
    t.add_argument("--lr-schedule", default=None, choices=["plateau"],
                   help="plateau: halve the learning rate after every 10 epochs without a better validation ELBO")
    t.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATASET-TIME)")
    t.add_argument("--clip-grad", type=positive_float, default=None, metavar="NORM",
                   help="clip the gradient's global norm to NORM (against divergence)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue this run from its last checkpoint, with its own settings "
                        "(only --epochs, a new total, --device, --data-dir, and against divergence --lr and --clip-grad, may be given)")
    t.add_argument("--overwrite", action="store_true",
                   help="let --out replace a previous run (only the files a run writes; never others)")
    t.add_argument("--grace", type=checked(float, errors.non_negative_number), default=F["grace"], metavar="SECONDS",
                   help="on SIGTERM, finish the current epoch if it ends within SECONDS, else stop at once; "
                        "either way the last epoch's checkpoint is kept and the exit status is 143")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    e = sub.add_parser("evaluate", help="test ELBO, importance-sampled log-likelihood -> RUN_DIR/eval.json",
                       formatter_class=fmt)
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--iw-samples", type=positive_int, default=5000, help="K, importance samples per example")
    e.add_argument("--examples", type=positive_int, default=None, help="score only the first N test images (default: all)")
    e.add_argument("--max-batch", type=positive_int, default=F["max_batch"],
                   help="(sample, example) pairs through the networks at once: bounds memory")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--mc-particles", type=positive_int, default=100,
                   help="cvae3: draws z ~ p(z|x) for the Monte Carlo accuracy")
    e.add_argument("--fidelity-samples", type=positive_int, default=100,
                   help="cvae1/2/4: samples per class scored by the reference classifier")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="which weights: the best epoch's by validation ELBO where the run kept them (--patience), "
                        "else the last; or the last")
    e.add_argument("--classifier", default=None,
                   help="reference classifier file (default: ~/.cache/pyro-vae/classifiers/DATASET.pt, "
                        "trained on first use)")

    q = sub.add_parser("quadrants", help="quadrant completion (Sohn et al.): baseline, cvae3, hybrid",
                       formatter_class=fmt)
    q.add_argument("--dataset", default="fashion-mnist", choices=DATASETS, help="data set")
    q.add_argument("--data-dir", default=None, help="folder holding the IDX .gz files (searched first)")
    q.add_argument("--given", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3],
                   help="numbers of given quadrants")
    q.add_argument("--models", nargs="+", default=F["quadrant_models"], choices=F["quadrant_models"],
                   help="baseline network, cvae3 (CVAE bound), hybrid (CVAE + GSNN)")
    q.add_argument("--epochs", type=positive_int, default=5, help="training epochs per model")
    q.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    q.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    q.add_argument("--z-dim", type=positive_int, default=32, help="latent size of cvae3 and hybrid")
    q.add_argument("--hidden", type=positive_int, default=256, help="hidden units per network")
    q.add_argument("--alpha", type=float, default=0.5, help="hybrid: weight of the CVAE bound (1 - alpha: GSNN)")
    q.add_argument("--iw-samples", type=positive_int, default=1000, help="K for -log p(y|x)")
    q.add_argument("--examples", type=positive_int, default=None, help="score only the first N test images")
    q.add_argument("--train-size", type=positive_int, default=None, help="keep only the first N training images")
    q.add_argument("--seed", type=seed_setting, default=0, help="random seed")
    q.add_argument("--out", default="runs/quadrants", help="folder for results.json, weights and figures")
    q.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    q.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    q.add_argument("--quiet", action="store_true", help="no opening line or per-result lines")

    s = sub.add_parser("sample", help="a PNG grid of draws from a trained model", formatter_class=fmt)
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--n", type=positive_int, default=64, help="number of draws")
    s.add_argument("--label", type=class_setting, default=None,
                   help="only this class, by number or name, e.g. 7 or Sneaker (conditional models; default: one row "
                        "per class)")
    s.add_argument("--attributes", type=numbers, default=None, metavar="A,B,...",
                   help="only these attributes, one 0 or 1 per attribute (runs conditioned on attributes)")
    s.add_argument("--covariates", type=numbers, default=None, metavar="U,V,...",
                   help="only these covariate values, one per covariate (runs conditioned on covariates)")
    s.add_argument("--out", default=None, help="PNG, PDF or SVG path (default: a new file in RUN_DIR named for what it "
                                               "holds, e.g. samples-n64-seed0.png)")
    s.add_argument("--replace", action="store_true", help="draw over an existing file")
    s.add_argument("--seed", type=seed_setting, default=0, help="random seed")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")

    f = sub.add_parser("figures", help="draw a run's figures again from its checkpoint (after Ctrl-C, or to replace them)",
                       formatter_class=fmt)
    f.add_argument("run_dir", metavar="RUN_DIR")
    f.add_argument("--device", default="auto", help="auto, cpu or cuda")
    k = sub.add_parser("compare", help="a grid of runs over variants and seeds, summarized with 95%% intervals",
                       formatter_class=fmt,
                       description="Runs one train + evaluate per cell (variant x seed) into --out, then writes "
                                   "summary.md/.csv/.json and figures there. Any train setting may be shared (one value) "
                                   "or varied (a comma list, or the option given again; --hidden varies only by "
                                   "repetition, its commas are layer widths). Rerunning skips finished cells and "
                                   "resumes interrupted ones.")
    k.add_argument("experiment", nargs="?", default=None, metavar="EXPERIMENT.toml",
                   help="an experiment file (seeds, [shared], [vary], [evaluate]) instead of the options")
    k.add_argument("--models", action="append", default=None, metavar="M1,M2,...", help="the models compared")
    k.add_argument("--seeds", type=seeds_setting, default=None, metavar="N|S1,S2,...",
                   help="seeds 0..N-1, or these seeds (default: 5)")
    for field in F["compare_settings"]:
        k.add_argument("--" + field.replace("_", "-"), action="append", default=None,
                       metavar="JSON" if field == "part_args" else "V[,V...]",
                       help=argparse.SUPPRESS if field == "model" else
                       'the parts\' own arguments as JSON, e.g. \'{"prior": {"pseudo_inputs": 500}}\'; repeat the '
                       'option to vary them' if field == "part_args" else None)
    k.add_argument("--iw-samples", type=positive_int, default=F["evaluation"]["iw_samples"],
                   help="K, importance samples per test example")
    k.add_argument("--examples", type=positive_int, default=None, help="score only the first N test examples (default: all)")
    k.add_argument("--fidelity-samples", type=positive_int, default=F["evaluation"]["fidelity_samples"],
                   help="samples per class for label fidelity")
    k.add_argument("--out", default=None, help="the experiment directory (default: the experiment file's folder, or "
                                               "runs/compare)")
    k.add_argument("--jobs", type=positive_int, default=1, help="cells trained at once, in worker processes (the CPU "
                                                                "threads divided among them; one GPU each)")
    k.add_argument("--shard", type=shard_setting, default=None, metavar="I/N",
                   help="take every N-th cell from the I-th: machines sharing a filesystem split one comparison")
    k.add_argument("--summarize", default=None, metavar="DIR", help="only write the summary of DIR from its finished runs")
    k.add_argument("--reference", default=None, metavar="VARIANT",
                   help="the variant differences are paired against (default: the first)")
    k.add_argument("--quiet", action="store_true", help="a line per cell only")
    for command in (t, e, q, s, f, k):
        command.add_argument("--threads", type=threads_setting, default=None, metavar="N",
                             help="CPU threads for torch (default: torch's choice, all cores; on a shared machine "
                                  "or for small networks 1 is often faster)")
    p.train_parser = t  # main() resets its defaults to tell which settings a --resume was given
    d = sub.add_parser("download", help="download an IDX data set, verifying checksums", formatter_class=fmt)
    d.add_argument("dataset", choices=[n for n in DATASETS if n != "digits"])
    d.add_argument("--dest", default=None, help="folder (default: the per-user cache, ~/.cache/pyro-vae/NAME)")
    return p


def main(argv=None):
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # a bad argument (already reported in one line) or --help
        return e.code
    import torch  # the library, now that a command runs

    from .data import download
    from .runs import Config, compare, evaluate_run, redraw_run, sample_run, summarize, train
    from .runs.quadrants import run_quadrants

    F = facts()
    TRAIN_SETTINGS, RESUMABLE = F["train_settings"], F["resumable"]
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    previous = sigterm_raises()
    try:
        if args.command == "train":
            settings = {k: getattr(args, k) for k in TRAIN_SETTINGS}
            if args.resume:
                # the settings on the command line (parsed again with no defaults) must be resumable ones
                p.train_parser.set_defaults(**{k: None for k in TRAIN_SETTINGS})
                given = {k: v for k, v in vars(p.parse_args(argv)).items() if k in TRAIN_SETTINGS and v is not None}
                if args.out:
                    raise UserError("--resume writes into RUN_DIR itself: leave out --out")
                if args.overwrite:
                    raise UserError("--resume continues RUN_DIR: --overwrite does not apply")
                run_dir = train(resume=args.resume, progress=not args.quiet, grace=args.grace,
                                **{k: given.get(k) for k in sorted(set(given) | set(RESUMABLE))})
            else:
                run_dir = train(Config(**settings), out=args.out, progress=not args.quiet, overwrite=args.overwrite,
                                grace=args.grace)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 speaks for all
                print(f"run directory: {run_dir}")
        elif args.command == "compare":
            if args.summarize:
                summarize(args.summarize, reference=args.reference, progress=not args.quiet)
                return 0
            shared, vary = compare_grid(args, F["compare_settings"])
            evaluation = {"iw_samples": args.iw_samples, "examples": args.examples,
                          "fidelity_samples": args.fidelity_samples}
            if args.experiment:
                if shared or vary or args.seeds is not None:
                    raise UserError("compare: give an experiment file or the grid's options, not both")
                path = os.path.abspath(args.experiment)
                # DIR/experiment.toml continues DIR; another file starts a folder beside it named after it
                out = args.out or (os.path.dirname(path) if os.path.basename(path) == "experiment.toml"
                                   else os.path.splitext(path)[0])
                summary = compare(out, experiment=args.experiment, jobs=args.jobs, shard=args.shard,
                                  progress=not args.quiet, threads=args.threads)
            else:
                summary = compare(args.out or "runs/compare", vary=vary, shared=shared,
                                  seeds=5 if args.seeds is None else args.seeds, evaluation=evaluation, jobs=args.jobs,
                                  shard=args.shard, progress=not args.quiet, threads=args.threads)
            if args.reference:
                summarize(args.out or "runs/compare", reference=args.reference, progress=False)
            return 1 if summary.get("failed") else 0
        elif args.command == "evaluate":
            result = evaluate_run(args.run_dir, args.iw_samples, args.device, args.max_batch, progress=not args.quiet,
                                  examples=args.examples, mc_particles=args.mc_particles,
                                  fidelity_samples=args.fidelity_samples, classifier=args.classifier,
                                  checkpoint=args.checkpoint)
            ll = result["test_log_likelihood"]
            ll_text = (f"log-likelihood (K={result['iw_samples']}) {ll:.3f}" if ll is not None
                       else "no log-likelihood (a delta guide has no density)")
            units = result["active_units"]
            print(f"test ELBO {result['test_elbo']:.3f}, {ll_text} nats per example over {result['examples']} test "
                  f"examples, {units} active unit{'' if units == 1 else 's'} (weights of epoch "
                  f"{result['checkpoint_epoch']}, {result['checkpoint']}); written to {args.run_dir}/eval.json")
            if "test_accuracy_mc" in result:
                print(f"test accuracy {result['test_accuracy']:.4f} at z* = mean of p(z|x), "
                      f"{result['test_accuracy_mc']:.4f} averaged over {result['mc_particles']} draws z ~ p(z|x)")
            elif "test_accuracy" in result:
                print(f"test accuracy {result['test_accuracy']:.4f} (argmax q(y|x), trained with {result['labels']} "
                      f"labels)")
            if "label_fidelity" in result:
                print(f"label fidelity {result['label_fidelity']:.3f} (reference classifier test accuracy "
                      f"{result['classifier_test_accuracy']:.4f})")
            if "attribute_agreement" in result:
                print(f"attribute agreement {result['attribute_agreement']:.3f} of {result['agreement_draws']} samples' "
                      f"attributes read back as asked (reference on real test data: "
                      f"{sum(result['reference_test_score']) / len(result['reference_test_score']):.3f})")
            if "covariate_r2" in result:
                for name, r2, slope, ref in zip(result["y_names"], result["covariate_r2"], result["covariate_slope"],
                                                result["reference_test_score"]):
                    print(f"{name}: samples read back with R^2 {r2:.3f}, slope {slope:.3f} against the value asked "
                          f"(reference R^2 on real test data {ref:.3f})")
        elif args.command == "quadrants":
            if not 0 <= args.alpha <= 1:
                raise UserError(f"alpha must be in [0, 1], got {args.alpha}")
            rows = run_quadrants(args.out, args.dataset, args.data_dir, args.given, args.models, args.epochs,
                                 args.batch_size, args.lr, args.z_dim, args.hidden, args.alpha, args.iw_samples,
                                 args.examples, args.train_size, args.seed, progress=not args.quiet,
                                 device=args.device, overwrite=args.overwrite)
            print(f"pyro-vae quadrants: {len(rows)} result{'' if len(rows) == 1 else 's'} in {args.out}/results.json; "
                  f"weights and figures (quadrants-N.png) beside them")
        elif args.command == "sample":
            path = sample_run(args.run_dir, args.out, args.n, args.label, args.seed, args.device, args.replace,
                              attributes=args.attributes, covariates=args.covariates)
            print(f"samples: {path}")
        elif args.command == "figures":
            paths = redraw_run(args.run_dir, args.device)
            print(f"figures: {', '.join(str(p) for p in paths)}")
        elif args.command == "download":
            print(f"{args.dataset}: {download(args.dataset, args.dest)}")
    except endings() as e:
        return ending(e, "pyro-vae")
    finally:
        restore_sigterm(previous)
    return 0


def sigterm_raises():
    """From now on SIGTERM (a scheduler's notice) raises `errors.Terminated`, so that every command
    ends as Ctrl-C ends it: one line, status 143, a file being written left as it was (atomic_write
    cleans up), where the default ended the process without a word. Training installs its own,
    which finishes the epoch first. Returns the handler replaced (None off the main thread, where
    Python cannot set one)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame):
        raise errors.Terminated("terminated (SIGTERM)")

    return signal.signal(signal.SIGTERM, on_sigterm)


def restore_sigterm(previous):
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def endings():
    """The errors a command ends with in one line (`ending`); torch is imported once a command runs."""
    import torch

    return UserError, MemoryError, torch.OutOfMemoryError, KeyboardInterrupt


def ending(error, prog):
    """The one line on stderr, and the exit status, that an error ends a command with: a UserError
    (2), running out of memory (2, with what to shrink) or an interruption, Ctrl-C or SIGTERM (130
    or the signal's status; train's message says what was kept). Anything else is raised again:
    a bug keeps its traceback."""
    import torch

    if isinstance(error, UserError):
        say(f"{prog}: error: {one_line(error)}")
        return 2
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        say(f"{prog}: error: out of memory ({one_line(error) or 'no detail'}); try a smaller --batch-size, "
            f"--hidden or --max-batch")
        return 2
    if isinstance(error, KeyboardInterrupt):
        say(f"{prog}: {one_line(error) or 'interrupted'}")
        return getattr(error, "status", 130)
    raise error


def script(main):
    """Run an experiment script's `main()` and exit as the CLI does: an error it reports (a bad value,
    a missing run directory, memory, Ctrl-C or SIGTERM) in one line named after the script."""
    previous = sigterm_raises()
    try:
        main()
    except endings() as e:
        sys.exit(ending(e, Path(sys.argv[0]).name))
    finally:
        restore_sigterm(previous)


def one_line(error):
    """An exception's message as one line."""
    return " ".join(str(error).split())


def say(line):
    """A message on stderr, from process 0 only under torchrun (every process exits with the same status)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
