"""Why a float32 Linear layer runs in oneDNN on the CPU (pyro_vae/nets.py, `Linear`).

Times one product of the benchmark's first layer, (batch x 784) @ (784 x 400), and the two
products of its backward pass, on one thread: torch's own CPU matmul (MKL in the official
wheels); oneDNN through `torch.ops.mkldnn._linear_pointwise` as `nets.Linear` calls it, its
backward's transposed operands passed as strided views (`oneDNN ms`), and with contiguous copies
of them made first, as it did before (`copies ms`); and, where jax is installed, XLA's jitted dot
(what NumPyro's epoch runs on). Prints milliseconds per product (the median of 7 rounds) and torch's BLAS and CPU
capability.

    python experiments/matmul_check.py [--batch 256] [--threads 1]
"""

import argparse
import importlib.util
import statistics
import time

import torch

from pyro_vae.nets import PLAIN_PRODUCT
from pyro_vae.cli import positive_int, threads_setting


def timed(f, n=100, rounds=7):
    for _ in range(10):
        f()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            f()
        times.append((time.perf_counter() - start) / n * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--threads", type=threads_setting, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = torch.__config__.show()
    blas = next((line.split("BLAS_INFO=")[1].split(",")[0] for line in config.splitlines() if "BLAS_INFO=" in line), "?")
    cpu = next((line.split(":")[1].strip() for line in config.splitlines() if "CPU capability" in line), "?")
    print(f"torch {torch.__version__}, BLAS {blas}, CPU capability {cpu}, {args.threads} thread(s); batch {args.batch}")
    torch.manual_seed(0)
    x, w, g = torch.randn(args.batch, 784), torch.randn(400, 784), torch.randn(args.batch, 400)

    def onednn(a, b):  # a @ b.T by oneDNN, called as nets.Linear calls it
        return torch.ops.mkldnn._linear_pointwise(a, b, None, *PLAIN_PRODUCT)

    rows = {
        "forward x W^T": (lambda: x @ w.t(), lambda: onednn(x, w), None),
        "grad of x: g W": (lambda: g @ w, lambda: onednn(g, w.t()), lambda: onednn(g, w.t().contiguous())),
        "grad of W: g^T x": (lambda: g.t() @ x, lambda: onednn(g.t(), x.t()),
                             lambda: onednn(g.t().contiguous(), x.t().contiguous())),
    }
    jax_dot = None
    if importlib.util.find_spec("jax") is not None:
        import jax
        import jax.numpy as jnp

        xj, wj, gj = (jnp.asarray(t.numpy()) for t in (x, w, g))
        dot = jax.jit(lambda a, b: a @ b)
        jax_dot = {"forward x W^T": lambda: dot(xj, wj.T).block_until_ready(),
                   "grad of x: g W": lambda: dot(gj, wj).block_until_ready(),
                   "grad of W: g^T x": lambda: dot(gj.T, xj).block_until_ready()}
    print(f"{'product':18} {'torch ms':>9} {'oneDNN ms':>10} {'ratio':>6} {'copies ms':>10} {'XLA ms':>7}")
    for name, (ours, dnn, copies) in rows.items():
        assert torch.allclose(ours(), dnn(), rtol=1e-4, atol=1e-3)
        assert copies is None or torch.equal(dnn(), copies())  # the same product, bit for bit
        a, b = timed(ours), timed(dnn)
        c = timed(copies) if copies else float("nan")
        d = timed(jax_dot[name]) if jax_dot else float("nan")
        print(f"{name:18} {a:9.3f} {b:10.3f} {a / b:6.2f} {c:10.3f} {d:7.3f}")


if __name__ == "__main__":
    main()
