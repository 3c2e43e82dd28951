"""Why training and evaluation flush denormal floats to zero (pyro_vae/nets.py, `flush_denormals`).

The published Fashion-MNIST setup (density_fashion_mnist.py: gated 300-300, z 40, Adam 5e-4,
batch 100, the 100-epoch KL warm-up, 10,000 validation images), for each prior: two copies of one
model from the same weights, one trained with denormals flushed to zero and one without, on the
same batches and the same noise (seeded per epoch), their epochs taking turns in one process so
that the machine's drift falls on both alike. Prints each epoch's seconds both ways and their
ratio, and how far apart the two copies' validation ELBOs end. Then the importance-sampled
log-likelihood (K = `--k`) of `--test` test images by the flushed copy, both ways, in turn.
With `--this-thread` a third copy is trained with the flush set by torch.set_flush_denormal on the
training thread alone (what flush_denormals did before it set torch's other threads too): on more
than one thread, the other threads' share of the work still meets denormals.

    OMP_NUM_THREADS=1 python experiments/denormals.py [--epochs 4] [--priors vamp,normal]
    OMP_NUM_THREADS=2 python experiments/denormals.py --priors vamp --epochs 3 --this-thread --rounds 0
"""

import argparse
import copy
import os
import statistics
import time

import pyro
import torch

from pyro_vae import Trainer, build_model, importance_sampled, load_dataset, model_inputs
from pyro_vae.nets import flush_denormals
from pyro_vae.cli import positive_int


def flushing(on):
    os.environ["PYRO_VAE_FLUSH_DENORMALS"] = "1" if on else "0"  # read as each block opens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=4)
    p.add_argument("--priors", default="vamp,normal")
    p.add_argument("--test", type=positive_int, default=500)
    p.add_argument("--k", type=positive_int, default=1000)
    p.add_argument("--rounds", type=positive_int, default=3, help="of the evaluation, each way (0: none)")
    p.add_argument("--this-thread", action="store_true", help="a third copy, flushed on the training thread alone")
    args = p.parse_args()
    data = load_dataset("fashion-mnist", val_size=10000)
    x, labels = (t[:args.test] for t in data.splits["test"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); fashion-mnist, "
          f"{len(data.splits['train'][0])} training images, batch 100, epochs 1-{args.epochs} of the KL warm-up")
    for prior in args.priors.split(","):
        torch.manual_seed(0)
        parts = {"prior": {"pseudo_inputs": 500, "pixels": "hardtanh"}} if prior == "vamp" else None
        model = build_model("vae", data.x_dim, z_dim=40, hidden=[300, 300], net="gated", prior=prior, part_args=parts)
        twins = {True: Trainer(model, lr=5e-4, warmup_epochs=100),
                 False: Trainer(copy.deepcopy(model), lr=5e-4, warmup_epochs=100)}
        if args.this_thread:
            twins["thread"] = Trainer(copy.deepcopy(model), lr=5e-4, warmup_epochs=100)
        third = " s this thread only | this thread / flushed |" if args.this_thread else ""
        print(f"\n{prior}: | epoch | s flushed | s not | not / flushed |{third}\n|---|---|---|---|"
              + "---|---|" * args.this_thread)
        for epoch in range(1, args.epochs + 1):
            for on, trainer in twins.items():
                flushing(on is True)
                pyro.set_rng_seed(epoch)  # the same batches and noise for each
                torch.set_flush_denormal(on == "thread")  # the training thread's flag alone
                trainer.run(data, epoch, 100)
                torch.set_flush_denormal(False)
            s = {on: t.history[-1]["seconds"] for on, t in twins.items()}
            print(f"| {epoch} | {s[True]:.2f} | {s[False]:.2f} | {s[False] / s[True]:.2f} |"
                  + (f" {s['thread']:.2f} | {s['thread'] / s[True]:.2f} |" if args.this_thread else ""), flush=True)
        total = {on: sum(m["seconds"] for m in t.history) for on, t in twins.items()}
        val = {on: t.history[-1]["val_elbo"] for on, t in twins.items()}
        print(f"all {args.epochs} epochs: {total[True]:.1f} s flushed, {total[False]:.1f} s not "
              f"({total[False] / total[True]:.2f}x); validation ELBO after epoch {args.epochs}: {val[True]:.3f} flushed, "
              f"{val[False]:.3f} not (nats)")
        if args.this_thread:
            print(f"flushed on the training thread alone: {total['thread']:.1f} s ({total['thread'] / total[True]:.2f}x), "
                  f"validation ELBO {val['thread']:.3f}")
        if not args.rounds:
            continue
        evals, scores = {True: [], False: []}, {}
        model.eval()
        for _ in range(args.rounds):
            for on in (True, False):
                flushing(on)
                pyro.set_rng_seed(1)
                start = time.perf_counter()
                with flush_denormals():
                    scores[on] = importance_sampled(model.model, model.guide, *model_inputs(model, x, labels, 0),
                                                    samples=args.k, progress=False)[0]
                evals[on].append(time.perf_counter() - start)
        v1, v0 = statistics.median(evals[True]), statistics.median(evals[False])
        print(f"evaluation, K = {args.k} on {args.test} test images: {v1:.2f} s flushed, {v0:.2f} s not ({v0 / v1:.2f}x, "
              f"medians of {args.rounds}); largest change in a log p(x): {(scores[True] - scores[False]).abs().max().item():.1e} nats",
              flush=True)


if __name__ == "__main__":
    main()
