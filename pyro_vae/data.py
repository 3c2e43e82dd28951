"""Data: the bundled `digits` set and the IDX sets (MNIST, Fashion-MNIST, KMNIST) (layer 1:
imports only errors).

A split is one float tensor of pixels in [0, 1], shape (N, H*W), plus a long tensor of labels,
both on the training device. Batches are slices of a per-epoch permutation (`batches`); there is
no per-example Dataset/DataLoader path.

Bernoulli likelihoods see binary pixels: training batches are binarized afresh each time
(dynamic binarization, `binarize`), validation and test splits once, with a fixed seed, so every
run is scored on the same bits.
"""

import gzip
import hashlib
import math
import os
import struct
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import BadValue, UserError, positive_int
from .files import TEMP_PREFIX, write_error

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Where each IDX set can be downloaded from, and the MD5 of each published .gz file.
SOURCES = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        "md5": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    },
    "kmnist": {
        "mirrors": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
        "md5": {"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
                "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
                "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
                "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"},
    },
}

CLASS_NAMES = {
    "digits": [str(k) for k in range(10)],
    "mnist": [str(k) for k in range(10)],
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}
DATASETS = ["digits", "mnist", "fashion-mnist", "kmnist"]
ENV_VAR = "PYRO_VAE_DATA"
EVAL_BINARIZATION_SEED = 0  # the same bits for every run's validation and test splits


@dataclass
class Dataset:
    """Three splits of one data set, each an (images, labels) pair of tensors on `device`."""

    name: str
    shape: tuple  # (H, W) of one image
    classes: list
    splits: dict = field(default_factory=dict)  # "train" | "val" | "test" -> (x, y)
    binarized: bool = False  # val/test hold fixed binary pixels; train is binarized per batch
    labelled: object = None  # semi-supervised: indices of the training examples whose label is kept

    @property
    def x_dim(self):
        return self.shape[0] * self.shape[1]

    @property
    def n_classes(self):
        return len(self.classes)


