"""The published Fashion-MNIST density setup (Tomczak & Welling's, as published with the
Exemplar-VAE code), over setups and seeds: test log-likelihood (K = 5000, the whole test split
binarized once), mean and 95% t-interval, beside the published numbers.

    python experiments/density_fashion_mnist.py --seeds 3                       # standard normal and VampPrior
    python experiments/density_fashion_mnist.py --setups normal --seeds 1 --epochs 300
    python experiments/density_fashion_mnist.py --setups best --seeds 1         # this package's best, to beat -227.35
    python experiments/density_fashion_mnist.py --setups vamp-iaf --seeds 1 --epochs 380   # a cheaper try, capped
    python experiments/density_fashion_mnist.py --setups vamp --seeds 3 --first-seed 2   # seed 2 alone, beside another process
    python experiments/density_fashion_mnist.py --setups vamp-iaf-iwae --seeds 3   # vamp-iaf's runs trained on with IWAE
    python experiments/density_fashion_mnist.py --setups vamp-plateau --seeds 3    # the VampPrior, lr halved on plateaus
    python experiments/density_fashion_mnist.py --setups vamp-iwae,vamp-elbo --seeds 3 --epochs 150   # then on with IWAE / ELBO
    python experiments/density_fashion_mnist.py --paired vamp-iwae,vamp-elbo   # A - B by seed, from the rows: no training

The setups: `normal` and `vamp` are the two published models; `best` adds what this package has
beyond them to the VampPrior model, in one stochastic layer: an IAF guide (2 flows) trained on the
IWAE bound with 5 particles (early stopping still reads the validation ELBO). `vamp-iaf` is the
VampPrior model with the IAF guide on the ELBO: an epoch costs about what the VampPrior's does,
where `best` cost 1.7 times more on one 2-core Xeon (cpuinfo model 106, 2 threads: 27 s an epoch
against 16 s; `best`'s with the old one-thread denormal flush). `vamp-iaf-iwae` starts from each
`vamp-iaf` run's best weights (that seed's, once patience has stopped it) and trains on with the
IWAE bound (5 particles), its patience and best epoch on the validation IWAE bound
(`--select-on bound`), no warm-up, Adam going on from its moments at lr 1e-4: the bound is what the
log-likelihood rewards, at a fraction of `best`'s hours. (At the published 5e-4, with Adam's
moments or a fresh Adam, seed 0's validation bound fell by 0.1-0.2 nats in its first 7 epochs, and
its training bound did not rise: density_fashion_mnist.md.) `vamp-iaf-elbo` does the same on the
ELBO, to tell what the bound adds from what the lower rate does. `vamp-plateau` is the published
VampPrior with `--lr-schedule plateau` (the rate halved after every 10 epochs without a better
validation ELBO; patience 50 still ends it), its step compiled; `vamp-iwae` trains each
`vamp-plateau` run on with the IWAE bound as `vamp-iaf-iwae` does, at lr 1e-5 (that run ended at a
few 1e-6; at 1e-4 seed 0's validation bound fell: density_fashion_mnist.md), and `vamp-elbo` the
same on the ELBO, its ablation. `vamp-iwae` is the setup that beats -227.35 (at --epochs 150).

The setup: dynamic binarization, two gated dense layers of 300, z 40, Adam 5e-4, batch 100, a
100-epoch linear KL warm-up, early stopping with patience 50 on a 10,000-image validation split,
the best epoch's weights evaluated; the VampPrior with 500 pseudo-inputs, started near-black and clipped to [0, 1] as in the published code. `--epochs` caps training
(the published runs stop by patience; 2000 here by default); given again it moves a stopped run's
cap, and a run already at the cap is scored as it stands (a budget: a row's `epochs` and
`best_epoch` say whether the cap or patience ended it). Each run is a run directory made by
`pyro_vae.train` under --out (SETUP-seedS); an interrupted sweep resumes its runs where they
stopped (a run that stopped early is not trained on), and a run already scored is skipped, unless
its cap ended it and --epochs now asks for more: it trains on, and its new row replaces the old. Rows go
to experiments/results/density_fashion_mnist.jsonl as they finish; the table is written to
density_fashion_mnist_table.md, each finished run's validation curve to
density_fashion_mnist_curves.jsonl (the figure reads it: run directories stay on the machine that
made them). Sweeps on different seeds may run side by side (--first-seed): each rewrites those
files under a lock in --out, so neither drops the other's row.
"""

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import sys
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae import plots
from pyro_vae.cli import non_negative_int, positive_int, val_size_setting, script
from pyro_vae.errors import counted
from pyro_vae.runs import t_interval
from vae_fashion_mnist import RESULTS, append_row, cpu_name, machine, read_rows  # noqa: E402 (same folder)

