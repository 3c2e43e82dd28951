"""`pyro-vae compare`: a grid of runs that differ only in what is compared, over seeds, and a
summary with confidence intervals (runs layer: training, evaluation and figures, composed).

An experiment directory holds `experiment.toml` (the grid: shared settings, the settings that
vary, the seeds, the evaluation settings), one run directory per cell (variant x seed), each made
by the same `train` and `evaluate_run` as a single run, and the summary written from whatever
cells have finished: `summary.md`, `summary.csv`, `summary.json` and three figures.

Rerunning the same comparison skips finished cells and resumes interrupted ones from their last
checkpoint, so a killed comparison loses at most an epoch of each cell that was running.
"""

import csv
import io
import itertools
import json
import math
import os
import statistics
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
from scipy import stats as scipy_stats

from .. import plots
from ..errors import BadValue, UserError, cpu_threads, positive_int, random_seed
from ..files import atomic_write, write_error, write_json
from ..models import model_class
from .config import WRITTEN_BY_TRAINING, Config
from .evaluation import evaluate_run
from .figures import conditional_panels
from .store import load_run, read_config, read_metrics
from .training import COLLAPSED_RATE, train

EXPERIMENT_FILE = "experiment.toml"
# What `compare` may vary or share: every train setting a user sets (not what training writes).
SETTINGS = [f for f in Config.__dataclass_fields__ if f not in WRITTEN_BY_TRAINING + ("data_dir", "device")]
EVALUATION = {"iw_samples": 1000, "examples": None, "fidelity_samples": 100}
MAX_SEEDS = 10_000  # a cell per seed and variant, each a training run: more is a typo
# The metrics of the summary: eval.json key -> (what it is, whether higher is better).
METRICS = {
    "test_log_likelihood": ("importance-sampled test log-likelihood, nats per example", True),
    "test_elbo": ("test ELBO, nats per example", True),
    "rate": ("rate: KL(q(z|.) || p(z|.)) per example, nats (one draw)", None),
    "distortion": ("distortion: -E_q log p(obs|z, .) per example, nats (one draw)", False),
    "active_units": ("active latent units (Cov_x E[z|x] > 0.01)", None),
    "label_fidelity": ("label fidelity: share of class-conditional samples the reference classifier calls the class asked",
                       True),
    "test_accuracy": ("test accuracy of the predicted class", True),
    "seconds_per_epoch": ("seconds per training epoch (median over epochs)", False),
}


# The metrics that are terms of a bound: shown per kind of bound, never on one axis across kinds.
PER_KIND = ("test_log_likelihood", "test_elbo", "rate", "distortion")


def t_interval(values, confidence=0.95):
    """(mean, half-width of the Student-t interval over the values, n); the half-width is nan for one value."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, 1
    return mean, float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n), n


# --- the grid ------------------------------------------------------------------------------


def grid(vary, seeds):
    """The cells: one per combination of the varied settings (in the order given) and seed, as
    (variant name, seed, settings)."""
    keys = list(vary)
    cells = []
    for values in itertools.product(*(vary[k] for k in keys)):
        chosen = dict(zip(keys, values))
        cells += [(variant_name(chosen), seed, {**chosen, "seed": seed}) for seed in seeds]
    return cells


def variant_name(chosen):
    """A variant's folder-safe name: the model first, then key=value for every other varied setting."""
    parts = [str(chosen["model"])] if "model" in chosen else []
    parts += [format_value(v) if k == "part_args" else f"{k}={format_value(v)}" for k, v in chosen.items()
              if k != "model"]
    name = ",".join(parts) or "run"
    return name.replace("/", "_").replace(":", "_")


