"""Seconds per epoch of m2 (y enumerated: about 10 decoder and encoder passes per example) against
cvae1 on the same data and networks, their epochs alternated in one process so both see the same
machine load.

    python experiments/m2_speed.py --train-size 10000 --rounds 3      # -> experiments/results/m2_speed.md

Both: binarized Fashion-MNIST, one softplus layer of 500, z 50, Adam 4.2e-4, batch 200 (Pyro's
SS-VAE configuration); m2 with 100 labels (the rest enumerated), cvae1 with every label.
"""

import argparse
import statistics
import sys

import pyro
import torch

import pyro_vae
from pyro_vae.cli import positive_int, threads_setting
from vae_fashion_mnist import RESULTS, machine  # noqa: E402 (same folder)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=positive_int, default=10000)
    p.add_argument("--rounds", type=positive_int, default=3, help="epochs of each, alternated; the first is a warm-up")
    p.add_argument("--threads", type=threads_setting, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    semi = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size, labels=100)
    full = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size)
    trainers = {}
    for name, data in (("cvae1", full), ("m2", semi)):
        model = pyro_vae.build_model(name, data.x_dim, data.n_classes, z_dim=50, hidden=500)
        trainers[name] = (pyro_vae.Trainer(model, lr=4.2e-4), data)
    seconds = {name: [] for name in trainers}
    for round_ in range(1, args.rounds + 1):
        for name, (trainer, data) in trainers.items():
            pyro.clear_param_store()
            seconds[name].append(trainer.run(data, round_, 200)[-1]["seconds"])
            print(name, round_, f"{seconds[name][-1]:.2f} s", flush=True)
    median = {name: statistics.median(s[1:] or s) for name, s in seconds.items()}
    command = "python experiments/m2_speed.py " + " ".join(sys.argv[1:])
    text = (f"# m2 against cvae1: seconds per epoch\n\nCommand: `{command}`  \nMachine: {machine()}\n\n"
            f"Binarized Fashion-MNIST, the first {args.train_size} training images, hidden 500, z 50, batch 200, "
            f"{args.rounds} epochs of each alternated (the first a warm-up, left out of the median).\n\n"
            f"| model | s / epoch (median) | every epoch |\n|---|---|---|\n"
            + "".join(f"| {name} | {median[name]:.2f} | {', '.join(f'{s:.2f}' for s in seconds[name])} |\n"
                      for name in seconds)
            + f"\nm2 / cvae1: {median['m2'] / median['cvae1']:.1f}x. m2 enumerates y for the unlabelled examples, "
              f"so its guide's encoder and its decoder run once per class (10) for each of them, and its steps "
              f"read the labelled count from the device once (to split the batch).\n")
    (RESULTS / "m2_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
