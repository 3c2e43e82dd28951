"""Data: the bundled `digits` set and the IDX sets (MNIST, Fashion-MNIST, KMNIST) (layer 1:
imports only errors).

A split is one float tensor of pixels in [0, 1], shape (N, H*W), plus a long tensor of labels,
both on the training device. Batches are slices of a per-epoch permutation (`batches`); there is
no per-example Dataset/DataLoader path.

Bernoulli likelihoods see binary pixels: training batches are binarized afresh each time
(dynamic binarization, `binarize`), validation and test splits once, with a fixed seed, so every
run is scored on the same bits.
"""

import collections
import gzip
import hashlib
import math
import os
import struct
import tempfile
import time
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import BadType, BadValue, UserError, counted, first_line, machine_memory, positive_int, share_or_count
from .files import TEMP_PREFIX, cache_dir, file_mode, write_error

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
    """Three splits of one data set, each an (x, c) pair of tensors on `device`.

    x is (N, prod(shape)) floats: pixels in [0, 1] (`kind` "pixels") or standardised real values
    (`kind` "real"). c is what a conditional model conditions on (`condition`): class labels
    (long, -1 where hidden), or an (N, D) float tensor of attributes (0/1) or covariates; for a
    data set with neither it is a long tensor of zeros and `condition` is None."""

    name: str
    shape: tuple  # one example: (H, W) or (C, H, W) for images, (D,) for vectors
    classes: list | None  # the class names, where there are class labels
    splits: dict = field(default_factory=dict)  # "train" | "val" | "test" -> (x, c)
    binarized: bool = False  # val/test hold fixed binary pixels; train is binarized per batch
    labelled: object = None  # semi-supervised: indices of the training examples whose label is kept
    condition: str | None = "label"  # "label", "attributes", "covariates" or None
    kind: str = "pixels"  # "pixels" (in [0, 1]) or "real" (standardised with the training split's statistics)
    y_names: list | None = None  # the names of the attributes or covariates
    facts: dict = field(default_factory=dict)  # how it was read: source, checksum, test split, scaling
    source: dict | None = field(default=None, repr=False)  # from_arrays: the arrays it was made from

    @property
    def x_dim(self):
        return math.prod(self.shape)

    @property
    def n_classes(self):
        return len(self.classes) if self.classes else 0

    @property
    def y_dim(self):
        """The size of the y a conditional model reads: the classes (one-hot), or the attributes or covariates."""
        if self.condition == "label":
            return self.n_classes
        if self.condition is None:
            return 0
        return self.splits["train"][1].shape[1]

    @property
    def is_image(self):
        return len(self.shape) >= 2

    @classmethod
    def from_arrays(cls, x, labels=None, y=None, test=None, name="arrays", classes=None, y_names=None,
                    condition=None, device="cpu", binarize=True, val_size=0.1, train_size=None, seed=0,
                    semi_labels=None):
        """A Dataset from NumPy arrays or tensors: x of shape (N, H, W), (N, C, H, W) or (N, D);
        optional class `labels` (N,) and `y` (N,) or (N, D) (attributes or covariates); `test` the
        test split as a dict {"x", "labels", "y"} or a tuple (x, labels, y) (shorter tuples
        allowed), or None to carve a seeded fifth off. Checked as a data file is (see `arrays`)."""
        if isinstance(test, (tuple, list)):
            test = dict(zip(("x", "labels", "y"), test))
        test = test or {}
        if not isinstance(test, dict):
            raise BadType(f"test is a dict {{'x', 'labels', 'y'}} or a tuple (x, labels, y), not {type(test).__name__}")
        source = {"x": x, "labels": labels, "y": y, "x_test": test.get("x"), "labels_test": test.get("labels"),
                  "y_test": test.get("y"), "classes": classes, "y_names": y_names}
        source = {k: v for k, v in source.items() if v is not None}
        data = load_source(name, source, device=device, binarize=binarize, val_size=val_size, train_size=train_size,
                           seed=seed, labels=semi_labels, condition=condition)
        data.source = source  # what `train` writes into a run directory as data.npz
        return data

    def save_arrays(self, path):
        """Write the arrays this Dataset was made from (`from_arrays`) as a .npz data file."""
        if self.source is None:
            raise UserError(f"{self.name} was not made from arrays: give its name or file instead")
        arrays_ = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.source.items()}
        np.savez(path, **arrays_)


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
                tmp = _fetch(url, target, progress, max_bytes, time.monotonic() + seconds)
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