def format_value(v):
    if isinstance(v, dict):  # part_args: prior.pseudo_inputs=500
        return "+".join(f"{kind}.{k}={a}" for kind, args in v.items() for k, a in (args or {}).items()) or "none"
    return ".".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def check_experiment(shared, vary, seeds):
    """Refuse, in one line, a grid that cannot be run: unknown settings, a setting both shared
    and varied, nothing to compare, a list where one value is wanted."""
    unknown = sorted((set(shared) | set(vary)) - set(SETTINGS))
    if unknown:
        raise UserError(f"compare: unknown setting(s) {', '.join(unknown)}; any train setting may be shared or varied: "
                        f"{', '.join(SETTINGS)}")
    both = sorted(set(shared) & set(vary))
    if both:
        raise UserError(f"compare: {', '.join(both)} both shared and varied; give each once")
    if "seed" in shared or "seed" in vary:
        raise UserError("compare: seeds are given with --seeds N (0..N-1) or --seeds 3,7,11, not as a setting")
    for k, values in vary.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"compare: {k} varies over a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"compare: {k} lists a value twice ({values})")
    for seed in seeds:
        random_seed("compare: each seed", seed)
    if not seeds:
        raise UserError("compare: no seeds; give --seeds N (0..N-1) or a list")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"compare: a seed is listed twice, in {str(seeds)[:80]}")
    for values in itertools.product(*vary.values()):  # a bad value says so before any training
        Config(**{**shared, **dict(zip(vary, values)), "seed": seeds[0]}).resolved()


def experiment_text(shared, vary, seeds, evaluation):
    """experiment.toml: the grid as TOML (written by hand: tomllib only reads)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):  # part_args, as an inline table: {prior = {pseudo_inputs = 500}}
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if v is None:
            raise UserError("compare: TOML has no null, so a part argument of None cannot be recorded in "
                            "experiment.toml; leave it out (the part's default)")
        return json.dumps(str(v))

    lines = ["# pyro-vae compare: the grid of this experiment directory (pyro-vae compare THIS_FILE runs it)",
             f"seeds = {value(list(seeds))}", "", "[shared]"]
    lines += [f"{k} = {value(v)}" for k, v in shared.items() if v is not None]
    lines += ["", "[vary]"] + [f"{k} = {value(v)}" for k, v in vary.items()]
    lines += ["", "[evaluate]"] + [f"{k} = {value(v)}" for k, v in evaluation.items() if v is not None]
    return "\n".join(lines) + "\n"


def seed_list(seeds):
    """The seeds of a grid: N means 0..N-1; a list is kept as given (`check_experiment` reads its values)."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 0 < seeds <= MAX_SEEDS:
            raise BadValue(f"compare: seeds is a number of seeds in 1..{MAX_SEEDS} or a list of seeds, got "
                           f"{str(seeds)[:40]}")
        return list(range(seeds))
    if not isinstance(seeds, (list, tuple)) or len(seeds) > MAX_SEEDS:
        raise BadValue(f"compare: seeds is a number of seeds in 1..{MAX_SEEDS} or a list of at most {MAX_SEEDS} seeds, "
                       f"got {str(seeds)[:80]}")
    return list(seeds)


def check_evaluation(evaluation, where):
    """The evaluation settings, checked as `evaluate_run` checks them, before any cell trains."""
    unknown = sorted(set(evaluation) - set(EVALUATION))
    if unknown:
        raise UserError(f"{where}: unknown evaluation setting(s) {', '.join(unknown)}; choose from {', '.join(EVALUATION)}")
    for key, value in evaluation.items():
        if value is not None or key != "examples":  # examples None: all of the test split
            try:
                positive_int(key, value)
            except UserError as e:
                raise type(e)(f"{where}: evaluation {e}") from None
    return evaluation


def read_experiment(path):
    """(shared, vary, seeds, evaluation) of an experiment TOML file, or a one-line UserError."""
    path = Path(path)
    try:
        if path.stat().st_size > 1 << 20:
            raise UserError(f"{path}: {path.stat().st_size} bytes; an experiment file is a few lines")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable ({type(e).__name__})") from None
    return parse_experiment(text, path)


def parse_experiment(text, path="experiment"):
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    extra = sorted(set(spec) - {"seeds", "shared", "vary", "evaluate"})
    if extra:
        raise UserError(f"{path}: unknown table(s) or key(s) {', '.join(extra)}; an experiment has seeds, [shared], "
                        f"[vary] and [evaluate]")
    seeds = spec.get("seeds", 5)
    seeds = seed_list(seeds)
    for table in ("shared", "vary", "evaluate"):
        if not isinstance(spec.get(table, {}), dict):
            raise UserError(f"{path}: {table} is a table ([{table}]), not a value")
    evaluation = check_evaluation({**EVALUATION, **spec.get("evaluate", {})}, path)
    return dict(spec.get("shared", {})), dict(spec.get("vary", {})), seeds, evaluation


