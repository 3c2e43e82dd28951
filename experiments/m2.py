"""Semi-supervised M2 on binarized Fashion-MNIST: test accuracy of q(y|x) with 100, 600, 1000 and
3000 labels, seeds 0..S-1 (each seed draws its own labels), against the same q(y|x) network
trained on the labelled examples alone; and test log p(x) with y summed out.

    python experiments/m2.py --epochs 10 --seeds 3                 # -> experiments/results/m2.md
    python experiments/m2.py --dataset digits --labels 50 --epochs 100 --hidden 128 --z-dim 8 --alpha 144

Pyro's SS-VAE tutorial configuration: one hidden layer of 500, z 50, Adam 4.2e-4, batch 200, the
auxiliary multiplier 46, TraceEnum_ELBO with y enumerated in parallel. Its 50 epochs are what it
trains; the epochs here are stated in the results file. Every run is a run directory made by
`pyro_vae.train` and scored by `pyro_vae.evaluate_run`; rows are appended to
experiments/results/m2.jsonl as they finish, so an interrupted sweep keeps what it did, and a
second invocation skips finished runs. A file NAME.head.md beside the results (what a person
concluded from them) is kept above the table each time it is written.
"""

import argparse
import statistics
import sys
from pathlib import Path

import pyro_vae
from pyro_vae.cli import positive_float, positive_int, script
from pyro_vae.runs import labels_alone
from pyro_vae.runs import t_interval
from vae_fashion_mnist import RESULTS, append_row, machine, read_rows  # noqa: E402 (same folder)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--labels", default="100,600,1000,3000")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--hidden", type=positive_int, default=500)
    p.add_argument("--z-dim", type=positive_int, default=50)
    p.add_argument("--lr", type=positive_float, default=4.2e-4)
    p.add_argument("--batch-size", type=positive_int, default=200)
    p.add_argument("--alpha", type=positive_float, default=46.0)
    p.add_argument("--labelled-batches", default="mixed", choices=["mixed", "separate"],
                   help="mixed into every batch, or batches of their own (Pyro's example)")
    p.add_argument("--iw-samples", type=positive_int, default=100, help="K draws of z per class for log p(x)")
    p.add_argument("--out", default="runs/m2")
    p.add_argument("--name", default="m2", help="results file stem under experiments/results/")
    args = p.parse_args()

    log = RESULTS / f"{args.name}.jsonl"
    done = {(r["labels"], r["seed"]) for r in read_rows(log)}
    for n in map(int, args.labels.split(",")):
        for seed in range(args.seeds):
            if (n, seed) in done:
                continue
            run = Path(args.out) / f"{Path(args.dataset).stem}-labels{n}-seed{seed}"
            settings = dict(model="m2", dataset=args.dataset, labels=n, seed=seed, epochs=args.epochs,
                            hidden=args.hidden, z_dim=args.z_dim, lr=args.lr, batch_size=args.batch_size,
                            alpha=args.alpha, labelled_batches=args.labelled_batches, progress=False)
            if (run / "config.json").exists():
                run_dir = pyro_vae.train(resume=run, epochs=args.epochs, progress=False)
            else:
                run_dir = pyro_vae.train(out=run, **settings)
            result = pyro_vae.evaluate_run(run_dir, iw_samples=args.iw_samples, progress=False, fidelity_samples=0)
            model, config, data = pyro_vae.load_run(run_dir)
            baseline = labels_alone(data, args.hidden, seed=seed)
            seconds = statistics.median(m["seconds"] for m in pyro_vae.read_metrics(run_dir))
            row = {"labels": n, "seed": seed, "accuracy": result["test_accuracy"], "labels_alone": baseline,
                   "log_px": result["test_log_likelihood"], "elbo": result["test_elbo"], "seconds_per_epoch": seconds,
                   "epochs": args.epochs, "iw_samples": args.iw_samples}
            append_row(log, row)
    write_summary(args, log)


def write_summary(args, log):
    rows = read_rows(log)
    command = "python experiments/m2.py " + " ".join(sys.argv[1:])
    lines = [f"# Semi-supervised M2 on binarized {Path(args.dataset).name}", "",
             f"Command: `{command}`  ", f"Machine: {machine()}", "",
             f"m2: hidden {args.hidden}, z {args.z_dim}, Adam {args.lr:g}, batch {args.batch_size}, alpha {args.alpha:g} "
             f"(the weight of log q(y|x) per labelled example), labelled examples "
             f"{'in batches of their own' if args.labelled_batches == 'separate' else 'mixed into every batch'}, "
             f"TraceEnum_ELBO with y enumerated, "
             f"{rows[0]['epochs']} epochs (Pyro's tutorial: 50), the last epoch's weights. Labels drawn per seed, "
             f"balanced over the classes; the other training labels hidden. `labels alone`: the same q(y|x) "
             f"network (one softplus layer of {args.hidden}) trained with cross-entropy on the labelled "
             f"examples only (binarized as m2's input), 4000 steps of Adam 1e-3. Test accuracy on the whole "
             f"test split; log p(x) with y summed over the 10 classes and K = {rows[0]['iw_samples']} draws of z "
             f"per class, nats per image. Mean and 95% t-interval over seeds; the gain is paired by seed.", "",
             "| labels | seeds | m2 accuracy | labels alone | gain (paired) | test log p(x) | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["labels"] for r in rows}):
        group = [r for r in rows if r["labels"] == n]
        acc, base = t_interval([r["accuracy"] for r in group]), t_interval([r["labels_alone"] for r in group])
        gain = t_interval([r["accuracy"] - r["labels_alone"] for r in group])
        ll = t_interval([r["log_px"] for r in group])
        claim = (" (one seed: no interval)" if len(group) < 2 else
                 "" if gain[0] - gain[1] > 0 or gain[0] + gain[1] < 0 else " (interval holds 0)")
        lines.append(f"| {n} | {len(group)} | {acc[0]:.4f} +- {acc[1]:.4f} | {base[0]:.4f} +- {base[1]:.4f} | "
                     f"{gain[0]:+.4f} +- {gain[1]:.4f}{claim} | {ll[0]:.2f} +- {ll[1]:.2f} | "
                     f"{statistics.median(r['seconds_per_epoch'] for r in group):.1f} |")
    lines += ["", "Raw rows: " + f"[{log.name}]({log.name})", ""]
    # what a person wrote about these rows (RESULTS/NAME.head.md) stays above the regenerated table
    head = RESULTS / f"{args.name}.head.md"
    text = "\n".join(lines)
    if head.exists():
        text = head.read_text().rstrip("\n") + "\n\n" + text[text.index("Command:"):]
    (RESULTS / f"{args.name}.md").write_text(text)


if __name__ == "__main__":
    script(main)  # an error in one line, as the CLI ends
