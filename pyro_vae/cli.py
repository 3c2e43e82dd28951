"""The `pyro-vae` command: train, evaluate, sample, download. Each calls the Python API."""

import argparse
import sys

from .data import DATASETS, download
from .errors import UserError
from .evaluate import MAX_BATCH, evaluate_run
from .figures import sample_run
from .models import MODELS
from .runs import Config
from .train import ELBOS, train

PER_DATASET = "per data set: digits {}, 28x28 sets {}"


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parser():
    p = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders and conditional VAEs in Pyro.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a model into a run directory", formatter_class=fmt)
    c = Config()
    t.add_argument("--model", default=c.model, choices=list(MODELS), help="model (see SPEC: vae, cvae1..cvae4)")
    t.add_argument("--dataset", default=c.dataset, choices=DATASETS, help="data set")
    t.add_argument("--data-dir", default=None, help="folder holding the IDX .gz files (searched first)")
    t.add_argument("--epochs", type=positive_int, default=None, help=PER_DATASET.format(100, 20))
    t.add_argument("--batch-size", type=positive_int, default=None, help=PER_DATASET.format(64, 256))
    t.add_argument("--lr", type=positive_float, default=c.lr, help="Adam learning rate")
    t.add_argument("--z-dim", type=positive_int, default=None, help=PER_DATASET.format(8, 50))
    t.add_argument("--hidden", type=positive_int, default=None, help=PER_DATASET.format(128, 400))
    t.add_argument("--elbo", default=c.elbo, choices=list(ELBOS),
                   help="objective: Trace_ELBO or TraceMeanField_ELBO (analytic KL)")
    t.add_argument("--particles", type=positive_int, default=c.particles, help="ELBO particles per example")
    t.add_argument("--device", default=c.device, help="auto (CUDA when available), cpu or cuda")
    t.add_argument("--seed", type=int, default=c.seed, help="random seed (a CPU run repeats exactly)")
    t.add_argument("--train-size", type=positive_int, default=None, help="keep only the first N training examples")
    t.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATASET-TIME)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    e = sub.add_parser("evaluate", help="test ELBO, importance-sampled log-likelihood -> RUN_DIR/eval.json",
                       formatter_class=fmt)
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--iw-samples", type=positive_int, default=5000, help="K, importance samples per example")
    e.add_argument("--max-batch", type=positive_int, default=MAX_BATCH,
                   help="(sample, example) pairs through the networks at once: bounds memory")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="a PNG grid of draws from a trained model", formatter_class=fmt)
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--n", type=positive_int, default=64, help="number of draws")
    s.add_argument("--label", type=int, default=None, help="only this class (conditional models)")
    s.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/samples.png)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")

    d = sub.add_parser("download", help="download an IDX data set, verifying checksums", formatter_class=fmt)
    d.add_argument("dataset", choices=[n for n in DATASETS if n != "digits"])
    d.add_argument("--dest", default=None, help="folder (default: the per-user cache, ~/.cache/pyro-vae/NAME)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            config = Config(model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, z_dim=args.z_dim, hidden=args.hidden,
                            elbo=args.elbo, particles=args.particles, device=args.device, seed=args.seed,
                            train_size=args.train_size)
            run_dir = train(config, out=args.out, progress=not args.quiet)
            print(f"run directory: {run_dir}")
        elif args.command == "evaluate":
            result = evaluate_run(args.run_dir, args.iw_samples, args.device, args.max_batch, progress=not args.quiet)
            print(f"test ELBO {result['test_elbo']:.3f}, log-likelihood (K={result['iw_samples']}) "
                  f"{result['test_log_likelihood']:.3f} nats per example, {result['active_units']} active units; "
                  f"written to {args.run_dir}/eval.json")
        elif args.command == "sample":
            path = sample_run(args.run_dir, args.out, args.n, args.label, args.seed, args.device)
            print(f"samples: {path}")
        elif args.command == "download":
            print(f"{args.dataset}: {download(args.dataset, args.dest)}")
    except UserError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
