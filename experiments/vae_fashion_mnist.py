"""Pyro's VAE example configuration on binarized Fashion-MNIST, trained and scored with pyro-vae.

    python experiments/vae_fashion_mnist.py --epochs 30

z 50, hidden 400 (784-400-50, softplus), Adam 1e-3, batch 256, Trace_ELBO; dynamic binarization
for training, a fixed seeded binarization of the test set; test log-likelihood with K = 5000.
Writes experiments/results/vae_fashion_mnist.md and copies the run's figures next to it.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.cli import positive_int, seed_setting, script
from pyro_vae.errors import counted

RESULTS = Path(__file__).parent / "results"


def read_rows(log):
    """The rows of a results .jsonl file (none where it does not exist yet)."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def append_row(log, row, show=True):
    """Append one finished run's row to a results .jsonl file as it comes (an interrupted sweep keeps it), and show it."""
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    if show:
        print(json.dumps(row), flush=True)


def cpu_name():
    """The processor's name as lscpu gives it."""
    try:
        return next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine():
    cpu = cpu_name()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    load = os.getloadavg()[1]  # other work on the machine slows the timings; say how much there was
    return (f"{device} ({cpu}), torch {torch.__version__} with {counted(torch.get_num_threads(), 'thread')}, "
            f"pyro {pyro.__version__}, Python {platform.python_version()}; load average {load:.1f} "
            f"(5 min) when the table was written")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--iw-samples", type=positive_int, default=5000)
    p.add_argument("--out", default="runs/vae-fashion-mnist")
    p.add_argument("--seed", type=seed_setting, default=0)
    args = p.parse_args()

    run_dir = pyro_vae.train(model="vae", dataset="fashion-mnist", z_dim=50, hidden=400, lr=1e-3,
                             batch_size=256, epochs=args.epochs, seed=args.seed, out=args.out)
    result = pyro_vae.evaluate_run(run_dir, iw_samples=args.iw_samples)
    history = pyro_vae.read_metrics(run_dir)

    RESULTS.mkdir(exist_ok=True)
    for name in ("samples", "reconstructions", "elbo", "latent"):
        shutil.copy(Path(run_dir) / f"{name}.png", RESULTS / f"vae_fashion_mnist_{name}.png")
    command = "python experiments/vae_fashion_mnist.py " + " ".join(sys.argv[1:])
    rows = [
        ("test ELBO", f"{result['test_elbo']:.2f} nats per example (mean of the K draws)"),
        (f"test log-likelihood, K = {result['iw_samples']}", f"{result['test_log_likelihood']:.2f} nats per example"),
        ("final validation ELBO", f"{history[-1]['val_elbo']:.2f} nats per example (1 draw)"),
        ("active units", f"{result['active_units']} of 50"),
        ("seconds per epoch (median, 54k training images)",
         f"{statistics.median(m['seconds'] for m in history):.2f} s"),
        (f"evaluation time, K = {result['iw_samples']} on {result['examples']} test images",
         f"{result['seconds']:.0f} s"),
    ]
    text = [
        "# VAE on binarized Fashion-MNIST (Pyro's example configuration)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        f"Model: z 50, hidden 400 (784-400-50, softplus), Bernoulli likelihood, diagonal Gaussian guide; "
        f"Trace_ELBO, Adam 1e-3, batch 256, {args.epochs} epochs, seed {args.seed}. Training images are "
        "binarized afresh each batch; the 10,000 test images once, with a fixed seed. 6,000 training "
        "images are held out for validation.",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        *([f"The machine was shared with other jobs during this run (load average {os.getloadavg()[1]:.1f} on "
           f"{os.cpu_count()} cores), so the seconds are inflated; for speed see benchmark.md, which times "
           "the package against a hand-written loop side by side.", ""] if os.getloadavg()[1] > os.cpu_count() else []),
        "Figures: [samples](vae_fashion_mnist_samples.png), "
        "[reconstructions](vae_fashion_mnist_reconstructions.png), "
        "[ELBO curves](vae_fashion_mnist_elbo.png), [latent space](vae_fashion_mnist_latent.png).",
        "",
    ]
    (RESULTS / "vae_fashion_mnist.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    script(main)  # an error in one line, as the CLI ends
