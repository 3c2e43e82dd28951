"""What the lean captured step saves: two copies of the default VAE (784-400-50, softplus) trained
side by side on binarized Fashion-MNIST, one thread, their epochs alternating in one process:

- lean: fit's step as it is (the captured graph with dead operators dropped, flat inputs and
  each ATen operator called as torch's C function; Adam's fused kernel called directly; no
  zero_grad before a step that sets every gradient; the binarization compared in place);
- before: the same with those four undone (the graph called through torch.fx's pytree and
  `torch.ops.aten.*`, `Optimizer.step`, `zero_grad` every step, `(rand < x).to(dtype)`).

    OMP_NUM_THREADS=1 python experiments/lean_step.py [--epochs 30] [--train-size 12800] [--batch 64]

It prints each arm's median seconds per epoch (epochs 2.., the first captures) and lean / before
over the epochs: median, quartiles, and the geometric mean with its 95% interval (benchmark.py's
`paired_summary`); both arms draw from one generator in turn, so their
numbers differ (tests/test_capture.py checks the lean step's bits against the eager step's).
"""
import argparse
import statistics

import torch

import pyro_vae
import pyro_vae.capture as capture
import pyro_vae.svi as svi
from pyro_vae.cli import positive_int
from benchmark import paired_summary  # experiments/benchmark.py: Student's t on the paired log ratios


class ZeroGradFirst:
    """The captured step preceded by `zero_grad`, as every step was before."""

    def __init__(self, trainer):
        self.trainer, self.step = trainer, trainer.captured
        self.graphs = self.step.graphs

    def __call__(self, *args):
        self.trainer.optimizer.zero_grad(set_to_none=True)
        return self.step(*args)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--train-size", type=positive_int, default=12800)
    p.add_argument("--batch", type=positive_int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size)
    lean, adam_step = capture.lean, svi.adam_step
    trainers = {}
    for arm in ("lean", "before"):
        torch.manual_seed(0)
        model = pyro_vae.build_model("vae", x_dim=data.x_dim, z_dim=50, hidden=400)
        trainers[arm] = pyro_vae.Trainer(model)
    before = trainers["before"]
    before.binarize = lambda x: (torch.rand_like(x) < x).to(x.dtype)
    before.captured = ZeroGradFirst(before)
    seconds = {arm: [] for arm in trainers}
    for epoch in range(1, args.epochs + 1):
        for arm, trainer in trainers.items():
            capture.lean = lean if arm == "lean" else (lambda graph, args: graph)
            svi.adam_step = adam_step if arm == "lean" else (lambda optimizer: optimizer.step())
            trainer.run(data, epoch, args.batch)
            seconds[arm].append(trainer.history[-1]["seconds"])
    capture.lean, svi.adam_step = lean, adam_step
    for arm, s in seconds.items():
        print(f"{arm:7s} median {statistics.median(s[1:]):.3f} s per epoch of {args.train_size} images, batch {args.batch}")
    print(paired_summary(seconds["lean"][1:], seconds["before"][1:], "lean / before"))


if __name__ == "__main__":
    main()