COMMON = dict(  # every setup: the published training
    dataset="fashion-mnist", net="gated", hidden=[300, 300], z_dim=40, lr=5e-4, batch_size=100,
    warmup_epochs=100, patience=50, val_size=10000)
VAMP = dict(prior="vamp", part_args={"prior": {"pseudo_inputs": 500, "pixels": "hardtanh"}})  # as published
SETUPS = {"normal": dict(prior="normal"), "vamp": VAMP,
          "vamp-iaf": dict(VAMP, guide="iaf"),  # about the VampPrior's cost per epoch
          "best": dict(VAMP, guide="iaf", elbo="iwae", particles=5, compile="inductor"),  # 12% faster steps (benchmark.md, run M)
          "vamp-iaf-iwae": dict(VAMP, guide="iaf", elbo="iwae", particles=5, compile="inductor", select_on="bound",
                                warmup_epochs=0, lr=1e-4, after="vamp-iaf"),  # from vamp-iaf's best.pt of the same seed
          "vamp-iaf-elbo": dict(VAMP, guide="iaf", compile="inductor", warmup_epochs=0, lr=1e-4, after="vamp-iaf"),
          "vamp-plateau": dict(VAMP, lr_schedule="plateau", compile="inductor"),  # the published VampPrior, halving lr on plateaus
          "vamp-iwae": dict(VAMP, elbo="iwae", particles=5, compile="inductor", select_on="bound",
                            warmup_epochs=0, lr=1e-5, after="vamp-plateau"),  # vamp-iaf-iwae's recipe, no flow, a tenth of its rate
          "vamp-elbo": dict(VAMP, compile="inductor", warmup_epochs=0, lr=1e-5, after="vamp-plateau")}  # its ablation
# (vamp-iaf-elbo, vamp-elbo: the same on the ELBO, to tell what the bound adds from what the further training does)
# nats: (published, its spread, what it is); the VampPrior's spread is not given; `best` is measured against it
PUBLISHED = {"normal": (-228.70, 0.15, "published"), "vamp": (-227.35, None, "published")}
PUBLISHED.update(dict.fromkeys((s for s in SETUPS if s not in PUBLISHED),  # every other setup
                               (PUBLISHED["vamp"][0], None, "to beat (the VampPrior)")))


def selected(setup):
    """The metric a setup's runs keep their best epoch by."""
    return "val_bound" if SETUPS[setup].get("select_on") == "bound" else "val_elbo"