def extension(before, after):
    """What `after` adds to the grid `before` ("model m2, seeds 5, 6"), or None where it is not an
    extension: the same shared and evaluation settings and the same varied keys, every recorded value
    and seed kept, so every finished cell still means what it meant."""
    (shared0, vary0, seeds0, eval0), (shared1, vary1, seeds1, eval1) = before, after
    if shared0 != shared1 or eval0 != eval1 or list(vary0) != list(vary1) or not set(seeds0) <= set(seeds1):
        return None
    added = []
    for k in vary0:
        kept = [v for v in vary1[k] if v in vary0[k]]
        if len(kept) != len(vary0[k]):
            return None
        new = [format_value(v) for v in vary1[k] if v not in vary0[k]]
        if new:
            added.append(f"{k} {', '.join(new)}")
    new_seeds = [str(s) for s in seeds1 if s not in seeds0]
    if new_seeds:
        added.append(f"seeds {', '.join(new_seeds)}")
    return "; ".join(added)


# --- running it ----------------------------------------------------------------------------


def compare(out, vary=None, seeds=5, shared=None, evaluation=None, experiment=None, jobs=1, shard=None,
            progress=True, threads=None):
    """Run a comparison into experiment directory `out` and summarize it; returns the summary dict.

    `vary` maps a train setting to the list of values compared (e.g. {"model": ["cvae1", "cvae2"]});
    `shared` holds the settings every cell has; `seeds` is N (seeds 0..N-1) or a list; `evaluation`
    the `evaluate_run` settings (iw_samples, examples, fidelity_samples). Or `experiment`: the path
    of a TOML file holding all of that (copied into `out` as experiment.toml).

    `jobs` cells train at once in worker processes, the CPU threads divided among them (one GPU each
    where there are several); `shard=(i, n)` takes every n-th cell from the i-th (1-based), so
    machines sharing a filesystem split one comparison. A second call skips finished cells and
    resumes interrupted ones."""
    if experiment is not None:
        if vary or shared:
            raise UserError("compare: give an experiment file or the grid's settings, not both")
        shared, vary, seeds, evaluation = read_experiment(experiment)
    shared, vary = dict(shared or {}), dict(vary or {})
    seeds = seed_list(seeds)
    evaluation = {**EVALUATION, **(evaluation or {})}
    if not vary:
        raise UserError("compare: nothing varies; give at least one setting with several values (e.g. --models "
                        "cvae1,cvae2)")
    check_experiment(shared, vary, seeds)
    check_evaluation(evaluation, "compare")
    positive_int("jobs", jobs)
    if threads is not None:
        cpu_threads("threads", threads)
    out = Path(out)
    text = experiment_text(shared, vary, seeds, evaluation)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    recorded = out / EXPERIMENT_FILE
    if recorded.is_file():
        before, after = read_experiment(recorded), parse_experiment(text)
        if before != after:
            added = extension(before, after)
            if added is None:
                raise UserError(f"{out} holds another experiment ({recorded} differs from these settings, other than by "
                                f"added values or seeds); choose another --out, or run `pyro-vae compare {recorded}` "
                                f"to continue that one")
            if added:  # else the same grid in another order: the recorded file stands
                atomic_write(recorded, lambda f: f.write(text.encode()))
                if progress:
                    print(f"pyro-vae compare: {out}'s grid extended by {added}; its finished cells are kept",
                          flush=True)
    else:
        atomic_write(recorded, lambda f: f.write(text.encode()))
    cells = grid(vary, seeds)
    if shard is not None:
        i, n = shard
        if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n):
            raise BadValue(f"shard is i/n with 1 <= i <= n, got {i}/{n}")
        cells = cells[i - 1::n]
    todo = [c for c in cells if not finished(out / cell_dir(c), evaluation)]
    if progress:
        print(f"pyro-vae compare: {len(cells)} cells ({len(set(c[0] for c in cells))} variants x {len(seeds)} seeds"
              f"{f', shard {shard[0]}/{shard[1]}' if shard else ''}) in {out}: {len(cells) - len(todo)} done, "
              f"{len(todo)} to run, {jobs} at a time", flush=True)
    failures = run_cells(out, todo, shared, evaluation, jobs, progress, threads)
    summary = summarize(out, progress=progress)
    if failures:
        summary["failed"] = failures
    return summary


