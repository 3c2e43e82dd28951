"""Where a training step's time goes: fit's loss (DeviceTrace_ELBO) against the hand-written one.

For the same vae networks on the same binarized Fashion-MNIST batches, trained side by side
(epochs alternate), this splits the loss computation into the networks' own forward passes
(timed around `encoder.net` and `decoder.net`) and everything else: for the hand-written loss the
reparameterised sample and the three log-densities; for Pyro also tracing the guide, replaying
the model, the plate, the distribution objects and the trace's log-density bookkeeping. It also
counts the tensor operations one loss computation dispatches (torch.profiler, top-level aten ops).

    python experiments/step_profile.py --batch-size 256
"""

import argparse
import copy
import time
from collections import Counter

import pyro
import torch
from torch.profiler import profile

import pyro_vae
from benchmark import fashion_mnist, hand_written_loss
from pyro_vae.data import batches, binarize
from pyro_vae.cli import positive_int, threads_setting


def timed(module, key, totals):
    forward = module.forward

    def wrapper(*args):
        start = time.perf_counter()
        out = forward(*args)
        totals[key] += time.perf_counter() - start
        return out

    module.forward = wrapper


def top_level_ops(fn):
    with profile() as prof:
        fn()
    ops = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return Counter(e.name for e in ops)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vae")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--train-size", type=positive_int, default=20000)
    p.add_argument("--epochs", type=positive_int, default=4, help="the first is the warm-up")
    p.add_argument("--threads", type=threads_setting, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = fashion_mnist("cpu", args.train_size)
    pyro.set_rng_seed(0)
    ours = pyro_vae.build_model(args.model, data.x_dim, data.n_classes)
    hand = copy.deepcopy(ours)
    totals = Counter()
    for model, path in ((ours, "ours"), (hand, "hand")):
        timed(model.encoder.net, (path, "networks"), totals)
        timed(model.decoder.net, (path, "networks"), totals)
    optimizers = {"ours": torch.optim.Adam(ours.parameters(), 1e-3), "hand": torch.optim.Adam(hand.parameters(), 1e-3)}
    elbo = pyro_vae.make_elbo()
    losses = {"ours": lambda *a: elbo.differentiable_loss(ours.model, ours.guide, *a),
              "hand": lambda *a: hand_written_loss(hand, *a)}
    x_train, labels = data.splits["train"]
    pyro.enable_validation(False)
    steps = 0
    for epoch in range(args.epochs):
        if epoch == 1:
            totals.clear()
        for path in ("ours", "hand"):
            for idx in batches(len(x_train), args.batch_size):
                args_ = pyro_vae.model_inputs(ours, binarize(x_train[idx]), labels[idx], data.n_classes)
                start = time.perf_counter()
                loss = losses[path](*args_)
                totals[(path, "loss")] += time.perf_counter() - start
                optimizers[path].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[path].step()
                steps += path == "ours" and epoch > 0
    print(f"{args.model}, batch {args.batch_size}, {args.threads} thread(s); ms per step, mean of {steps} steps")
    print(f"{'path':5} {'loss':>8} {'networks':>9} {'the rest':>9} {'aten ops':>9}")
    x = binarize(x_train[: args.batch_size])
    one = pyro_vae.model_inputs(ours, x, labels[: args.batch_size], data.n_classes)
    for path in ("ours", "hand"):
        loss_ms, net_ms = (totals[(path, k)] / steps * 1e3 for k in ("loss", "networks"))
        ops = top_level_ops(lambda: losses[path](*one))
        print(f"{path:5} {loss_ms:8.3f} {net_ms:9.3f} {loss_ms - net_ms:9.3f} {sum(ops.values()):9d}")
        print("      " + ", ".join(f"{k[6:]} {v}" for k, v in ops.most_common()))


if __name__ == "__main__":
    main()
