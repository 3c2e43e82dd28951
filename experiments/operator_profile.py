"""Where fit's training time goes, by torch operator: the default VAE (784-400-50, softplus), or
cvae2 (`--model cvae2`, conditioned on the one-hot label), on binarized Fashion-MNIST, one epoch of warm-up (the step captured, each product's library chosen),
then epochs under torch.profiler, one torch thread.

    OMP_NUM_THREADS=1 python experiments/operator_profile.py [--batch 64] [--train-size 12800] [--epochs 1] [--compile inductor] [--model cvae2]

It prints each operator's share of the profiled time and its milliseconds per step.
"""
import argparse
import math

import torch
from torch.profiler import ProfilerActivity, profile

import pyro_vae
from pyro_vae.cli import positive_int


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--train-size", type=positive_int, default=12800, help="training images (the profile's epochs)")
    p.add_argument("--epochs", type=positive_int, default=1, help="profiled epochs, after one of warm-up")
    p.add_argument("--rows", type=positive_int, default=20, help="operators shown")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "inductor", "off"], help="the step profiled")
    p.add_argument("--model", default="vae", choices=["vae", "cvae2"])
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size)
    model = pyro_vae.build_model(args.model, data.x_dim, data.n_classes, z_dim=50, hidden=400)
    trainer = pyro_vae.Trainer(model, compile=args.compile)
    trainer.run(data, 1, args.batch)  # warm-up: capture, product timing, first-step validation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.run(data, 1 + args.epochs, args.batch)
    steps = args.epochs * math.ceil(len(data.splits["train"][0]) / args.batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{trainer.capture_note}; {trainer.products.summary()}")
    print(f"{steps} steps at batch {args.batch}, {total / 1e3 / steps:.2f} ms per step under the profiler")
    print(f"{'operator':45s} {'share':>6s} {'ms/step':>8s} {'calls/step':>10s}")
    for e in events[:args.rows]:
        print(f"{e.key[:45]:45s} {e.self_cpu_time_total / total:6.1%} {e.self_cpu_time_total / 1e3 / steps:8.3f} "
              f"{e.count / steps:10.1f}")


if __name__ == "__main__":
    main()
