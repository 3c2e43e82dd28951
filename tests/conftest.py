"""Fixtures shared by the tests: one thread, the `digits` data sets, small models, the CLI's one-line errors."""

import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import Config, build_model, load_dataset
from pyro_vae.cli import main
from pyro_vae.runs import make_run_dir, save_checkpoint

# tests/userpkg/my_parts.py: parts a user writes in a module of their own, importable as my_parts
sys.path.insert(0, str(Path(__file__).parent / "userpkg"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny networks: with several threads on a shared CPU the thread pool's hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_dataset(**kwargs):
    """A data set loaded once for the session. Tests only read it: one that changes its tensors must
    make its own copy. At the end it is compared with a fresh load, so a test that wrote into it fails."""
    data = load_dataset("digits", **kwargs)
    yield data
    fresh = load_dataset("digits", **kwargs)
    assert data.splits.keys() == fresh.splits.keys()
    for name, tensors in fresh.splits.items():
        for a, b in zip(data.splits[name], tensors):
            assert torch.equal(a, b), f"a test changed the shared digits data set ({kwargs or 'defaults'}, {name} split)"


@pytest.fixture(scope="session")
def digits():
    """`digits` as load_dataset gives it by default: binarized validation and test splits."""
    yield from shared_dataset()


@pytest.fixture(scope="session")
def tiny_digits():
    """32 training images and a small validation split of `digits`, for one-step runs."""
    yield from shared_dataset(train_size=32, val_size=0.02)


@pytest.fixture(scope="session")
def make_model():
    """make_model(name="vae", data=None, z_dim=2, hidden=16, **parts): a model sized for `data`
    (without data: for digits, 64 pixels and 10 classes), through build_model."""

    def make(name="vae", data=None, z_dim=2, hidden=16, **parts):
        return build_model(name, data.x_dim if data else 64, data.n_classes if data else 10, z_dim=z_dim,
                           hidden=hidden, **parts)

    return make


@pytest.fixture
def cli_error(capsys):
    """cli_error(argv, *needles, code=2): run the CLI in-process; its stderr must be one
    `pyro-vae: error:` line holding every needle. Returns that line."""

    def one_line_error(argv, *needles, code=2):
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pyro-vae: error: "), err
        for needle in needles:
            assert needle in err, (needle, err)
        return err

    return one_line_error


@pytest.fixture
def fake_run(digits, make_model):
    """fake_run(folder, model="vae"): a run directory with config.json and an (untrained)
    checkpoint, without training."""

    def make(folder, model="vae"):
        config = Config(model=model, hidden=8, z_dim=2, device="cpu").resolved()
        net = make_model(model, digits, z_dim=2, hidden=8, likelihood=config.likelihood)
        run = make_run_dir(folder, config)
        save_checkpoint(run, net, torch.optim.Adam(net.parameters()), 0, config, [])
        return run

    return make
