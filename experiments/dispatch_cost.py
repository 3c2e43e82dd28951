"""What one ATen operator call costs in Python, by the way it is called (benchmark.md, eleventh round).

The captured step's replay (pyro_vae/capture.py, `lean`) calls each operator as `OpOverload._op`;
this times that call against the operator's public binding (`torch.mul`) and `OpOverload.__call__`
on a small product of the size a batch-64 step's elementwise work has (64 x 50), by the CPU time
of this thread (so another job on the machine changes it little): rounds of calls, the kinds in
turn, the fastest and the median round of each, microseconds per call.

    OMP_NUM_THREADS=1 python experiments/dispatch_cost.py [--rounds 15 --calls 20000]
"""

import argparse
import statistics
import time

import torch

from pyro_vae.cli import positive_int


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=positive_int, default=15)
    p.add_argument("--calls", type=positive_int, default=20000)
    args = p.parse_args()
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be at least 1")
    a, b = torch.randn(64, 50), torch.randn(64, 50)
    op = torch.ops.aten.mul.Tensor
    kinds = {"OpOverload._op (the lean replay)": lambda: op._op(a, b),
             "torch.mul (the public binding)": lambda: torch.mul(a, b),
             "OpOverload.__call__ (make_fx's graph)": lambda: op(a, b),
             "an empty lambda (the loop itself)": lambda: None}
    seconds = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind, call in kinds.items():
            start = time.thread_time()
            for _ in range(args.calls):
                call()
            seconds[kind].append((time.thread_time() - start) / args.calls * 1e6)
    for kind, us in seconds.items():
        print(f"{kind:40} fastest {min(us):5.2f} us, median {statistics.median(us):5.2f} us per call")


if __name__ == "__main__":
    main()