def cell_dir(cell):
    name, seed, _ = cell
    return f"{name}-seed{seed}"


def finished(run_dir, evaluation):
    """Whether a cell's run has trained all its epochs and been evaluated with these settings."""
    result = run_dir / "eval.json"
    if not result.is_file() or not (run_dir / "config.json").is_file():
        return False
    try:
        scored = json.loads(result.read_text())
        config = read_config(run_dir)
        metrics = read_metrics(run_dir)
    except (ValueError, OSError, UserError):
        return False
    return (bool(metrics) and metrics[-1]["epoch"] >= config.epochs and scored.get("iw_samples") == evaluation["iw_samples"]
            and scored.get("examples_asked") == evaluation["examples"])


def run_cells(out, cells, shared, evaluation, jobs, progress, threads=None):
    """Train and evaluate each cell, `jobs` at a time; returns {cell: error} for those that failed
    (the others are not held up by them)."""
    failures = {}
    if jobs == 1 or len(cells) <= 1:
        for k, cell in enumerate(cells, 1):
            error = run_cell(str(out), cell, shared, evaluation, threads, progress)
            report(k, len(cells), cell, error, progress)
            if error:
                failures[cell_dir(cell)] = error
        return failures
    per_worker = max(1, (threads or os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, str(out), cell, shared, evaluation, per_worker, False, index % jobs): cell
                   for index, cell in enumerate(cells)}
        for k, future in enumerate(as_completed(futures), 1):
            cell = futures[future]
            error = future.result()
            report(k, len(cells), cell, error, progress)
            if error:
                failures[cell_dir(cell)] = error
    return failures


def report(k, total, cell, error, progress):
    if progress:
        print(f"pyro-vae compare: [{k}/{total}] {cell_dir(cell)}: {'failed: ' + error if error else 'done'}", flush=True)


def run_cell(out, cell, shared, evaluation, threads=None, progress=False, worker=0):
    """Train (or resume) one cell's run and evaluate it; returns None, or the one-line error that
    stopped it. Runs in a worker process under --jobs."""
    if threads:
        torch.set_num_threads(threads)
    settings = {**shared, **cell[2]}
    if settings.get("device", "auto") == "auto" and torch.cuda.device_count() > 1:
        settings["device"] = f"cuda:{worker % torch.cuda.device_count()}"  # one GPU per worker
    run_dir = Path(out) / cell_dir(cell)
    if finished(run_dir, evaluation):  # another shard, or another worker, finished it meanwhile
        return None
    try:
        if (run_dir / "config.json").is_file():
            config = read_config(run_dir)
            try:
                done = read_metrics(run_dir)
            except UserError:  # damaged: the resume writes it again from the checkpoint
                done = []
            if not done or done[-1]["epoch"] < config.epochs:
                train(resume=run_dir, progress=progress)
        else:
            train(out=run_dir, progress=progress, **settings)
        result = evaluate_run(run_dir, iw_samples=evaluation["iw_samples"], examples=evaluation["examples"],
                              fidelity_samples=evaluation["fidelity_samples"], progress=progress)
        result["examples_asked"] = evaluation["examples"]
        write_json(run_dir / "eval.json", result)
    except UserError as e:
        return str(e)
    return None


# --- the summary ---------------------------------------------------------------------------


def kind_of(config):
    """What a run's log-likelihood is of: log p(x), log p(x|y) or log p(y|x). Different kinds are
    not ranked together: one is a density of the image, another of a label given the image."""
    cls = model_class(config.model)
    if cls.observed == "y":
        return "log p(y|x)"
    if cls.conditional and config.model != "m2":
        return "log p(x|y)"
    return "log p(x)"


