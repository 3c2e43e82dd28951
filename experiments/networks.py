"""What the networks buy: the VAE on binarized Fashion-MNIST with each body (`--net mlp`, `gated`,
`conv`) under one budget, seeds 0..S-1: test log-likelihood (K importance samples on the first N
test images), test ELBO, active units and seconds per epoch, with paired differences against mlp.

    OMP_NUM_THREADS=1 python experiments/networks.py --epochs 20 --seeds 3   # -> experiments/results/networks.md

Every run is a run directory made by `pyro_vae.train` and scored by `pyro_vae.evaluate_run`; rows
are appended to experiments/results/networks.jsonl as they finish, so a second invocation skips
finished runs (and resumes an interrupted one from its checkpoint).
"""

import argparse
import statistics
import sys
from pathlib import Path

import pyro_vae
from pyro_vae.cli import positive_float, positive_int, script
from pyro_vae.runs import t_interval
from vae_fashion_mnist import RESULTS, append_row, machine, read_rows  # noqa: E402 (same folder)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="mlp,gated,conv")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--hidden", default="300,300", help="the hidden widths of every body (the VampPrior paper's)")
    p.add_argument("--z-dim", type=positive_int, default=40)
    p.add_argument("--lr", type=positive_float, default=5e-4)
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--iw-samples", type=positive_int, default=5000)
    p.add_argument("--examples", type=positive_int, default=500, help="score the first N test images")
    p.add_argument("--out", default="runs/networks")
    args = p.parse_args()

    log = RESULTS / "networks.jsonl"
    done = {(r["net"], r["seed"]) for r in read_rows(log)}
    hidden = [int(h) for h in args.hidden.split(",")]
    for seed in range(args.seeds):
        for net in args.nets.split(","):
            if (net, seed) in done:
                continue
            run = Path(args.out) / f"{net}-seed{seed}"
            if (run / "config.json").exists():
                run_dir = pyro_vae.train(resume=run, epochs=args.epochs, progress=False)
            else:
                run_dir = pyro_vae.train(model="vae", dataset="fashion-mnist", net=net, hidden=hidden, z_dim=args.z_dim,
                                         lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=seed,
                                         out=run, progress=False)
            result = pyro_vae.evaluate_run(run_dir, iw_samples=args.iw_samples, examples=args.examples, progress=False)
            metrics = pyro_vae.read_metrics(run_dir)
            row = {"net": net, "seed": seed, "log_px": result["test_log_likelihood"], "elbo": result["test_elbo"],
                   "active_units": result["active_units"], "val_elbo": metrics[-1]["val_elbo"],
                   "seconds_per_epoch": statistics.median(m["seconds"] for m in metrics), "epochs": args.epochs,
                   "iw_samples": args.iw_samples, "examples": args.examples, "eval_seconds": result["seconds"]}
            append_row(log, row)
    write_summary(args, log)


def write_summary(args, log):
    rows = read_rows(log)
    nets = list(dict.fromkeys(r["net"] for r in rows))
    command = "OMP_NUM_THREADS=1 python experiments/networks.py " + " ".join(sys.argv[1:])
    first = rows[0]
    lines = ["# What the networks buy: mlp, gated and conv bodies of the VAE on binarized Fashion-MNIST", "",
             f"Command: `{command}`  ", f"Machine: {machine()}", "",
             f"vae, standard normal prior, diagonal Gaussian guide, Bernoulli likelihood; every network's body of "
             f"hidden widths {args.hidden} (softplus for mlp and conv's dense layers; gated dense layers for gated; "
             f"conv: two stride-2 4x4 convolutions of 32 and 64 channels to read, two transposed ones to write), "
             f"z {args.z_dim}, Adam {args.lr:g}, batch {args.batch_size}, {first['epochs']} epochs, the last epoch's "
             f"weights, dynamic binarization. Test log-likelihood: K = {first['iw_samples']} importance samples on "
             f"the first {first['examples']} test images (binarized once), nats per image. Mean and 95% Student-t "
             f"interval over seeds {', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}; the difference "
             f"against mlp is paired by seed, and a difference is claimed only where its interval excludes zero.", "",
             "| net | seeds | test log p(x) | difference vs mlp | test ELBO | active units | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r["log_px"] for r in rows if r["net"] == "mlp"}
    for net in nets:
        group = [r for r in rows if r["net"] == net]
        ll, elbo = t_interval([r["log_px"] for r in group]), t_interval([r["elbo"] for r in group])
        paired = [r["log_px"] - base[r["seed"]] for r in group if r["seed"] in base]
        if net == "mlp" or len(paired) < 2:
            diff = "(reference)" if net == "mlp" else "-"
        else:
            d = t_interval(paired)
            diff = f"{d[0]:+.2f} +- {d[1]:.2f}" + ("" if abs(d[0]) > d[1] else " (interval holds 0)")
        lines.append(f"| {net} | {len(group)} | {ll[0]:.2f} +- {ll[1]:.2f} | {diff} | {elbo[0]:.2f} +- {elbo[1]:.2f} | "
                     f"{statistics.median(r['active_units'] for r in group):.0f} | "
                     f"{statistics.median(r['seconds_per_epoch'] for r in group):.1f} |")
    lines += ["", "Raw rows: [networks.jsonl](networks.jsonl)", ""]
    (RESULTS / "networks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    script(main)  # an error in one line, as the CLI ends