def setup_of(row):
    return row["setup"] if "setup" in row else row["prior"]  # rows before the `best` setup name the prior only


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", "--priors", default="normal,vamp", help=f"of {', '.join(SETUPS)}")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=non_negative_int, default=0, help="start there (a second process on other seeds)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="the cap (2000 for a new run; a stopped run keeps its own unless given); patience 50 decides before it")
    p.add_argument("--iw-samples", type=positive_int, default=5000)
    p.add_argument("--out", default="runs/published")
    p.add_argument("--name", default="density_fashion_mnist", help="results file stem under experiments/results/")
    p.add_argument("--report", action="store_true", help="only write the table and the figure (of the runs so far)")
    p.add_argument("--paired", metavar="A,B", help="only print setup A minus setup B by seed over the seeds both have "
                   "scored (test log-likelihood and test ELBO; mean and 95%% t-interval), from the rows")
    p.add_argument("--dataset", default=COMMON["dataset"], help="(another only to try the script)")
    p.add_argument("--val-size", type=val_size_setting, default=COMMON["val_size"], help="(another only to try the script)")
    args = p.parse_args()
    if args.first_seed >= args.seeds:
        p.error(f"--first-seed {args.first_seed} leaves no seed below --seeds {args.seeds} (seeds run from --first-seed "
                f"to --seeds - 1)")

    log = RESULTS / f"{args.name}.jsonl"
    if args.paired:
        pair = args.paired.split(",")
        if len(pair) != 2 or not set(pair) <= set(SETUPS):
            p.error(f"--paired takes two setups, A,B, of {', '.join(SETUPS)}; got {args.paired!r}")
        print(paired(read_rows(log), *pair))
        return
    scored = {(setup_of(r), r["seed"]): r for r in read_rows(log)}
    for setup in [] if args.report else args.setups.split(","):
        if setup not in SETUPS:
            sys.exit(f"density_fashion_mnist.py: unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
        for seed in range(args.first_seed, args.seeds):
            run = Path(args.out) / f"{setup}-seed{seed}"
            if (setup, seed) in scored and not trains_on(args, scored[setup, seed], run):
                continue
            if (run / "config.json").exists():
                if args.epochs is None or len(pyro_vae.read_metrics(run)) < args.epochs:  # a run at the cap is scored as it is
                    pyro_vae.train(resume=run, progress=False, epochs=args.epochs)  # to its cap, unless it stopped early
            else:
                settings = {**COMMON, "dataset": args.dataset, "val_size": args.val_size, **SETUPS[setup]}
                after = settings.pop("after", None)
                if after is not None:  # trained on from that setup's finished run of the same seed
                    if (after, seed) not in {(setup_of(r), r["seed"]) for r in read_rows(log)}:  # scored since?
                        sys.exit(f"density_fashion_mnist.py: {setup} seed {seed} starts from {after} seed {seed}'s "
                                 f"best weights: run that to its end first (--setups {after})")
                    settings["init_from"] = str(Path(args.out) / f"{after}-seed{seed}")
                pyro_vae.train(out=run, progress=False, **settings, epochs=2000 if args.epochs is None else args.epochs,
                               seed=seed)
            metrics = pyro_vae.read_metrics(run)
            result = earlier_score(run, metrics, args.iw_samples, selected(setup)) or pyro_vae.evaluate_run(
                run, iw_samples=args.iw_samples, progress=False, fidelity_samples=0)
            with results_lock(args):  # a sweep beside this one (other seeds) writes the same files
                write_rows(args, log, setup, seed, result, metrics)
    with results_lock(args):
        if read_rows(log):
            write_table(args, log)
        write_figure(args)


def paired(rows, a, b):
    """Setup `a` minus setup `b`, seed by seed, over the seeds both have scored: the differences of
    test log-likelihood and test ELBO, their mean and 95% t-interval (nats per example)."""
    by = {(setup_of(r), r["seed"]): r for r in rows}
    seeds = sorted(s for (setup, s) in by if setup == a and (b, s) in by)
    if not seeds:
        return f"{a} and {b} have no seed scored by both"
    lines = [f"{a} - {b}, seeds {', '.join(map(str, seeds))} (95% t, {len(seeds) - 1} degrees of freedom):"]
    for key in ("test_log_likelihood", "test_elbo"):
        diffs = [by[a, s][key] - by[b, s][key] for s in seeds]
        mean, half, _ = t_interval(diffs)
        holds = "" if half != half else ("; holds zero" if abs(mean) <= half else "; excludes zero")
        lines.append(f"  {key}: {mean:+.3f} +- {half:.3f}{holds}   by seed: {', '.join(f'{d:+.3f}' for d in diffs)}")
    return "\n".join(lines)


def write_rows(args, log, setup, seed, result, metrics):
    """A scored run's row and its validation curve, each replacing the run's earlier one."""
    drop_rows(log, setup, seed)  # a capped run trained on: its new row replaces the old
    drop_rows(curves_file(args), setup, seed)
    append_row(log, {"setup": setup, "prior": SETUPS[setup]["prior"], "seed": seed,
                     "test_log_likelihood": result["test_log_likelihood"], "test_elbo": result["test_elbo"],
                     "best_epoch": result["checkpoint_epoch"], "epochs": len(metrics),
                     "train_hours": sum(m["seconds"] for m in metrics) / 3600,
                     "median_epoch_seconds": statistics.median(m["seconds"] for m in metrics),
                     "cpu": f"{cpu_name()}, {counted(torch.get_num_threads(), 'thread')}",
                     "eval_minutes": result["seconds"] / 60, "iw_samples": args.iw_samples,
                     "active_units": result["active_units"], **after_hours(setup, seed, log)})
    # the curve beside the row: run directories do not outlive the machine, the figure must
    append_row(curves_file(args), {"setup": setup, "seed": seed, "val_elbo": [m["val_elbo"] for m in metrics],
                                   **({"val_bound": [m["val_bound"] for m in metrics]} if "val_bound" in metrics[0] else {}),
                                   **start_point(Path(args.out) / f"{setup}-seed{seed}")},
               show=False)


def start_point(run):
    """For a run trained on from another's weights: {"start": the validation ELBO and IWAE bound
    (K = 5) of those weights, as its epochs measure them (seeded)}, the level its curves started from."""
    config = pyro_vae.runs.read_config(run)
    if config.init_from is None:
        return {}
    source = Path(config.init_from)
    model, _, data = pyro_vae.load_run(source.parent, checkpoint="best" if source.name == "best.pt" else "last")
    model.eval()
    args = pyro_vae.model_inputs(model, *data.splits["val"], data.n_classes)
    pyro.set_rng_seed(0)
    with torch.no_grad(), pyro.validation_enabled(False):
        return {"start": {"val_elbo": pyro_vae.elbo_per_example(model.model, model.guide, *args).mean().item(),
                          "val_bound": pyro_vae.importance_sampled(model.model, model.guide, *args,
                                                                     samples=5)[0].mean().item()}}


def after_hours(setup, seed, log):
    """For a setup trained on from another's run: that run's hours of training, as {"before_hours": h}."""
    after = SETUPS[setup].get("after")
    rows = [r for r in read_rows(log) if after and (setup_of(r), r["seed"]) == (after, seed)]
    return {"before_hours": rows[0]["train_hours"]} if rows else {}


@contextlib.contextmanager
def results_lock(args):
    """Held while this process rewrites the results files: two sweeps may run side by side on
    other seeds (--first-seed), and a row rewritten by one must not drop the other's."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / ".results.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # waits for the other; the lock goes with the file's closing
        yield


def trains_on(args, row, run):
    """Whether a scored run is trained further: it was ended by its cap (not by patience), its
    directory is here, and --epochs now asks for more epochs than it has."""
    return (ended_by(row) == "cap" and args.epochs is not None and args.epochs > row["epochs"]
            and (run / "config.json").exists())


def earlier_score(run, metrics, iw_samples, key="val_elbo"):
    """The run's eval.json where it already scores what this script would (best.pt at the run's best
    epoch, K = iw_samples, the whole test split), else None: a sweep stopped after scoring a run and
    before writing its row (a crash, a signal) does not score it again."""
    try:
        result = json.loads((run / "eval.json").read_text())
        test_size = json.loads((run / "data.json").read_text())["examples"]["test"]
    except (OSError, ValueError, KeyError):
        return None
    best = max(metrics, key=lambda m: m[key])["epoch"]  # the first of equals, as training keeps best.pt
    same = (result.get("checkpoint"), result.get("checkpoint_epoch"), result.get("iw_samples"), result.get("examples"))
    return result if same == ("best.pt", best, iw_samples, test_size) else None


def drop_rows(path, setup, seed):
    """Rewrite a results .jsonl file without the rows of one run (a new file moved into place)."""
    rows = read_rows(path)
    kept = [r for r in rows if (setup_of(r), r["seed"]) != (setup, seed)]
    if len(kept) < len(rows):
        part = path.with_name(path.name + ".part")
        part.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(part, path)


def curves_file(args):
    return RESULTS / f"{args.name}_curves.jsonl"


def write_figure(args):
    """The validation ELBO of every run after the warm-up, finished or not: one line per run,
    coloured by setup, its best epoch dotted. A finished run's curve is read from the results
    folder (kept with its row), a running one's from its directory under --out. Runs trained on
    from another's weights (vamp-iaf-iwae, vamp-iaf-elbo) go to a figure of their own,
    NAME_after_curves.png, from their first epoch: their validation ELBO, and the IWAE bound where
    they have one."""
    kept = {(r["setup"], r["seed"]): r for r in read_rows(curves_file(args))}
    scored = {(setup_of(r), r["seed"]) for r in read_rows(RESULTS / f"{args.name}.jsonl")}
    for run in sorted(Path(args.out).glob("*-seed*")):
        setup, seed = run.name.rsplit("-seed", 1)
        key = (setup, int(seed))
        if (run / "metrics.jsonl").exists() and key not in kept and setup in SETUPS:
            metrics = pyro_vae.read_metrics(run)
            kept[key] = {k: [m[k] for m in metrics] for k in ("val_elbo", "val_bound") if metrics and k in metrics[0]}
            kept[key].update(start_point(run))
            if key in scored:  # finished before its curve was kept with its row: kept now
                append_row(curves_file(args), {"setup": setup, "seed": key[1], **kept[key]}, show=False)
    panels = {"validation ELBO": "val_elbo", "validation IWAE bound (K = 5)": "val_bound"}
    for trained_on, keys, first, name, what in (
            (False, ["val_elbo"], COMMON["warmup_epochs"] + 1, "curves",
             f"after its {COMMON['warmup_epochs']}-epoch KL warm-up"),
            (True, ["val_elbo", "val_bound"], 0, "after_curves",
             "trained on from another setup's best weights of the same seed (epoch 0: those weights)")):
        drawn = {}
        for panel, key in ((p, k) for p, k in panels.items() if k in keys):
            curves = {}
            for setup in (s for s in SETUPS if ("after" in SETUPS[s]) == trained_on):
                shown = sorted(seed for (s, seed), c in kept.items()
                               if s == setup and len(c.get(key, ())) >= max(first, 1))
                if shown:  # a run still in its warm-up has no line yet
                    curves[f"{setup}: seed{'s' * (len(shown) > 1)} {', '.join(map(str, shown))}"] = [
                        [kept[setup, seed]["start"][key]] + kept[setup, seed][key] if first == 0 else
                        kept[setup, seed][key][first - 1:] for seed in shown]
            if curves:
                drawn[f"{panel} of the 10,000 held-out training images"] = curves
        if drawn:
            plots.curve_bands(drawn, RESULTS / f"{args.name}_{name}.png",
                              f"The published setup {what}: one line per run, ending where patience, the --epochs "
                              f"cap or the session stopped it", "nats per example", start=first, each=True,
                              whole=first == 0)


def median_epoch_seconds(args, row):
    """A run's median epoch in seconds: from its row, else read off its metrics.jsonl under --out
    ("?" where neither has it). Hours of training sum the epochs' seconds, which count any time the
    process was paused."""
    if "median_epoch_seconds" in row:
        return f"{row['median_epoch_seconds']:.1f}"
    run = Path(args.out) / f"{setup_of(row)}-seed{row['seed']}"
    seconds = [m["seconds"] for m in pyro_vae.read_metrics(run)] if (run / "metrics.jsonl").exists() else []
    return f"{statistics.median(seconds):.1f}" if seconds else "?"


def hours_before(row):
    """' (+ h before)' for a run trained on from another run's weights, whose hours it adds to."""
    return f" (+ {row['before_hours']:.1f} before)" if "before_hours" in row else ""


