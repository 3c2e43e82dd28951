"""The real MNIST test split (10,000 images, official checksums) as one .npz data file, for checks
that want MNIST where only its test split is on the machine (the SS-VAE sanity check of m2.md).

    python experiments/mnist_test_npz.py [--data-dir ../../shared/data/mnist-test] [--out runs/mnist-test.npz]

The file holds `x` (uint8 images) and `labels` and no test split, so `--dataset runs/mnist-test.npz`
carves its fixed 20% test split (seed 0) and trains on the other 8,000 images.
"""

import argparse
from pathlib import Path

import numpy as np

from pyro_vae.data import read_idx

HERE = Path(__file__).resolve().parent


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "mnist-test"))
    p.add_argument("--out", default="runs/mnist-test.npz")
    args = p.parse_args()
    folder = Path(args.data_dir)
    x = read_idx(folder / "t10k-images-idx3-ubyte.gz", 3)
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz", 1).astype(np.int64)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x=x, labels=labels, classes=np.array([str(k) for k in range(10)]))
    print(f"{args.out}: {len(x)} images {x.shape[1:]}, labels {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
