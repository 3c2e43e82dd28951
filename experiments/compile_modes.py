"""Two `--compile` modes side by side: copies of one model (the default 784-400-50 softplus VAE,
or cvae2) from the same weights, trained on binarized Fashion-MNIST with one torch thread, their
epochs alternating in one process, so both see the same machine load.

    OMP_NUM_THREADS=1 python experiments/compile_modes.py [--modes inductor,on] [--model vae] [--batch 64] [--epochs 21] [--train-size 12800] [--inductor-config KEY=VALUE ...]

`--inductor-config` sets an Inductor setting (torch._inductor.config) while the first mode's step
is compiled (its first epoch), e.g. `--modes inductor,inductor --inductor-config cpp_wrapper=True`
measures Inductor's C++ wrapper against its Python one.

It prints each mode's seconds to capture (and compile) and its first epoch (which waits for
that), its median epoch after the first, and the first mode over the second per epoch, epochs
2..: median, quartiles, and the geometric mean with its 95% interval (benchmark.py's
`paired_summary`). Inductor's compile is timed against its disk cache as it stands: set
TORCHINDUCTOR_CACHE_DIR to an empty folder for a cold compile.
"""
import argparse
import ast
import contextlib
import statistics

import torch

import pyro_vae
from pyro_vae.cli import positive_int
from benchmark import paired_summary  # experiments/benchmark.py: Student's t on the paired log ratios


def inductor_settings(settings):
    """A context in which Inductor's config has `settings` (none: no change, Inductor not imported)."""
    if not settings:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(settings)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="inductor,on", help="two --compile values, compared first / second")
    p.add_argument("--model", default="vae", choices=["vae", "cvae2"])
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--epochs", type=positive_int, default=21)
    p.add_argument("--train-size", type=positive_int, default=12800)
    p.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                   help="an Inductor setting for the first mode's compile (a Python literal), e.g. cpp_wrapper=True")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first one compiles and is left out of the comparison)")
    try:
        settings = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.inductor_config)}
    except (ValueError, SyntaxError):
        p.error(f"--inductor-config takes KEY=VALUE with a Python literal value, got {args.inductor_config}")
    if settings:
        import torch._inductor.config as inductor_config
        unknown = [k for k in settings if not hasattr(inductor_config, k)]
        if unknown:
            p.error(f"--inductor-config: Inductor has no setting {', '.join(unknown)}")
    modes = args.modes.split(",")
    if len(modes) != 2:
        p.error(f"--modes takes two --compile values, e.g. inductor,on; got {args.modes!r}")
    torch.set_num_threads(1)
    data = pyro_vae.load_dataset("fashion-mnist", train_size=args.train_size)
    trainers = []
    for mode in modes:
        torch.manual_seed(0)
        model = pyro_vae.build_model(args.model, data.x_dim, data.n_classes, z_dim=50, hidden=400)
        trainers.append(pyro_vae.Trainer(model, compile=mode))
    seconds = [[], []]
    for epoch in range(1, args.epochs + 1):
        for arm, (trainer, s) in enumerate(zip(trainers, seconds)):
            # the step compiles in its first epoch (on the third batch): the first mode's under the settings given
            with inductor_settings(settings if arm == 0 and epoch == 1 else {}):
                trainer.run(data, epoch, args.batch)
            s.append(trainer.history[-1]["seconds"])
    print(f"{args.model}, batch {args.batch}, {args.train_size} images per epoch, {args.epochs} epochs, "
          f"{torch.__version__}, 1 thread" + "".join(f"; {modes[0]} compiled with {k}={v!r}" for k, v in settings.items()))
    for mode, trainer, s in zip(modes, trainers, seconds):
        captured = trainer.captured.seconds if trainer.captured is not None else 0.0
        print(f"--compile {mode:8s}: {trainer.capture_note}; {captured:.2f} s to capture/compile, "
              f"first epoch {s[0]:.2f} s, then median {statistics.median(s[1:]):.3f} s per epoch")
    print(paired_summary(seconds[0][1:], seconds[1][1:], f"{modes[0]} / {modes[1]}"))


if __name__ == "__main__":
    main()