def ended_by(row):
    """What stopped a run: patience (its best epoch that many epochs back) or the --epochs cap."""
    return "patience" if row["epochs"] - row["best_epoch"] >= COMMON["patience"] else "cap"


def write_table(args, log):
    rows = read_rows(log)
    command = " ".join(["python experiments/density_fashion_mnist.py"] + sys.argv[1:])
    lines = [f"Last written by (from `experiments/`): `{command}`; the rows come from the commands "
             f"that trained and scored them, each named in {args.name}.md  ", f"Table written on: {machine()}  ",
             "Each run's own CPU and threads are in the last column (runs of one sweep can land on different machines)", "",
             f"| setup | seeds | test log-likelihood (K = {rows[0]['iw_samples']}) | literature | best epochs | epochs trained (ended by) | "
             "hours of training per seed | median seconds per epoch | CPU per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for setup in SETUPS:
        group = sorted((r for r in rows if setup_of(r) == setup), key=lambda r: r["seed"])  # seed 0 first, whichever finished first
        if not group:
            continue
        mean, half, _ = t_interval([r["test_log_likelihood"] for r in group])
        spread = "(one seed: no interval)" if len(group) < 2 else f"+- {half:.2f}"
        published, its_spread, what = PUBLISHED[setup]
        lines.append(f"| {setup} | {len(group)} | {mean:.2f} {spread} | {published:.2f}"
                     f"{f' +- {its_spread:.2f}' if its_spread else ''} {what} | "
                     f"{', '.join(str(r['best_epoch']) for r in group)} | {', '.join(str(r['epochs']) + ' (' + ended_by(r) + ')' for r in group)} | "
                     f"{', '.join(format(r['train_hours'], '.1f') + hours_before(r) for r in group)} | "
                     f"{', '.join(median_epoch_seconds(args, r) for r in group)} | "
                     f"{'; '.join(r.get('cpu', '?') for r in group)} |")
    lines += ["", f"Raw rows: [{log.name}]({log.name})", ""]
    (RESULTS / f"{args.name}_table.md").write_text("\n".join(lines))


if __name__ == "__main__":
    script(main)  # an error in one line, exit 2 (or 130/143 on Ctrl-C/SIGTERM), as the CLI ends