def read_cells(out):
    """Every run directory under `out` with what it holds: (name, variant, seed, config, metrics,
    eval dict or None, what is missing)."""
    cells = []
    for run_dir in sorted(p for p in Path(out).iterdir() if (p / "config.json").is_file()):
        variant, _, seed = run_dir.name.rpartition("-seed")
        try:
            config = read_config(run_dir)
        except UserError as e:
            cells.append((run_dir.name, variant, seed, None, [], None, [f"config.json: {e}"]))
            continue
        missing = []
        try:
            metrics = read_metrics(run_dir)
        except UserError as e:
            metrics = []
            missing.append(str(e))
        if not metrics:
            missing.append("no finished epoch")
        elif metrics[-1]["epoch"] < config.epochs:
            missing.append(f"trained {metrics[-1]['epoch']} of {config.epochs} epochs")
        result = None
        if (run_dir / "eval.json").is_file():
            try:
                result = json.loads((run_dir / "eval.json").read_text())
            except ValueError:
                missing.append("eval.json unreadable")
        else:
            missing.append("not evaluated (no eval.json)")
        if result is not None and metrics:
            result = {**result, "seconds_per_epoch": statistics.median(m["seconds"] for m in metrics)}
        cells.append((run_dir.name, variant, int(seed) if seed.isdigit() else seed, config, metrics, result, missing))
    return cells


def summarize(out, reference=None, progress=True):
    """Write summary.md, summary.csv, summary.json and the figures of an experiment directory from
    the cells that have finished; returns the summary dict. `reference`: the variant the others are
    compared with, paired by seed (default: the first)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is not an experiment directory")
    cells = read_cells(out)
    if not cells:
        raise UserError(f"{out} holds no runs yet: nothing to summarize")
    check_summary_files(out)
    order = variant_order(out, cells)
    reference = reference or order[0]
    if reference not in order:
        raise UserError(f"reference {reference!r} is not a variant here; choose from {', '.join(order)}")
    by_variant = {v: [c for c in cells if c[1] == v and c[5] is not None] for v in order}
    kinds = {v: kind_of(next(c[3] for c in cells if c[1] == v and c[3] is not None)) for v in order
             if any(c[1] == v and c[3] is not None for c in cells)}
    ref_kind = kinds.get(reference)
    variants = {}
    for v in order:
        rows = by_variant[v]
        entry = {"kind": kinds.get(v), "seeds": [c[2] for c in rows], "metrics": {}, "differences": {}, "collapsed": []}
        for key in METRICS:
            values = [c[5][key] for c in rows if c[5].get(key) is not None]
            if values:
                mean, half, n = t_interval(values)
                entry["metrics"][key] = {"mean": mean, "half_width": half, "n": n, "values": values}
        ref_rows = {c[2]: c[5] for c in by_variant[reference]}
        for key in ("test_log_likelihood", "test_elbo"):
            if v == reference or kinds.get(v) != ref_kind:
                continue
            pairs = [c[5][key] - ref_rows[c[2]][key] for c in rows
                     if c[2] in ref_rows and c[5].get(key) is not None and ref_rows[c[2]].get(key) is not None]
            if pairs:
                mean, half, n = t_interval(pairs)
                entry["differences"][key] = {"mean": mean, "half_width": half, "n": n,
                                             "holds": bool(n >= 2 and abs(mean) > half)}
        for c in rows:
            if c[5].get("collapse") or (c[5].get("active_units") == 0):
                entry["collapsed"].append(c[2])
        variants[v] = entry
    missing = {c[0]: c[6] for c in cells if c[6]}
    iw = sorted({c[5].get("iw_samples") for c in cells if c[5] is not None} - {None})
    examples = sorted({c[5].get("examples") for c in cells if c[5] is not None} - {None})
    summary = {"experiment": str(out), "reference": reference, "variants": variants, "missing": missing,
               "iw_samples": iw, "test_examples": examples, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    drawn = summary_figures(out, cells, order, variants)
    write_json(out / "summary.json", summary)
    atomic_write(out / "summary.csv", lambda f: f.write(summary_csv(summary).encode()))
    atomic_write(out / "summary.md", lambda f: f.write(summary_markdown(out, summary, drawn).encode()))
    if progress:
        print(f"pyro-vae compare: summary of {sum(len(by_variant[v]) for v in order)} evaluated runs in "
              f"{out}/summary.md" + (f"; {len(missing)} runs incomplete (listed there)" if missing else ""), flush=True)
    return summary


SUMMARY_FILES = ("summary.md", "summary.csv", "summary.json", "curves.png", "intervals.png", "samples.png")


def check_summary_files(out):
    """Refuse to write the summary over files this package did not write: a folder of runs that is
    not an experiment directory (no experiment.toml, no summary.json of an earlier summary) may hold
    a user's own summary.md or curves.png."""
    try:
        earlier = json.loads((out / "summary.json").read_text())
        ours = isinstance(earlier, dict) and {"experiment", "variants", "reference"} <= set(earlier)
    except (OSError, ValueError):
        ours = False
    in_the_way = [name for name in SUMMARY_FILES if (out / name).exists()]
    if in_the_way and not ours and not (out / EXPERIMENT_FILE).is_file():
        raise UserError(f"{out} holds {', '.join(in_the_way)}, not written by pyro-vae compare (the folder has no "
                        f"{EXPERIMENT_FILE} and no summary.json of its own); move them, nothing was changed")


