"""The published Fashion-MNIST density setup (Tomczak & Welling's, as published with the
Exemplar-VAE code), over priors and seeds: test log-likelihood (K = 5000, the whole test split
binarized once), mean and 95% t-interval, beside the published numbers.

    python experiments/density_fashion_mnist.py --seeds 3                       # standard normal and VampPrior
    python experiments/density_fashion_mnist.py --priors normal --seeds 1 --epochs 300

The setup: dynamic binarization, two gated dense layers of 300, z 40, Adam 5e-4, batch 100, a
100-epoch linear KL warm-up, early stopping with patience 50 on a 10,000-image validation split,
the best epoch's weights evaluated; the VampPrior with 500 pseudo-inputs. `--epochs` caps training
(the published runs stop by patience; 2000 here by default). Each run is a run directory made by
`pyro_vae.train` under --out (PRIOR-seedS); an interrupted sweep resumes its runs where they
stopped (a run that stopped early is not trained on), and a run already scored is skipped. Rows go
to experiments/results/density_fashion_mnist.jsonl as they finish; the table is written to
density_fashion_mnist_table.md.
"""

import argparse
import sys
import time
from pathlib import Path

import pyro_vae
from pyro_vae.runs import t_interval
from vae_fashion_mnist import RESULTS, append_row, machine, read_rows  # noqa: E402 (same folder)

SETUP = dict(dataset="fashion-mnist", net="gated", hidden=[300, 300], z_dim=40, lr=5e-4, batch_size=100,
             warmup_epochs=100, patience=50, val_size=10000)
PRIORS = {"normal": {}, "vamp": {"prior": {"pseudo_inputs": 500}}}  # the part arguments of each prior
PUBLISHED = {"normal": (-228.70, 0.15), "vamp": (-227.35, None)}  # nats; the VampPrior's spread is not given


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--priors", default="normal,vamp")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2000, help="the cap; patience 50 decides before it")
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--out", default="runs/published")
    p.add_argument("--name", default="density_fashion_mnist", help="results file stem under experiments/results/")
    p.add_argument("--dataset", default=SETUP["dataset"], help="(another only to try the script)")
    p.add_argument("--val-size", type=float, default=SETUP["val_size"], help="(another only to try the script)")
    args = p.parse_args()

    log = RESULTS / f"{args.name}.jsonl"
    done = {(r["prior"], r["seed"]) for r in read_rows(log)}
    for prior in args.priors.split(","):
        if prior not in PRIORS:
            sys.exit(f"density_fashion_mnist.py: unknown prior {prior!r}; choose from {', '.join(PRIORS)}")
        for seed in range(args.seeds):
            if (prior, seed) in done:
                continue
            run = Path(args.out) / f"{prior}-seed{seed}"
            if (run / "config.json").exists():
                pyro_vae.train(resume=run, progress=False)  # to its own cap, unless it stopped early
            else:
                pyro_vae.train(out=run, progress=False, **{**SETUP, "dataset": args.dataset, "val_size": args.val_size}, prior=prior,
                               part_args=PRIORS[prior] or None, epochs=args.epochs, seed=seed)
            start = time.perf_counter()
            result = pyro_vae.evaluate_run(run, iw_samples=args.iw_samples, progress=False, fidelity_samples=0)
            metrics = pyro_vae.read_metrics(run)
            append_row(log, {"prior": prior, "seed": seed, "test_log_likelihood": result["test_log_likelihood"],
                             "test_elbo": result["test_elbo"], "best_epoch": result["checkpoint_epoch"],
                             "epochs": len(metrics), "train_hours": sum(m["seconds"] for m in metrics) / 3600,
                             "eval_minutes": (time.perf_counter() - start) / 60, "iw_samples": args.iw_samples,
                             "active_units": result["active_units"]})
    write_table(args, log)


def write_table(args, log):
    rows = read_rows(log)
    command = "python experiments/density_fashion_mnist.py " + " ".join(sys.argv[1:])
    lines = [f"Command (from `experiments/`): `{command}`  ", f"Machine: {machine()}", "",
             f"| prior | seeds | test log-likelihood (K = {rows[0]['iw_samples']}) | published | best epochs | epochs trained | "
             "hours of training per seed |", "|---|---|---|---|---|---|---|"]
    for prior in PRIORS:
        group = [r for r in rows if r["prior"] == prior]
        if not group:
            continue
        mean, half, _ = t_interval([r["test_log_likelihood"] for r in group])
        spread = "(one seed: no interval)" if len(group) < 2 else f"+- {half:.2f}"
        published, its_spread = PUBLISHED[prior]
        lines.append(f"| {prior} | {len(group)} | {mean:.2f} {spread} | {published:.2f}"
                     f"{f' +- {its_spread:.2f}' if its_spread else ''} | "
                     f"{', '.join(str(r['best_epoch']) for r in group)} | {', '.join(str(r['epochs']) for r in group)} | "
                     f"{', '.join(format(r['train_hours'], '.1f') for r in group)} |")
    lines += ["", f"Raw rows: [{log.name}]({log.name})", ""]
    (RESULTS / f"{args.name}_table.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