def _fetch(url, target, progress, max_bytes, deadline):
    """`url` into a temporary file beside `target` (to be renamed to it once checked); its path."""
    from tqdm import tqdm

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=".part")
    try:
        os.fchmod(fd, file_mode(target))  # a data file others may read, as curl's would be
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
    return {"x": images[train], "labels": d.target[train], "x_test": images[test], "labels_test": d.target[test]}


CONDITIONS = ("label", "attributes", "covariates")
ARRAY_SUFFIXES = (".npz", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_SHARE, TEST_SEED = 0.2, 0  # a file without a test split: this share is carved off, the same for every run
MAX_FILE_BYTES = 16 << 30  # the largest data file read (a check against a path to the wrong thing)


def is_builtin(name):
    return name in DATASETS


def load_dataset(name="digits", data_dir=None, device="cpu", binarize=True, val_size=0.1,
                 train_size=None, seed=0, labels=None, condition=None):
    """Load a data set as a `Dataset` of tensors on `device`.

    `name` is a built-in set (DATASETS), the path of a `.npz` (arrays `x`, and optionally
    `labels`, `y`, `x_test`, `labels_test`, `y_test`) or `.npy` file (`x` alone), a folder of images
    in one subfolder per class (or `train/` and `test/` folders of those), or
    "torchvision:NAME" (a torchvision data set already in `data_dir`; torchvision is optional).

    The validation split is a seeded `val_size` share of the training split, or that many
    examples when `val_size` >= 1 (model selection);
    the test split is the official one (a fixed 20% for `digits`, and for a file without one,
    carved off with seed TEST_SEED). `train_size` keeps only the first N training examples
    (after the validation split is carved off), for quick runs. `condition` picks what c holds
    (see `Dataset`); None: the class labels where there are any, else y.

    `labels=N` (semi-supervised training) keeps the labels of N training examples, balanced over
    the classes and drawn with `seed`, and hides the rest, and every validation label, as -1;
    `data.labelled` holds the kept examples' indices in the training split. None or "all": every
    label is kept."""
    if isinstance(name, os.PathLike):  # a pathlib.Path to a file or folder of your own
        name = os.fspath(name)
    if not isinstance(name, str):
        raise BadType(f"name must be a data set's name ({', '.join(DATASETS)}) or the path of a file or folder, "
                      f"got {type(name).__name__}")
    if is_builtin(name):
        if name == "digits":
            source = _digits()
        else:
            x_train, y_train = read_idx_split(name, "train", data_dir)
            x_test, y_test = read_idx_split(name, "test", data_dir)
            source = {"x": x_train, "labels": y_train, "x_test": x_test, "labels_test": y_test}
        checked = arrays(name, source, CLASS_NAMES[name])
    elif name.startswith("torchvision:"):
        source, classes = read_torchvision(name.partition(":")[2], data_dir)
        checked = arrays(name, source, classes)
    else:
        source, classes, facts = read_files(name)
        checked = arrays(name, source, classes)
        checked["facts"].update(facts)
    return assemble(name, checked, device=device, binarize=binarize, val_size=val_size, train_size=train_size,
                    seed=seed, labels=labels, condition=condition)


def load_source(name, source, classes=None, **settings):
    """A Dataset from a dict of arrays as a data file holds them (x, labels, y, x_test, ...)."""
    source = dict(source)
    classes = source.pop("classes", classes)
    y_names = source.pop("y_names", None)
    return assemble(name, arrays(name, source, classes, y_names), **settings)


def read_files(path):
    """(arrays, class names or None, facts) of a data file or image folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"unknown data set {str(path)!r}: not one of {', '.join(DATASETS)}, and no such file "
                        f"or folder (give a .npz or .npy file, or a folder of images in class subfolders)")
    facts = {"source": str(p.resolve()), "sha256": content_hash(p)}
    if p.is_dir():
        source, classes = read_image_folder(p)
        return source, classes, facts
    if p.suffix.lower() not in ARRAY_SUFFIXES:
        raise UserError(f"{path}: a data file is a .npz or .npy file, or a folder of images, not {p.suffix or 'a file without a suffix'}")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {p.stat().st_size >> 20} MB, more than the {MAX_FILE_BYTES >> 30} GB a data file may have")
    try:
        if p.suffix.lower() == ".npy":
            with open(p, "rb") as fp:
                check_declared_size(path, "x", fp)
            return {"x": np.load(p, allow_pickle=False)}, None, facts
        with np.load(p, allow_pickle=False) as f:
            unknown = sorted(set(f.files) - set(NPZ_KEYS))
            if unknown:
                raise UserError(f"{path}: unknown array(s) {', '.join(unknown)}; a data file holds {', '.join(NPZ_KEYS)}")
            if "x" not in f.files:
                raise UserError(f"{path}: no array named x (it holds {', '.join(f.files) or 'nothing'})")
            members = f.zip.namelist()
            for key in f.files:
                with f.zip.open(key + ".npy" if key + ".npy" in members else key) as fp:
                    check_declared_size(path, key, fp)
            source = {k: f[k] for k in f.files if k != "classes"}
            for key in ("classes", "y_names"):
                if key in f.files and f[key].ndim != 1:
                    raise UserError(f"{path}: {key} must be a list of names, shape (K,), got shape {f[key].shape}")
            classes = [str(c) for c in f["classes"]] if "classes" in f.files else None
            if "y_names" in source:
                source["y_names"] = [str(v) for v in source["y_names"]]
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, KeyError, zipfile.BadZipFile) as e:  # damaged, truncated, pickled
        raise UserError(f"{path}: not a readable NumPy file ({type(e).__name__}: {str(e)[:120]})") from None
    return source, classes, facts


def check_declared_size(path, name, fp):
    """Refuse an array whose .npy header (read from `fp`) declares more bytes than this machine's
    memory, before NumPy allocates them: a header of a few bytes can ask for terabytes. A header
    that cannot be read is left to np.load, which names the damage."""
    try:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
    except (ValueError, OSError, EOFError, TypeError):
        return
    need, have = math.prod(shape) * dtype.itemsize, machine_memory()
    if have is not None and need > have:
        raise UserError(f"{path}: {name} declares shape {shape} of {dtype}, {need / 2**30:.0f} GiB, more than this "
                        f"machine's {have >> 30} GiB of memory")


NPZ_KEYS = ("x", "labels", "y", "x_test", "labels_test", "y_test", "classes", "y_names")


def content_hash(path):
    """sha256 of a file, or of a folder's image files (their relative paths and bytes, in order)."""
    h = hashlib.sha256()
    files = sorted(q for q in Path(path).rglob("*") if q.is_file()) if Path(path).is_dir() else [Path(path)]
    for q in files:
        if Path(path).is_dir():
            h.update(str(q.relative_to(path)).encode() + b"\0")
        with open(q, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


DEEP_GREY = ("I;16", "I;16L", "I;16B", "I")  # 16-bit grey PNGs (Pillow's convert("L") clips them at 255)


def pixels(im, colour):
    """An image as float32 values in [0, 1] by its own bit depth: 16-bit grey divided by 65535, the
    rest by 255; (H, W), or (H, W, 3) for a colour set."""
    if im.mode in DEEP_GREY:
        values = np.asarray(im, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise UserError(f"a {im.mode} image with grey values outside 0..65535")
        x = (values / 65535).astype(np.float32)
        return np.repeat(x[..., None], 3, axis=-1) if colour else x
    return np.asarray(im.convert("RGB" if colour else "L"), dtype=np.float32) / 255


def read_image_folder(folder):
    """(arrays, class names) of a folder of images in one subfolder per class, or of its `train/`
    and `test/` folders of those. Grey images stay grey (N, H, W); any colour image makes the set
    RGB (N, 3, H, W). Every image must have the same size. 8-bit images come as bytes (0..255);
    where any image is 16-bit grey, all come as values in [0, 1], each by its own depth."""
    from PIL import Image, UnidentifiedImageError  # matplotlib brings Pillow

    def classes_of(root):
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))  # .git, .ipynb_checkpoints
        if not dirs:
            raise UserError(f"{root}: no class subfolders (a folder of images holds one subfolder per class)")
        return dirs

    where = {}  # id(image) -> its file, for a message naming one

    def read(root, names):
        images, labels = [], []
        for k, name in enumerate(names):
            files = sorted(q for q in (root / name).iterdir() if not q.name.startswith("."))
            for q in files:
                if q.is_dir() or q.suffix.lower() not in IMAGE_SUFFIXES:
                    raise UserError(f"{q}: not a PNG or JPEG image (a class folder holds images only)")
                try:
                    with Image.open(q) as im:
                        images.append(im.copy())
                        where[id(images[-1])] = q
                except (UnidentifiedImageError, OSError) as e:
                    raise UserError(f"{q}: not a readable image ({type(e).__name__})") from None
                except Image.DecompressionBombError as e:  # more pixels than Pillow will decode
                    raise UserError(f"{q}: {first_line(e)}") from None
                labels.append(k)
        if not images:
            raise UserError(f"{root}: the class folders hold no images")
        return images, np.asarray(labels, dtype=np.int64)

    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    names = [d.name for d in classes_of(folder / "train" if split else folder)]
    parts = {"": read(folder / "train" if split else folder, names)}
    if split:
        test_names = [d.name for d in classes_of(folder / "test")]
        if set(test_names) - set(names):
            raise UserError(f"{folder}/test: class folder(s) {', '.join(sorted(set(test_names) - set(names)))} "
                            f"not in {folder}/train")
        parts["_test"] = read(folder / "test", names if test_names == names else test_names)
        if test_names != names:  # a class absent from the test split: map by name
            index = {n: k for k, n in enumerate(names)}
            parts["_test"] = (parts["_test"][0], np.asarray([index[test_names[k]] for k in parts["_test"][1]]))
    colour = any(im.mode not in ("L", "1") + DEEP_GREY for images, _ in parts.values() for im in images)
    deep = any(im.mode in DEEP_GREY for images, _ in parts.values() for im in images)
    every = [im for images, _ in parts.values() for im in images]
    sizes = collections.Counter(im.size for im in every)
    if len(sizes) > 1:
        (w, h), common = sizes.most_common(1)[0]
        odd = next(im for im in every if im.size != (w, h))
        raise UserError(f"{folder}: images of {len(sizes)} sizes; every image must have the same size: {common} of "
                        f"{len(every)} are {w}x{h}, {where[id(odd)]} is {odd.size[0]}x{odd.size[1]}"
                        + (f" (one of {len(every) - common})" if len(every) - common > 1 else ""))
    source = {}
    for suffix, (images, labels) in parts.items():
        x = np.stack([pixels(im, colour) if deep else np.asarray(im.convert("RGB" if colour else "L"), dtype=np.uint8)
                      for im in images])
        source["x" + suffix] = x.transpose(0, 3, 1, 2) if colour else x
        source["labels" + suffix] = labels
    return source, names


def read_torchvision(name, data_dir):
    """(arrays, class names) of a torchvision image data set already on disk (never downloads)."""
    try:
        import torchvision.datasets  # optional: `pip install pyro-vae[torchvision]`
    except ImportError:
        raise UserError(f"torchvision:{name} needs torchvision, which is not installed "
                        f"(pip install 'pyro-vae[torchvision]')") from None
    if not data_dir:
        raise UserError(f"torchvision:{name}: give --data-dir, the folder torchvision keeps it in")
    make = getattr(torchvision.datasets, name, None)
    if make is None:
        raise UserError(f"torchvision has no data set {name!r}")
    source = {}
    try:
        for suffix, train in (("", True), ("_test", False)):
            d = make(root=data_dir, train=train, download=False)
            x = np.asarray(d.data)
            if x.ndim == 4 and x.shape[-1] in (1, 3):  # stored (N, H, W, C), as CIFAR is
                x = x.transpose(0, 3, 1, 2)
            source["x" + suffix] = x
            source["labels" + suffix] = np.asarray(d.targets, dtype=np.int64)
    except (RuntimeError, OSError, TypeError) as e:  # not there, or a set without train/test splits
        raise UserError(f"torchvision:{name} in {data_dir}: {first_line(e)[:160]}") from None
    return source, [str(c) for c in getattr(d, "classes", [])] or None


def arrays(name, source, classes=None, y_names=None):
    """The arrays of a data set checked and made uniform, or a one-line UserError naming what is
    wrong: x float32 with examples first, pixels scaled to [0, 1] (0-255 values divided by 255) or
    real values standardised with the training split's mean and deviation per value; labels int64
    in 0..K-1; y float32 (N, D). Returns a dict with the arrays, `classes`, `y_names`, `facts`."""
    out = {"facts": {}}
    y_names = y_names if y_names is not None else source.get("y_names")
    for suffix in ("", "_test"):
        x = source.get("x" + suffix)
        if x is None:
            if suffix == "":
                raise UserError(f"{name}: no x")
            if source.get("labels_test") is not None or source.get("y_test") is not None:
                raise UserError(f"{name}: labels_test or y_test without x_test")
            continue
        x = as_array(x, f"{name}: x{suffix}")
        if x.dtype == np.bool_:  # binary images or features: 0 and 1
            x = x.astype(np.uint8)
        if x.ndim not in (2, 3, 4) or len(x) == 0:
            raise UserError(f"{name}: x{suffix} has shape {x.shape}; give (N, D) vectors, (N, H, W) or (N, C, H, W) "
                            f"images, with N > 0")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise UserError(f"{name}: x{suffix} holds {x.dtype} values, not real numbers")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(1) if np.issubdtype(x.dtype, np.floating) else np.zeros(len(x), bool)
        if bad.any():
            raise UserError(f"{name}: x{suffix} holds NaN or infinite values (example {int(np.flatnonzero(bad)[0])}; "
                            f"{counted(int(bad.sum()), 'example')} in all)")
        out["x" + suffix] = x
        n = len(x)
        for key in ("labels", "y"):
            v = source.get(key + suffix)
            if v is None:
                continue
            v = as_array(v, f"{name}: {key}{suffix}")
            if len(v) != n:
                raise UserError(f"{name}: x{suffix} has {n} examples but {key}{suffix} has {len(v)}")
            if key == "labels":
                out[key + suffix] = check_labels(name, v, key + suffix, classes)
            else:
                if v.ndim == 1:
                    v = v[:, None]
                if v.dtype == np.bool_:  # attributes as True/False
                    v = v.astype(np.float32)
                if v.ndim != 2 or not np.issubdtype(v.dtype, np.number) or not np.isfinite(v).all():
                    raise UserError(f"{name}: {key}{suffix} must be finite numbers of shape (N,) or (N, D), got "
                                    f"{v.dtype} {v.shape}" + (" with NaN or infinite values" if v.ndim == 2 else ""))
                out[key + suffix] = v.astype(np.float32)
    for key in ("labels", "y"):
        if (key in out) != (key + "_test" in out) and "x_test" in out:
            raise UserError(f"{name}: {key} given for one split only; give {key} and {key}_test, or neither")
    if "y" in out and "y_test" in out and out["y"].shape[1] != out["y_test"].shape[1]:
        raise UserError(f"{name}: y has {out['y'].shape[1]} values per example, y_test {out['y_test'].shape[1]}")
    if "x_test" in out and out["x_test"].shape[1:] != out["x"].shape[1:]:
        raise UserError(f"{name}: training examples have shape {out['x'].shape[1:]}, test examples "
                        f"{out['x_test'].shape[1:]}")
    n_classes = max([int(out[k].max()) + 1 for k in ("labels", "labels_test") if k in out] or [0])
    if classes is not None and "labels" in out and n_classes > len(classes):
        raise UserError(f"{name}: label {n_classes - 1} out of range 0..{len(classes) - 1} ({len(classes)} classes named)")
    out["classes"] = (list(classes) if classes else [str(k) for k in range(n_classes)]) if "labels" in out else None
    out["y_names"] = [str(v) for v in y_names] if y_names is not None and "y" in out else \
        ([f"y{k}" for k in range(out["y"].shape[1])] if "y" in out else None)
    if out["y_names"] is not None and len(out["y_names"]) != out["y"].shape[1]:
        raise UserError(f"{name}: {len(out['y_names'])} y_names for {out['y'].shape[1]} values of y")
    scale(name, out)
    return out


def as_array(v, what):
    if isinstance(v, (str, os.PathLike)):  # Dataset.from_arrays("mine.npz")
        raise UserError(f"{what}: {str(v)[:80]!r} is a name, not an array; a data file is read by "
                        f"load_dataset(path) (or --dataset PATH)")
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        v = np.asarray(v)
    except (ValueError, TypeError) as e:
        raise UserError(f"{what}: not an array ({e})") from None
    if v.dtype == object:
        raise UserError(f"{what}: holds Python objects, not numbers")
    return v


MAX_CLASSES = 10_000


def check_labels(name, v, key, classes):
    if v.dtype == np.bool_:  # two classes as False/True: 0 and 1
        v = v.astype(np.int64)
    if v.ndim != 1:
        raise UserError(f"{name}: {key} must be one class number per example, shape (N,), got {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or (np.issubdtype(v.dtype, np.floating) and
                                                (not np.isfinite(v).all() or (v != np.round(v)).any())):
        raise UserError(f"{name}: {key} must be whole class numbers 0..K-1, got {v.dtype} values")
    if v.min() < 0:
        raise UserError(f"{name}: {key} has label {int(v.min())}; class numbers run from 0")
    if v.max() >= MAX_CLASSES:  # each example's y is a one-hot vector of that many classes
        raise UserError(f"{name}: {key} has label {int(v.max())}: at most {MAX_CLASSES} classes, numbered "
                        f"0..K-1 (renumber them with np.unique(labels, return_inverse=True))")
    if classes is not None and v.max() >= len(classes):
        raise UserError(f"{name}: {key} has label {int(v.max())} out of range 0..{len(classes) - 1}")
    return v.astype(np.int64)


def scale(name, out):
    """Decide what x is from the training split and scale both splits alike, recording how:
    pixels in [0, 1] as they are, whole numbers in 0..255 divided by 255, anything else real
    values, standardised with the training split's statistics."""
    x = out["x"]
    low, high = float(x.min()), float(x.max())
    whole = np.issubdtype(x.dtype, np.integer) or bool(np.all(x == np.round(x)))
    if 0 <= low and high <= 1:
        kind, facts = "pixels", {"kind": "pixels", "scaling": "none: values in [0, 1]"}
        shift, div = np.float32(0), np.float32(1)
    elif 0 <= low and high <= 255 and whole:
        kind, facts = "pixels", {"kind": "pixels", "scaling": "divided by 255: whole numbers in 0..255"}
        shift, div = np.float32(0), np.float32(255)
    else:
        flat = x.reshape(len(x), -1).astype(np.float64)
        shift = flat.mean(0).astype(np.float32).reshape(x.shape[1:])
        sd = flat.std(0)
        div = np.where(sd > 0, sd, 1.0).astype(np.float32).reshape(x.shape[1:])
        kind = "real"
        facts = {"kind": "real", "scaling": f"standardised per value with the training split's mean and standard "
                                           f"deviation (values from {low:.4g} to {high:.4g})"}
    for key in ("x", "x_test"):
        if key in out:
            v = (out[key].astype(np.float32) - shift) / div
            if kind == "pixels" and (v.min() < 0 or v.max() > 1):
                raise UserError(f"{name}: {key} has values from {float(out[key].min()):.4g} to {float(out[key].max()):.4g}, "
                                f"outside the training split's pixel range; scale both splits alike")
            out[key] = v
    out["kind"] = kind
    out["facts"].update(facts)


def assemble(name, a, device="cpu", binarize=True, val_size=0.1, train_size=None, seed=0, labels=None,
             condition=None):
    """The Dataset of checked arrays (`arrays`): the test split carved off where there is none,
    the condition chosen, the validation split carved off with `seed`, labels hidden for `labels=N`."""
    x, facts = a["x"], dict(a["facts"])
    if "x_test" not in a:
        order = np.random.default_rng(TEST_SEED).permutation(len(x))
        n_test = int(round(TEST_SHARE * len(x)))
        if n_test < 1 or n_test >= len(x):
            raise UserError(f"{name}: {counted(len(x), 'example')} and no test split: too few to carve one off "
                            f"(give x_test, or more examples)")
        test, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
        facts["test"] = f"carved off: {n_test} of {len(x)} examples ({TEST_SHARE:.0%}, seed {TEST_SEED})"
        facts["test_indices"] = test.tolist()
        a = {**a, **{k + "_test": a[k][test] for k in ("x", "labels", "y") if k in a},
             **{k: a[k][rest] for k in ("x", "labels", "y") if k in a}}
    else:
        facts.setdefault("test", "given")
    condition = choose_condition(name, a, condition)
    c_key = {"label": "labels", "attributes": "y", "covariates": "y", None: None}[condition]
    if labels is not None and labels != "all" and condition != "label":
        raise UserError(f"{name}: --labels hides class labels, and this data set conditions on {condition or 'nothing'}")
    x_train, x_test = a["x"], a["x_test"]
    c_train = a[c_key] if c_key else np.zeros(len(x_train), np.int64)
    c_test = a[c_key + "_test"] if c_key else np.zeros(len(x_test), np.int64)
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_val = validation_count(val_size, len(x_train))
    val, train = order[:n_val], order[n_val:]
    if train_size is not None:
        train = train[:positive_int("train_size", train_size)]
    if len(train) == 0:
        raise BadValue(f"{name}: {len(x_train)} training example(s) leave none to train on after the validation "
                       f"split (val_size {val_size})")

    def split(x, c):
        x = torch.as_tensor(np.ascontiguousarray(x.reshape(len(x), -1)), dtype=torch.float32, device=device)
        return x, torch.as_tensor(c, dtype=torch.long if c.dtype == np.int64 else torch.float32, device=device)

    binarized = binarize and a["kind"] == "pixels"
    data = Dataset(name, tuple(x_train.shape[1:]), a["classes"], binarized=binarized, condition=condition,
                   kind=a["kind"], y_names=a["y_names"] if c_key == "y" else None, facts=facts)
    data.splits["train"] = split(x_train[train], c_train[train])
    data.splits["val"] = split(x_train[val], c_train[val])
    data.splits["test"] = split(x_test, c_test)
    if labels is not None and labels != "all":
        data.labelled = keep_labels(c_train[train], labels, data.n_classes, seed)
        hidden = torch.full((len(train),), -1, dtype=torch.long)
        hidden[data.labelled] = torch.as_tensor(c_train[train][data.labelled], dtype=torch.long)
        data.splits["train"] = (data.splits["train"][0], hidden.to(device))
        data.splits["val"] = (data.splits["val"][0], torch.full_like(data.splits["val"][1], -1))
    if binarized:
        g = torch.Generator(device=device).manual_seed(EVAL_BINARIZATION_SEED)
        for s in ("val", "test"):
            x, c = data.splits[s]
            data.splits[s] = (torch.bernoulli(x, generator=g), c)
    return data


def validation_count(val_size, n):
    """Examples in the validation split: a share in (0, 1) of the n training examples, or a count
    (a whole number >= 1, e.g. the published setups' 10,000)."""
    share_or_count("val_size", val_size)
    if val_size >= 1:
        if val_size >= n:
            raise UserError(f"val_size {int(val_size)}: the training split has only {n} examples")
        return int(val_size)
    return max(1, int(round(val_size * n)))


def choose_condition(name, a, condition):
    """What c holds: the condition asked for, checked against the arrays; None: labels, else y, else nothing."""
    if condition is None:
        if "labels" in a:
            return "label"
        if "y" in a:
            return "attributes" if np.isin(a["y"], (0.0, 1.0)).all() else "covariates"
        return None
    if condition not in CONDITIONS:
        raise UserError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    if condition == "label" and "labels" not in a:
        raise UserError(f"{name}: --condition label, and it has no labels")
    if condition != "label" and "y" not in a:
        raise UserError(f"{name}: --condition {condition} reads the array y, and it has none")
    if condition == "attributes":
        for key in ("y", "y_test"):
            off = a[key][~np.isin(a[key], (0.0, 1.0))]
            if off.size:
                raise UserError(f"{name}: attributes are 0 or 1, and {key} holds {float(off[0]):.4g}; "
                                f"use --condition covariates for continuous values")
    return condition


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
    """Dynamic binarization: every pixel 1 with its grey value as the probability, drawn afresh each
    call, as a uniform draw below the value: torch.bernoulli's law at a third of its cost on the CPU.
    The comparison is written into the draw's own tensor (1.0 or 0.0): one pass and one allocation."""
    return torch.rand_like(x).lt_(x)


def binarize_bernoulli(x):
    """The same law drawn by torch.bernoulli, as runs made before `binarize`'s faster draw did (their
    config.json records no `binarization`): they resume with it, to the numbers they would have reached."""
    return torch.bernoulli(x)


BINARIZATIONS = {"uniform": binarize, "bernoulli": binarize_bernoulli}


def batches(n, batch_size, shuffle=True, device="cpu"):
    """Index tensors covering range(n) in batches; a fresh permutation per call when shuffling."""
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    return order.split(batch_size)


def batch_count(n, batch_size, apart=None):
    """How many batches `batches(n, ...)` gives, or `batches_apart` given `apart` examples set apart."""
    if apart is None:
        return -(-n // batch_size)
    return -(-apart // batch_size) + -(-(n - apart) // batch_size)


def batches_apart(apart, batch_size, device="cpu"):
    """Index batches in which the examples marked by the boolean mask `apart` (m2's labelled ones)
    come in batches of their own, spread evenly among the batches of the rest; both kinds shuffled
    afresh per call. (Pyro's semi-supervised example schedules its labelled examples this way.)"""
    inside = apart.nonzero().squeeze(1)
    rest = (~apart).nonzero().squeeze(1)
    own = [b for b in inside[torch.randperm(len(inside), device=device)].split(batch_size) if len(b)]
    others = [b for b in rest[torch.randperm(len(rest), device=device)].split(batch_size) if len(b)]
    total, next_other = len(own) + len(others), iter(others).__next__
    at = {int((j + 0.5) * total / len(own)): b for j, b in enumerate(own)}
    return [at[i] if i in at else next_other() for i in range(total)]


__all__ = ["Dataset", "load_dataset", "download", "read_idx", "binarize", "BINARIZATIONS", "batches",
           "batches_apart", "batch_count", "DATASETS"]