def variant_order(out, cells):
    """The variants in the experiment file's order (the grid's), then any others found."""
    found = list(dict.fromkeys(c[1] for c in cells))
    recorded = out / EXPERIMENT_FILE
    if recorded.is_file():
        try:
            shared, vary, seeds, _ = read_experiment(recorded)
            listed = list(dict.fromkeys(name for name, _, _ in grid(vary, seeds)))
            return [v for v in listed if v in found] + [v for v in found if v not in listed]
        except UserError:
            pass
    return found


def cell_text(m, digits=2):
    if m is None:
        return "-"
    half = "" if math.isnan(m["half_width"]) else f" +- {m['half_width']:.{digits}f}"
    return f"{m['mean']:.{digits}f}{half}"


def summary_markdown(out, summary, drawn=("curves.png", "intervals.png", "samples.png")):
    variants = summary["variants"]
    ref = summary["reference"]
    iw = ", ".join(map(str, summary["iw_samples"])) or "-"
    lines = [f"# Comparison: {out.name}", "",
             f"Regenerate: `pyro-vae compare --summarize {out}`; the grid is in `{EXPERIMENT_FILE}` "
             f"(`pyro-vae compare {out / EXPERIMENT_FILE}` reruns it). Written {summary['written']}.", "",
             f"Each number: mean over seeds and the half-width of its 95% Student-t interval (seeds listed per row). "
             f"Log-likelihoods are importance-sampled with K = {iw} on {', '.join(map(str, summary['test_examples']))} "
             f"test examples, in nats per example. Differences are paired by seed against `{ref}`; a difference "
             f"is claimed (**holds**) only where its interval excludes zero. Rows of different kinds are not ranked "
             f"together: log p(x|y) scores an image given its label, log p(y|x) a label given its image, log p(x) "
             f"an image alone; they are densities of different things.", ""]
    for kind in dict.fromkeys(v["kind"] for v in variants.values()):
        names = [n for n, v in variants.items() if v["kind"] == kind]
        lines += [f"## {kind}", "",
                  "| variant | seeds | test log-likelihood | vs " + ref + " | test ELBO | rate (KL) | distortion | active units "
                  "| label fidelity | accuracy | s / epoch |", "|---" * 11 + "|"]
        for n in names:
            v = variants[n]
            m = v["metrics"]
            d = v["differences"].get("test_log_likelihood")
            diff = "(reference)" if n == ref else ("not comparable" if v["kind"] != variants[ref]["kind"] else
                                                   "-" if d is None else
                                                   f"{d['mean']:+.3f} +- {d['half_width']:.3f}"
                                                   + (" **holds**" if d["holds"] else " (holds 0)"))
            flag = " (collapsed: seeds " + ", ".join(map(str, v["collapsed"])) + ")" if v["collapsed"] else ""
            lines.append(f"| {n}{flag} | {', '.join(map(str, v['seeds']))} | {cell_text(m.get('test_log_likelihood'))} | "
                         f"{diff} | {cell_text(m.get('test_elbo'))} | {cell_text(m.get('rate'))} | "
                         f"{cell_text(m.get('distortion'))} | {cell_text(m.get('active_units'), 1)} | "
                         f"{cell_text(m.get('label_fidelity'), 3)} | {cell_text(m.get('test_accuracy'), 3)} | "
                         f"{cell_text(m.get('seconds_per_epoch'), 2)} |")
        lines.append("")
    collapsed = {n: v["collapsed"] for n, v in variants.items() if v["collapsed"]}
    if collapsed:
        lines += ["**Posterior collapse** (no active unit, or a rate under "
                  f"{COLLAPSED_RATE} nats per example): " + "; ".join(f"{n} seeds {', '.join(map(str, s))}"
                                                                     for n, s in collapsed.items())
                  + ". Their decoders ignore z; try more epochs, a KL warm-up (`--warmup-epochs`) or a smaller "
                    "`--beta` before reading their numbers.", ""]
    if summary["missing"]:
        lines += ["**Incomplete runs** (left out of the numbers above): "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in summary["missing"].items()), ""]
    about = {"curves.png": "validation ELBO per epoch, mean and range over seeds",
             "intervals.png": "each metric's mean and 95% interval per variant",
             "samples.png": "class-conditional samples of every variant that generates x given a label, seed 0"}
    lines += ["Figures: " + "; ".join(f"`{name}` ({about[name]})" for name in drawn) + ".", ""]
    return "\n".join(lines)


