"""What the twelfth round of issue 16 saves: two copies of the default VAE (784-400-50, softplus)
trained side by side on binarized Fashion-MNIST, one thread, their epochs alternating in one process:

- now: fit's step as it is: the captured graph with the values that depend on no input folded
  (`capture.fold_shape_constants`), and the epoch's bookkeeping at its end (each step's loss kept
  in a list, checked and summed once), the batch's rows gathered by `index_select`, no labels
  gathered for a model that reads none, Pyro's validation switch left alone by a captured step;
- before: the same with those undone (`BeforeTrainer` below: the loop as it was, which checked
  and summed each step's loss with four operators, gathered rows and labels by `x[idx]`, and
  entered `pyro.validation_enabled` every step).

    OMP_NUM_THREADS=1 python experiments/step_bookkeeping.py [--epochs 30] [--train-size 12800] [--batch 64] [--model vae]

It prints each arm's median seconds per epoch (epochs 2..: the first captures) and now / before
over the epochs: median, quartiles, and the geometric mean with its 95% interval (benchmark.py's
`paired_summary`). The two arms draw from one generator in turn, so their numbers differ
(tests/test_capture.py checks the folded graph's bits against the unfolded one's).
"""
import argparse
import statistics
import time

import pyro
import torch

import pyro_vae
import pyro_vae.capture as capture
from benchmark import paired_summary  # experiments/benchmark.py: Student's t on the paired log ratios
from pyro_vae import distributed
from pyro_vae.data import batches
from pyro_vae.svi import adam_step, is_validation_enabled
from pyro_vae.cli import positive_int


class BeforeTrainer(pyro_vae.Trainer):
    """The training loop's bookkeeping as it was before this round (the single-process path)."""

    def _epoch(self, data, inputs, steps, callbacks, images_only=False):
        x_train, y_train = data.splits["train"]
        n, device = len(x_train), x_train.device
        self.model.train()
        start = time.perf_counter()
        epoch_loss = torch.zeros((), device=device)
        first_bad = torch.full((), steps, dtype=torch.long, device=device)
        for step, idx in enumerate(batches(n, self.batch_size, device=device)):
            x = self.binarize(x_train[idx]) if data.binarized else x_train[idx]
            y = y_train[idx]
            distributed.world_size()
            args = inputs(x, y)
            validate, self._first_step = self._first_step and is_validation_enabled(), False
            with pyro.validation_enabled(validate):
                loss = self.captured(*args) if self.captured is not None and not validate else None
                if loss is None:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = self.loss_fn(*args)
                    loss.backward()
            finite = torch.isfinite(loss)
            adam_step(self.optimizer)
            first_bad = torch.where(finite | (first_bad < steps), first_bad, step)
            epoch_loss += loss.detach()
        train_elbo = -epoch_loss.item() / n
        seconds = time.perf_counter() - start
        assert first_bad.item() == steps
        return {"epoch": self.epoch + 1, "train_elbo": train_elbo, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--train-size", type=positive_int, default=12800)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--model", default="vae", choices=["vae", "cvae2"])
    args = p.parse_args()
    torch.set_num_threads(1)
    data = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size)
    fold = capture.fold_shape_constants
    trainers = {}
    for arm, cls in (("now", pyro_vae.Trainer), ("before", BeforeTrainer)):
        torch.manual_seed(0)
        model = pyro_vae.build_model(args.model, data.x_dim, data.n_classes, z_dim=50, hidden=400)
        trainers[arm] = cls(model)
    seconds = {arm: [] for arm in trainers}
    for epoch in range(1, args.epochs + 1):
        for arm, trainer in trainers.items():
            capture.fold_shape_constants = fold if arm == "now" else (lambda graph: 0)
            trainer.run(data, epoch, args.batch)
            seconds[arm].append(trainer.history[-1]["seconds"])
    capture.fold_shape_constants = fold
    for arm, s in seconds.items():
        print(f"{arm:7s} median {statistics.median(s[1:]):.3f} s per epoch of {args.train_size} images, "
              f"batch {args.batch}, {args.model}")
    print(paired_summary(seconds["now"][1:], seconds["before"][1:], "now / before"))


if __name__ == "__main__":
    main()
