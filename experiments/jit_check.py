"""Why fit does not use JitTrace_ELBO: same loss as Trace_ELBO, but slower steps under torch 2.x.

For the vae (784-400-50), one training step (loss, backward, Adam) with Trace_ELBO and with
JitTrace_ELBO, validation off, on random binary data: the first loss of each (the JIT's first
call runs the model once more to find the parameters, so it draws other noise: the two losses
agree only up to Monte Carlo noise), the first (compiling) call, and the median step time over
interleaved blocks.

    python experiments/jit_check.py
"""

import statistics
import sys
import time

import pyro
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

import pyro_vae


def main(threads=1):
    torch.set_num_threads(threads)
    pyro.enable_validation(False)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {threads} thread(s)")
    for batch_size in (64, 256):
        pyro.set_rng_seed(0)
        pyro.clear_param_store()  # the JIT looks parameters up by name in the store
        model = pyro_vae.build_model("vae", 784)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.bernoulli(torch.rand(batch_size, 784))
        elbos = {"Trace_ELBO": Trace_ELBO(max_plate_nesting=1), "JitTrace_ELBO": JitTrace_ELBO(max_plate_nesting=1)}
        losses = {}
        for name, elbo in elbos.items():
            pyro.set_rng_seed(1)
            start = time.perf_counter()
            losses[name] = elbo.differentiable_loss(model.model, model.guide, x)
            print(f"batch {batch_size} {name}: loss {losses[name].item():.4f}, first call {time.perf_counter() - start:.3f} s")

        def step(elbo):
            loss = elbo.differentiable_loss(model.model, model.guide, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        times = {name: [] for name in elbos}
        for _ in range(8):  # interleaved blocks of 10 steps
            for name, elbo in elbos.items():
                start = time.perf_counter()
                for _ in range(10):
                    step(elbo)
                times[name].append((time.perf_counter() - start) / 10 * 1000)
        plain = statistics.median(times["Trace_ELBO"])
        jit = statistics.median(times["JitTrace_ELBO"])
        print(f"batch {batch_size}: Trace_ELBO {plain:.2f} ms/step, JitTrace_ELBO {jit:.2f} ms/step ({jit / plain:.2f}x)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
