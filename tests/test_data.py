"""The data layer: the real MNIST test split, corrupt files, the search path, downloads."""

import gzip
import hashlib
import http.server
import os
import shutil
import struct
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from pyro_vae import UserError, load_dataset
from pyro_vae import data as data_module
from pyro_vae.data import SOURCES, batches, download, read_idx, read_idx_split

MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_mnist = pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="../shared/data/mnist-test not present")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test sees the user's real cache or data variable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data_module.ENV_VAR, raising=False)


@needs_mnist
def test_reads_the_real_mnist_test_split():
    images, labels = read_idx_split("mnist", "test", MNIST_TEST)
    assert images.shape == (10000, 28, 28) and images.dtype.name == "uint8"
    assert labels.shape == (10000,)
    assert labels[0] == 7 and labels[1] == 2 and labels[2] == 1  # the well-known first test digits
    assert sorted(set(labels.tolist())) == list(range(10))
    assert images.max() == 255 and images.min() == 0
    # The files beside us are the official ones: their MD5s are the ones `download` checks.
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.md5((MNIST_TEST / name).read_bytes()).hexdigest() == SOURCES["mnist"]["md5"][name]


@needs_mnist
def test_mnist_without_its_training_split_says_where_it_looked():
    with pytest.raises(UserError, match=r"mnist: train split not found .*looked in .*mnist-test.*pyro-vae download mnist"):
        load_dataset("mnist", data_dir=MNIST_TEST)


