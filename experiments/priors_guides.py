"""Priors x guides, and IWAE against the VAE, on binarized Fashion-MNIST, with one architecture and budget.

    python experiments/priors_guides.py --epochs 10 --examples 2000

Every configuration: vae, z 50, hidden 400, Adam 1e-3, batch 256, the same epochs and seed.
{standard normal, mixture of 10 Gaussians, VampPrior (50 pseudo-inputs)} x {diagonal Gaussian,
IAF flow (2 transforms)} with Trace_ELBO, and the IWAE bound (K = 5) with the standard normal
prior and diagonal guide. Scored by the importance-sampled log-likelihood with K = 5000 on the
first `--examples` test images. Writes experiments/results/priors_guides.md.
"""

import argparse
import sys
from pathlib import Path

import pyro_vae
from pyro_vae.cli import positive_int, script
from vae_fashion_mnist import RESULTS, machine  # noqa: E402 (same folder)

CONFIGS = [  # (prior, guide, objective, particles)
    ("normal", "diagonal", "trace", 1),
    ("mog", "diagonal", "trace", 1),
    ("vamp", "diagonal", "trace", 1),
    ("normal", "iaf", "trace", 1),
    ("mog", "iaf", "trace", 1),
    ("vamp", "iaf", "trace", 1),
    ("normal", "diagonal", "iwae", 5),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--iw-samples", type=positive_int, default=5000)
    p.add_argument("--examples", type=positive_int, default=2000, help="test images scored")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--out", default="runs/priors-guides")
    args = p.parse_args()

    z_dim, hidden = (8, 64) if args.dataset == "digits" else (50, 400)  # digits: a quick smoke test
    rows = []
    for prior, guide, elbo, k in CONFIGS:
        name = f"{prior}-{guide}-{elbo}{k if elbo == 'iwae' else ''}"
        run_dir = pyro_vae.train(model="vae", dataset=args.dataset, prior=prior, guide=guide, elbo=elbo,
                                 particles=k, z_dim=z_dim, hidden=hidden, batch_size=256, epochs=args.epochs,
                                 out=Path(args.out) / name, progress=False)
        result = pyro_vae.evaluate_run(run_dir, iw_samples=args.iw_samples, examples=args.examples, progress=False)
        history = pyro_vae.read_metrics(run_dir)
        rows.append((prior, guide, f"IWAE, K={k}" if elbo == "iwae" else "ELBO", result, history))
        print(name, result["test_log_likelihood"], result["test_elbo"], flush=True)

    ll = {(r[0], r[1], r[2]): r[3]["test_log_likelihood"] for r in rows}
    base = ll[("normal", "diagonal", "ELBO")]
    command = "python experiments/priors_guides.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Priors and guides on binarized {args.dataset}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        f"Every row: vae, z {z_dim}, hidden {hidden} (softplus MLPs), Bernoulli likelihood, Adam 1e-3, batch 256, "
        f"{args.epochs} epochs on the training split less 10% for validation, seed 0. Scores on the first {args.examples} "
        f"test images (fixed binarization), in nats per example; log-likelihood is importance-sampled "
        f"with K = {args.iw_samples} draws from the guide. Higher is better.",
        "",
        "| prior | guide | objective | test log-likelihood | vs. normal + diagonal | test ELBO | active units | s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for prior, guide, objective, result, history in rows:
        seconds = sorted(m["seconds"] for m in history)[len(history) // 2]
        lines.append(f"| {prior} | {guide} | {objective} | {result['test_log_likelihood']:.2f} | "
                     f"{result['test_log_likelihood'] - base:+.2f} | {result['test_elbo']:.2f} | "
                     f"{result['active_units']} | {seconds:.1f} |")
    iwae = ll[("normal", "diagonal", "IWAE, K=5")]
    vamp = ll[("vamp", "diagonal", "ELBO")]
    vamp_iaf, normal_iaf = ll[("vamp", "iaf", "ELBO")], ll[("normal", "iaf", "ELBO")]
    lines += [
        "",
        "Orderings the literature reports, checked on these runs:",
        "",
        f"- IWAE (K = 5) >= VAE in log-likelihood (Burda et al. 2015): "
        f"{'holds' if iwae >= base else 'does not hold'} here, by {iwae - base:+.2f} nats.",
        f"- VampPrior >= standard normal (Tomczak & Welling 2018): with the diagonal guide "
        f"{'holds' if vamp >= base else 'does not hold'} ({vamp - base:+.2f} nats); with the flow guide "
        f"{'holds' if vamp_iaf >= normal_iaf else 'does not hold'} ({vamp_iaf - normal_iaf:+.2f} nats).",
        "",
        "s / epoch is the median training time of an epoch on this machine, which other jobs may have "
        "shared; compare speeds with experiments/results/benchmark.md, not here.",
        "",
    ]
    (RESULTS / "priors_guides.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    script(main)  # an error in one line, as the CLI ends