def summary_csv(summary):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "kind", "metric", "mean", "half_width_95", "n", "seeds"])
    for name, v in summary["variants"].items():
        for key, m in v["metrics"].items():
            writer.writerow([name, v["kind"], key, m["mean"], m["half_width"], m["n"], " ".join(map(str, v["seeds"]))])
        for key, d in v["differences"].items():
            writer.writerow([name, v["kind"], f"{key}_minus_{summary['reference']}", d["mean"], d["half_width"], d["n"],
                             " ".join(map(str, v["seeds"]))])
    return buffer.getvalue()


def summary_figures(out, cells, order, variants):
    """curves.png, intervals.png and, where variants generate x given a class label, samples.png;
    returns the names of those drawn."""
    curves = {}
    for v in order:  # one panel per kind: bounds on log p(x|y) and on log p(y|x) are not on one scale
        runs = [[m["val_elbo"] for m in c[4]] for c in cells if c[1] == v and c[4]]
        if runs and variants[v]["kind"]:
            curves.setdefault(f"bound on {variants[v]['kind']}", {})[v] = runs
    drawn = []
    if curves:
        drawn.append("curves.png")
        plots.curve_bands(curves, out / "curves.png", "validation ELBO per epoch: mean over seeds (line) and their "
                          "range (band)", "validation ELBO (nats per example)")
    panels = {}
    for key, (what, higher) in METRICS.items():
        points = {v: variants[v]["metrics"][key] for v in order if key in variants[v]["metrics"]}
        title = what + ("" if higher is None else " (higher is better)" if higher else " (lower is better)")
        # densities of different things are not put on one axis: a panel per kind for the bound's terms
        kinds = [None] if key not in PER_KIND else list(dict.fromkeys(variants[v]["kind"] for v in points))
        for kind in kinds:
            chosen = {v: p for v, p in points.items() if kind is None or variants[v]["kind"] == kind}
            if chosen:
                panels[title + ("" if kind is None else f"; {kind}")] = {
                    f"{v} [{variants[v]['kind']}]": (p["mean"], p["half_width"]) for v, p in chosen.items()}
    if panels:
        drawn.append("intervals.png")
        plots.dot_intervals(panels, out / "intervals.png", "mean and 95% interval over seeds, per variant")
    generators, left_out = {}, []
    for v in order:
        first = next((c for c in sorted((c for c in cells if c[1] == v and c[5] is not None), key=lambda c: str(c[2]))), None)
        if first is None:
            continue
        config = first[3]
        cls = model_class(config.model)
        if cls.conditional and cls.observed == "x" and config.condition in (None, "label"):
            model, _, data = load_run(out / first[0], "cpu")
            generators[f"{v} (seed {first[2]})"] = model
        else:
            left_out.append(f"{v}: {'predicts y from x' if cls.observed == 'y' else 'not conditioned on a label'}")
    if generators:
        drawn.append("samples.png")
        conditional_panels(generators, data, out / "samples.png",
                           caption="mean images of p(x|z,y) with z drawn from each model's prior, one row per class"
                                   + ("; not drawn: " + "; ".join(left_out) if left_out else ""))
    return drawn
