"""NumPyro's jitted training epoch for the vae and cvae2 of experiments/benchmark.py, timed on the CPU.

The same networks (784 -> 400 -> 2x50 encoder, 50 -> 400 -> 784 Bernoulli decoder, softplus,
guide scale softplus(raw) + 1e-5, prior N(0, I); with --model cvae2, p(z)p(x|z,y) with q(z|x,y):
the label's one-hot vector of 10 joins the encoder's input, 794 -> 400 -> 2x50, and the decoder's,
60 -> 400 -> 784), the same binarized Fashion-MNIST training
split (read with pyro_vae.load_dataset), Trace_ELBO with one particle and Adam(1e-3). One epoch
is one jitted function: a fresh permutation, split into N // batch_size full batches (the
remainder, N % batch_size examples, is dropped each epoch; see "dropped_examples"), then a
lax.scan of svi.update over them, each batch binarized afresh on the device. Only the loss
sum comes back to the host, once per epoch.

    python experiments/numpyro_vae.py --batch-size 64 --epochs 4 --train-size 20000 --threads 1 [--model cvae2]

The first epoch includes XLA compilation and is reported on its own as compile_s; epoch_s lists
the later ones. With --serve it compiles, prints one JSON line, then runs one epoch for each line
it reads on stdin and answers with a JSON line of its seconds and train ELBO, until stdin closes:
experiments/benchmark.py runs it so, its epochs taking turns with the torch loops' on the same
machine load. --threads N pins the process to N CPUs (XLA_FLAGS alone did not keep XLA on
one core). Prints one line per epoch, then one JSON line. Needs numpyro and jax.
"""

import argparse
import json
import os
import statistics
import sys
import time

from pyro_vae.cli import positive_int, seed_setting, threads_setting

MODELS = ("vae", "cvae2")  # the models of experiments/benchmark.py written here in NumPyro


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="vae")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--epochs", type=positive_int, default=4, help="including the first (compiling) one")
    p.add_argument("--train-size", type=positive_int, default=None, help="default: the whole training split")
    p.add_argument("--threads", type=threads_setting, default=None, help="pin XLA and torch to this many CPUs")
    p.add_argument("--seed", type=seed_setting, default=0)
    p.add_argument("--serve", action="store_true", help="one epoch per line read on stdin (see above)")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first one compiles)")

    if args.threads:
        # XLA reads its flags once, when jax initialises its backend: set them before importing
        # jax. They are not enough: XLA's CPU runtime still runs ops on a pool sized by the CPUs
        # this process may use (about 1.8 cores busy out of 2 with the flag alone), so pin the
        # process to `threads` CPUs as well.
        if args.threads == 1:
            os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    import numpy as np
    import torch

    import pyro_vae
    if args.threads:
        torch.set_num_threads(args.threads)
    data = pyro_vae.load_dataset("fashion-mnist", device="cpu", train_size=args.train_size)
    pixels_np = data.splits["train"][0].numpy().astype(np.float32)  # grey levels in [0, 1]
    conditional = args.model == "cvae2"
    labels_np = np.eye(data.n_classes, dtype=np.float32)[data.splits["train"][1].numpy()]  # one-hot

    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    x_dim, hidden, z_dim = 784, 400, 50
    y_dim = data.n_classes if conditional else 0

    def linear(in_dim, out_dim):
        # torch.nn.Linear's default init (uniform +-1/sqrt(fan_in) for weights and bias), so
        # both frameworks start from the same distribution of weights; stax's is Glorot.
        bound = in_dim ** -0.5
        init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
        return stax.Dense(out_dim, W_init=init, b_init=init)

    encoder = stax.serial(linear(x_dim + y_dim, hidden), stax.Softplus, linear(hidden, 2 * z_dim))
    decoder = stax.serial(linear(z_dim + y_dim, hidden), stax.Softplus, linear(hidden, x_dim))

    def given(v, y):  # the decoder's and encoder's input: v, with the label's one-hot vector for cvae2
        return v if y is None else jnp.concatenate([v, y], axis=-1)

    def model(x, y=None):
        decode = numpyro.module("decoder", decoder, (1, z_dim + y_dim))
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(z_dim), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(given(z, y))).to_event(1), obs=x)

    def guide(x, y=None):
        encode = numpyro.module("encoder", encoder, (1, x_dim + y_dim))
        out = encode(given(x, y))
        loc, raw_scale = out[:, :z_dim], out[:, z_dim:]
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("z", dist.Normal(loc, jax.nn.softplus(raw_scale) + 1e-5).to_event(1))

    n, batch = len(pixels_np), args.batch_size
    steps = n // batch
    if steps == 0:
        p.error(f"--batch-size {batch} is larger than the {n} training examples")
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO(num_particles=1))

    @jax.jit
    def epoch(state, pixels, labels, key):
        perm_key, bin_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)[: steps * batch].reshape(steps, batch)

        def step(carry, inputs):
            state, total = carry
            idx, k = inputs
            x = jax.random.bernoulli(k, pixels[idx]).astype(jnp.float32)  # dynamic binarization
            state, loss = svi.update(state, x, labels[idx] if conditional else None)
            return (state, total + loss), None

        (state, total), _ = jax.lax.scan(step, (state, jnp.zeros(())), (order, jax.random.split(bin_key, steps)))
        return state, total

    # The pixels go in as an argument: closed over, they would be baked into the program as a constant.
    pixels, labels = jax.device_put(pixels_np), jax.device_put(labels_np)
    key, init_key, x0_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    state = svi.init(init_key, jax.random.bernoulli(x0_key, pixels[:batch]).astype(jnp.float32),
                     labels[:batch] if conditional else None)
    print(f"numpyro {numpyro.__version__}, jax {jax.__version__} on {jax.devices()[0]}: {args.model}, "
          f"{n} examples, batch {batch}, {steps} steps per epoch, {n - steps * batch} dropped per epoch")

    def one_epoch():
        nonlocal state, key
        key, epoch_key = jax.random.split(key)
        start = time.perf_counter()
        state, total = epoch(state, pixels, labels, epoch_key)
        total.block_until_ready()
        return time.perf_counter() - start, -float(total) / (steps * batch)

    if args.serve:
        seconds, elbo = one_epoch()
        print(json.dumps({"compile_s": round(seconds, 3), "train_size": n, "dropped_examples": n - steps * batch,
                          "jax": jax.__version__, "numpyro": numpyro.__version__}), flush=True)
        for _ in sys.stdin:
            seconds, elbo = one_epoch()
            print(json.dumps({"seconds": seconds, "train_elbo": round(elbo, 3)}), flush=True)
        return

    times, elbo = [], None
    cpu_start = None
    for e in range(args.epochs):
        if e == 1:
            cpu_start = time.process_time()
        seconds, elbo = one_epoch()
        times.append(seconds)
        print(f"epoch {e + 1}: {times[-1]:.2f} s{' (with compilation)' if e == 0 else ''}, train ELBO {elbo:.2f}")
    # CPU seconds per wall second over the timed epochs: about 1 when XLA keeps to one thread.
    print(f"CPU/wall over the timed epochs: {(time.process_time() - cpu_start) / sum(times[1:]):.2f}")

    print(json.dumps({
        "model": args.model, "batch_size": batch, "epochs": args.epochs, "train_size": n, "steps_per_epoch": steps,
        "dropped_examples": n - steps * batch, "compile_s": round(times[0], 3),
        "epoch_s": [round(t, 3) for t in times[1:]], "median_s": round(statistics.median(times[1:]), 3),
        "train_elbo": round(elbo, 3), "jax": jax.__version__, "numpyro": numpyro.__version__,
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