def write_idx(path, header, payload=b"", compress=True):
    raw = header + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_corrupt_idx_files_give_clear_errors(tmp_path):
    good_header = struct.pack(">HBB3I", 0, 8, 3, 2, 2, 2)
    assert read_idx(write_idx(tmp_path / "ok.gz", good_header, bytes(8)), 3).shape == (2, 2, 2)
    cases = {
        "magic": (write_idx(tmp_path / "magic.gz", struct.pack(">HBB3I", 0, 9, 3, 2, 2, 2), bytes(8)), "bad IDX magic"),
        "dims": (write_idx(tmp_path / "dims.gz", struct.pack(">HBB1I", 0, 8, 1, 8), bytes(8)), "bad IDX magic"),
        "short": (write_idx(tmp_path / "short.gz", good_header, bytes(7)), "header says 2x2x2 = 8 bytes"),
        "long": (write_idx(tmp_path / "long.gz", good_header, bytes(9)), "file holds 9"),
        "header": (write_idx(tmp_path / "header.gz", good_header[:9]), "truncated IDX header"),
        "empty": (write_idx(tmp_path / "empty.gz", b""), "too short"),
        "not gzip": (write_idx(tmp_path / "plain.gz", good_header, bytes(8), compress=False), "not a readable gzip"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(UserError, match=message):
            read_idx(path, 3)


@needs_mnist
def test_truncated_real_file_is_refused(tmp_path):
    blob = (MNIST_TEST / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="not a readable gzip file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 1)


def test_missing_data_set_names_the_places_and_the_fix(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("kmnist", data_dir=tmp_path / "nowhere")
    message = str(e.value)
    assert "nowhere" in message and "cache" in message and "/usr/share/datasets/kmnist" in message
    assert "pyro-vae download kmnist" in message and "\n" not in message


def test_unknown_data_set_lists_the_valid_ones():
    with pytest.raises(UserError, match="not one of digits, mnist, fashion-mnist, kmnist, and no such file"):
        load_dataset("cifar")


@needs_mnist
def test_search_order_env_variable_and_cache(tmp_path, monkeypatch):
    nested = tmp_path / "env" / "mnist"
    nested.mkdir(parents=True)
    for f in MNIST_TEST.iterdir():
        shutil.copy(f, nested / f.name)
    monkeypatch.setenv(data_module.ENV_VAR, str(tmp_path / "env"))
    images, _ = read_idx_split("mnist", "test")  # found through $PYRO_VAE_DATA/mnist
    assert images.shape[0] == 10000
    monkeypatch.delenv(data_module.ENV_VAR)
    with pytest.raises(UserError):
        read_idx_split("mnist", "test")
    shutil.copytree(nested, Path(tmp_path / "cache" / "pyro-vae" / "mnist"))
    assert read_idx_split("mnist", "test")[0].shape[0] == 10000  # now from the per-user cache


def test_digits_splits_and_fixed_binarization():
    d = load_dataset("digits", binarize=True)
    x_train, _ = d.splits["train"]
    x_val, y_val = d.splits["val"]
    x_test, y_test = d.splits["test"]
    assert d.shape == (8, 8) and d.x_dim == 64 and d.n_classes == 10
    assert len(x_train) + len(x_val) + len(x_test) == 1797
    assert x_train.min() >= 0 and x_train.max() <= 1 and not set(x_train.unique().tolist()) <= {0.0, 1.0}
    assert set(x_test.unique().tolist()) == {0.0, 1.0} and set(x_val.unique().tolist()) == {0.0, 1.0}
    # The evaluation bits are the same on every load, whatever the global seed.
    torch.manual_seed(123)
    again = load_dataset("digits", binarize=True)
    assert torch.equal(again.splits["test"][0], x_test) and torch.equal(again.splits["val"][0], x_val)
    # ... and a grey copy is kept when not binarizing.
    grey = load_dataset("digits", binarize=False)
    assert not set(grey.splits["test"][0].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(grey.splits["test"][1], y_test)


@pytest.mark.parametrize("name", ["uniform", "bernoulli"])
def test_dynamic_binarization_draws_each_pixel_with_its_grey_value(name):
    binarize = data_module.BINARIZATIONS[name]
    p = torch.tensor([0.0, 1.0, 0.3, 0.7, 0.5, 1e-3]).repeat(50000, 1)
    torch.manual_seed(0)
    b = binarize(p)
    assert b.dtype == p.dtype and b.shape == p.shape and set(b.unique().tolist()) == {0.0, 1.0}
    assert not b[:, 0].any() and b[:, 1].all()  # grey levels 0 and 1 are certain
    # each column's share of ones is its grey value, within 5 standard errors
    assert ((b.mean(0) - p[0]).abs() <= 5 * (p[0] * (1 - p[0]) / 50000).sqrt()).all()
    assert not torch.equal(b, binarize(p))  # afresh on every call
    # the pixels are independent: neighbouring columns of one draw do not move together
    assert abs(torch.corrcoef(b[:, 2:5].T)[0, 1:].abs().max().item()) < 0.03


def test_a_run_records_its_binarization_and_one_from_before_reads_as_bernoulli(tmp_path):
    import json
    import pyro_vae
    from pyro_vae.runs.store import read_config
    run = pyro_vae.train(out=tmp_path / "run", dataset="digits", hidden=8, z_dim=2, epochs=1, train_size=64,
                         device="cpu", progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["binarization"] == "uniform"
    del config["binarization"]
    (run / "config.json").write_text(json.dumps(config))
    assert read_config(run).binarization == "bernoulli"
    config["binarization"] = "dice"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="binarization is uniform or bernoulli"):
        read_config(run)


def test_batches_cover_every_index_once_per_epoch():
    seen = torch.cat(list(batches(103, 10)))
    assert sorted(seen.tolist()) == list(range(103))
    assert [len(b) for b in batches(103, 10)][-1] == 3


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    d = load_dataset("fashion-mnist", train_size=500)
    assert d.shape == (28, 28) and len(d.splits["train"][0]) == 500
    assert len(d.splits["val"][0]) == 6000 and len(d.splits["test"][0]) == 10000
    assert d.classes[9] == "Boot"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@needs_mnist
def test_download_verifies_checksums_against_a_local_server(tmp_path, local_server, monkeypatch):
    served, url = local_server
    # Only the test split is available on these machines: download just those two files.
    test_files = {k: v for k, v in SOURCES["mnist"]["md5"].items() if k.startswith("t10k")}
    monkeypatch.setitem(SOURCES["mnist"], "md5", test_files)
    for name in test_files:
        shutil.copy(MNIST_TEST / name, served / name)
    mask = os.umask(0o022)
    try:
        dest = download("mnist", tmp_path / "dl", mirrors=[url + "missing/", url], progress=False)
    finally:
        os.umask(mask)
    assert read_idx_split("mnist", "test", dest)[0].shape == (10000, 28, 28)
    # readable by the others who share a data folder, as a file curl wrote would be (not mkstemp's 0600)
    assert {(dest / name).stat().st_mode & 0o777 for name in test_files} == {0o644}

    # A corrupted copy on the server fails its checksum and leaves nothing behind.
    blob = bytearray((MNIST_TEST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[100] ^= 0xFF
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    fresh = tmp_path / "dl2"
    with pytest.raises(UserError, match="checksum mismatch"):
        download("mnist", fresh, mirrors=[url], progress=False)
    assert not (fresh / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(fresh.glob("*.part"))

    with pytest.raises(UserError, match="404"):
        download("mnist", tmp_path / "dl3", mirrors=[url + "missing/"], progress=False)