def data_dirs(name, data_dir=None):
    """The places looked in for an IDX set, in order."""
    dirs = []
    if data_dir:
        dirs += [Path(data_dir), Path(data_dir) / name]
    if os.environ.get(ENV_VAR):
        dirs += [Path(os.environ[ENV_VAR]), Path(os.environ[ENV_VAR]) / name]
    dirs.append(cache_dir() / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro-vae"


def find_idx_files(name, split, data_dir=None):
    """Paths of (images, labels) for one split, or a UserError that says where it looked."""
    images, labels = IDX_FILES[split]
    for d in data_dirs(name, data_dir):
        if (d / images).is_file() and (d / labels).is_file():
            return d / images, d / labels
    looked = ", ".join(str(d) for d in data_dirs(name, data_dir))
    raise UserError(
        f"{name}: {split} split not found ({images}, {labels}); looked in {looked}. "
        f"Get it with `pyro-vae download {name}`"
        + (" or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else "")
        + ", or point --data-dir at a folder holding the files.")


# The largest IDX payload read (EMNIST, the largest set in this format, is about 0.7 GB).
MAX_IDX_BYTES = 4 << 30
EXTRA_COUNTED = 16 << 20  # bytes past the header's size that are counted (not kept) for the message


def read_idx(path, expected_dims, max_bytes=MAX_IDX_BYTES):
    """Read one gzipped IDX file into a uint8 numpy array, checking every header field.

    The file is inflated as a stream, up to the size its header gives, so memory never holds more
    than the data set (nor more than the file holds, whatever its header claims): a file that
    inflates to more (a "gzip bomb") is refused after reading at most EXTRA_COUNTED bytes past it."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise UserError(f"{path}: too short for an IDX header ({len(head)} bytes)")
            zero, dtype, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype != 0x08 or ndim != expected_dims:
                raise UserError(f"{path}: bad IDX magic number 0x{head.hex()} "
                                f"(expected 0x000008{expected_dims:02x}, unsigned bytes, {expected_dims}-D)")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise UserError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            size = math.prod(dims)  # exact: numpy's product of four 32-bit sizes could overflow
            said = f"header says {'x'.join(map(str, dims))} = {size} bytes of data"
            if size > max_bytes:
                raise UserError(f"{path}: {said}, more than the {max_bytes >> 20} MB this reader takes")
            raw = bytearray()  # grown as the data arrives: a header that claims more costs nothing
            while len(raw) < size and (chunk := f.read(min(1 << 24, size - len(raw)))):
                raw += chunk
            if len(raw) < size:
                raise UserError(f"{path}: {said}, file holds {len(raw)}")
            data = np.frombuffer(raw, dtype=np.uint8)
            extra = 0
            while extra <= EXTRA_COUNTED and (chunk := f.read(1 << 20)):
                extra += len(chunk)
            if extra:
                holds = f"{size + extra}" if extra <= EXTRA_COUNTED else f"more than {size + EXTRA_COUNTED}"
                raise UserError(f"{path}: {said}, file holds {holds}")
    except (OSError, EOFError, zlib.error) as e:  # missing, truncated, bad CRC, corrupt deflate stream
        raise UserError(f"{path}: not a readable gzip file ({e or type(e).__name__})") from None
    return data.reshape(dims)


def read_idx_split(name, split, data_dir=None):
    """(images uint8 (N, H, W), labels int64 (N,)) of one split of an IDX data set."""
    image_path, label_path = find_idx_files(name, split, data_dir)
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{image_path.parent}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UserError(f"{image_path}: holds no images")
    if labels.max(initial=0) >= len(CLASS_NAMES[name]):
        raise UserError(f"{label_path}: label {labels.max()} out of range 0..{len(CLASS_NAMES[name]) - 1}")
    return images, labels


# Every published file of these sets is under 30 MB; a response past this is not one of them.
MAX_DOWNLOAD_BYTES = 64 << 20
DOWNLOAD_SECONDS = 600  # per file, all of it: a server that trickles forever is given up on


def download(name, dest=None, mirrors=None, progress=True, max_bytes=MAX_DOWNLOAD_BYTES, seconds=DOWNLOAD_SECONDS):
    """Fetch the four IDX files of `name` into `dest` (default: the per-user cache), verifying MD5.

    A file already there with the right checksum is kept. Each file is written to a temporary
    name and renamed once its checksum matches, so a broken download never looks complete. A
    response larger than `max_bytes`, or slower in all than `seconds`, is abandoned."""
    if name not in SOURCES:
        raise UserError(f"unknown downloadable data set {name!r}; choose from {', '.join(SOURCES)}")
    dest = Path(dest) if dest else cache_dir() / name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(dest, e) from None
    for filename, md5 in SOURCES[name]["md5"].items():
        target = dest / filename
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in mirrors or SOURCES[name]["mirrors"]:
            url = mirror + filename
            try:
                tmp = _fetch(url, dest, progress, max_bytes, time.monotonic() + seconds)
            except OSError as e:
                errors.append(f"{url}: {e}")
                continue
            if _md5(tmp) != md5:
                tmp.unlink()
                errors.append(f"{url}: checksum mismatch (expected MD5 {md5})")
                continue
            os.replace(tmp, target)
            break
        else:
            raise UserError(f"could not download {filename}: " + "; ".join(errors))
    return dest


def _fetch(url, dest, progress, max_bytes, deadline):
    from tqdm import tqdm

    fd, tmp = tempfile.mkstemp(dir=dest, prefix=TEMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > max_bytes:
                raise OSError(f"the server announces {total} bytes, more than the {max_bytes} a data file may have")
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=not progress) as bar:
                while chunk := response.read1(1 << 16):  # what has arrived: a trickle still meets the deadline
                    written += len(chunk)
                    if written > max_bytes:
                        raise OSError(f"stopped after {max_bytes} bytes, more than a data file may have")
                    if time.monotonic() > deadline:
                        raise TimeoutError("stopped: the download took longer than its time limit")
                    out.write(chunk)
                    bar.update(len(chunk))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()  # bundled in scikit-learn's wheel: never downloads
    images = (d.images / 16.0).astype(np.float32)
    # digits has no official test split: hold out a fixed, seeded 20%.
    order = np.random.default_rng(1797).permutation(len(images))
    n_test = len(images) // 5
    test, train = order[:n_test], order[n_test:]
    return (images[train], d.target[train]), (images[test], d.target[test])


def load_dataset(name="digits", data_dir=None, device="cpu", binarize=True, val_size=0.1,
                 train_size=None, seed=0, labels=None):
    """Load a data set as a `Dataset` of tensors on `device`.

    The validation split is a seeded `val_size` share of the training split (model selection);
    the test split is the official one (a fixed 20% for `digits`). `train_size` keeps only the
    first N training examples (after the validation split is carved off), for quick runs.

    `labels=N` (semi-supervised training) keeps the labels of N training examples, balanced over
    the classes and drawn with `seed`, and hides the rest, and every validation label, as -1;
    `data.labelled` holds the kept examples' indices in the training split. None or "all": every
    label is kept."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = _digits()
    else:
        x_train, y_train = read_idx_split(name, "train", data_dir)
        x_test, y_test = read_idx_split(name, "test", data_dir)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise UserError(f"{name}: training images are {'x'.join(map(str, x_train.shape[1:]))}, "
                            f"test images {'x'.join(map(str, x_test.shape[1:]))}")
        x_train, x_test = x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0
    if not 0 < val_size < 1:
        raise UserError(f"val_size must be in (0, 1), got {val_size}")
    shape = tuple(x_train.shape[1:])
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_val = max(1, int(round(val_size * len(x_train))))
    val, train = order[:n_val], order[n_val:]
    if train_size is not None:
        train = train[:positive_int("train_size", train_size)]
    if len(train) == 0:
        raise BadValue(f"{name}: {len(x_train)} training example(s) leave none to train on after the validation "
                       f"split (val_size {val_size})")

    def split(x, y):
        x = torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32, device=device)
        return x, torch.as_tensor(y, dtype=torch.long, device=device)

    data = Dataset(name, shape, CLASS_NAMES[name], binarized=binarize)
    data.splits["train"] = split(x_train[train], y_train[train])
    data.splits["val"] = split(x_train[val], y_train[val])
    data.splits["test"] = split(x_test, y_test)
    if labels is not None and labels != "all":
        data.labelled = keep_labels(y_train[train], labels, len(CLASS_NAMES[name]), seed)
        hidden = torch.full((len(train),), -1, dtype=torch.long)
        hidden[data.labelled] = torch.as_tensor(y_train[train][data.labelled], dtype=torch.long)
        data.splits["train"] = (data.splits["train"][0], hidden.to(device))
        data.splits["val"] = (data.splits["val"][0], torch.full_like(data.splits["val"][1], -1))
    if binarize:
        g = torch.Generator(device=device).manual_seed(EVAL_BINARIZATION_SEED)
        for s in ("val", "test"):
            x, y = data.splits[s]
            data.splits[s] = (torch.bernoulli(x, generator=g), y)
    return data


def keep_labels(y, n, n_classes, seed):
    """Indices of `n` examples of labels `y`, as even over the classes as they allow, drawn with `seed`."""
    positive_int("labels", n)
    if n > len(y):
        raise BadValue(f"labels {n}: the training split has only {len(y)} examples")
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == k)) for k in range(n_classes)]
    quota = [0] * n_classes
    for _ in range(n):  # one more for the class with the fewest so far that still has examples
        quota[min((k for k in range(n_classes) if quota[k] < len(by_class[k])), key=lambda k: quota[k])] += 1
    return np.sort(np.concatenate([c[:q] for c, q in zip(by_class, quota)])).astype(np.int64)


def binarize(x):
    """Dynamic binarization: a fresh Bernoulli draw of every pixel, each time it is called."""
    return torch.bernoulli(x)


def batches(n, batch_size, shuffle=True, device="cpu"):
    """Index tensors covering range(n) in batches; a fresh permutation per call when shuffling."""
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    return order.split(batch_size)


__all__ = ["Dataset", "load_dataset", "download", "read_idx", "binarize", "batches", "DATASETS"]
