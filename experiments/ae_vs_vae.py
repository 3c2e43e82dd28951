"""The seeds' claim as a figure: an autoencoder's latent space has holes, a VAE's does not.

    python experiments/ae_vs_vae.py --epochs 10

AE (delta guide, trained on reconstruction alone: --beta 0 drops its log p(z) term, as in the
seeds) and VAE (diagonal Gaussian guide, prior N(0, I)) with the same networks (z 2, hidden 400),
Adam 1e-3, batch 256, on binarized Fashion-MNIST. The figure shows the test set
at its codes and images decoded from z ~ N(0, I) for both: experiments/results/ae_vs_vae.png.
"""

import argparse
from pathlib import Path

import pyro_vae
from pyro_vae.cli import positive_int, script
from pyro_vae.runs.figures import latent_space_comparison
from vae_fashion_mnist import RESULTS  # noqa: E402 (same folder)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--out", default="runs/ae-vs-vae")
    args = p.parse_args()
    models = {}
    for name in ("ae", "vae"):
        run_dir = pyro_vae.train(model=name, dataset=args.dataset, z_dim=2, hidden=400, batch_size=256,
                                 beta=0.0 if name == "ae" else 1.0,
                                 epochs=args.epochs, out=Path(args.out) / name, progress=False)
        models[name.upper()], _, data = pyro_vae.load_run(run_dir)
        print(name, pyro_vae.read_metrics(run_dir)[-1], flush=True)
    path = latent_space_comparison(models, data, RESULTS / "ae_vs_vae.png")
    print(f"figure: {path}")


if __name__ == "__main__":
    script(main)  # an error in one line, as the CLI ends
