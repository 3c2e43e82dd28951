"""Every bad input gets one line on stderr and a non-zero exit, never a traceback; the data
reader raises only `UserError`s whatever bytes it is fed; a pickled checkpoint is refused."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_vae
from pyro_vae import Config, UserError, compare, download, sample_run, train
from pyro_vae.cli import main
from pyro_vae.data import read_idx
from pyro_vae.runs import load_checkpoint
from pyro_vae.runs.quadrants import run_quadrants

SMALL = ["--hidden", "8", "--z-dim", "2", "--train-size", "64", "--epochs", "1", "--quiet", "--device", "cpu"]


# ---- names, combinations, sizes -------------------------------------------------------------

@pytest.mark.parametrize("option, value, valid", [
    ("--model", "vae9", "vae, cvae1, cvae2, cvae3, cvae4"),
    ("--dataset", "cifar", "digits, mnist, fashion-mnist, kmnist"),
    ("--elbo", "renyi", "trace, meanfield"),
    ("--likelihood", "poisson", "bernoulli"),
])
def test_unknown_name_lists_the_valid_ones(cli_error, option, value, valid):
    err = cli_error(["train", option, value], value)
    assert all(name in err for name in valid.split(", "))


@pytest.mark.parametrize("setting, value, valid", [
    ("model", "vae9", "cvae4"), ("dataset", "cifar", "kmnist"), ("elbo", "renyi", "meanfield"),
    ("likelihood", "poisson", "bernoulli"),
])
def test_unknown_name_in_the_api_raises_user_error(tmp_path, setting, value, valid):
    with pytest.raises(UserError, match=valid):
        train(out=tmp_path / "run", **{setting: value})
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("argv, needle", [
    (["--model", "cvae3", "--likelihood", "bernoulli"], "cvae3 predicts y, here label"),
    (["--model", "vae", "--likelihood", "categorical"], "only fits cvae3"),
    (["--resume", "RUN", "--model", "cvae1"], "--resume"),
])
def test_impossible_combination(cli_error, tmp_path, argv, needle):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    cli_error(["train", *argv, *SMALL, "--out", str(tmp_path / "x")], needle)


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--batch-size", "-1"), ("--z-dim", "0"), ("--hidden", "0"), ("--particles", "0"),
    ("--train-size", "0"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--clip-grad", "0"),
    ("--epochs", "two"),
])
def test_non_positive_sizes_rates_and_epochs(cli_error, option, value):
    cli_error(["train", option, value], option)


@pytest.mark.parametrize("setting, value", [
    ("epochs", 0), ("batch_size", -3), ("z_dim", 0), ("hidden", -1), ("lr", 0.0), ("lr", float("inf")),
    ("clip_grad", -1.0), ("train_size", 0), ("seed", -1), ("val_size", 1.5),
])
def test_non_positive_settings_in_the_api(setting, value):
    with pytest.raises(UserError, match=setting):
        Config(**{setting: value}).resolved()


@pytest.mark.parametrize("call, needle", [
    (lambda m, d: pyro_vae.fit(m, d, epochs=-1, progress=False), "epochs must be a positive whole number"),
    (lambda m, d: pyro_vae.fit(m, d, epochs=1, lr=float("nan"), progress=False), "lr must be a positive finite"),
    (lambda m, d: pyro_vae.fit(m, d, epochs=1, beta=-1.0, progress=False), "beta must be a finite number not below 0"),
    (lambda m, d: pyro_vae.Trainer(m, warmup_epochs=-1), "warmup_epochs must be a whole number not below 0"),
    (lambda m, d: pyro_vae.Trainer(m, warmup_epochs=2.5), "warmup_epochs must be a whole number"),
    (lambda m, d: pyro_vae.Trainer(m, clip_grad=0.0), "clip_grad must be a positive finite number"),
    (lambda m, d: pyro_vae.Trainer(m).run(d, "3", 32), "epochs must be a whole number not below 0"),
])
def test_the_trainer_checks_its_own_settings(call, needle):
    """`fit` and `Trainer` are public: a negative epoch count used to train nothing and return [], a
    NaN rate raised torch's own ValueError, a negative KL weight trained on."""
    data = pyro_vae.load_dataset("digits", train_size=64)
    model = pyro_vae.build_model("vae", data.x_dim, z_dim=2, hidden=8)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UserError, match=needle):
        call(model, data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step


@pytest.mark.parametrize("option, value, needle", [
    ("--beta", "nan", "finite number not below 0"), ("--beta", "inf", "finite number not below 0"),
    ("--beta", "-1", "not below 0"), ("--warmup-epochs", "-1", "not below 0"), ("--warmup-epochs", "1.5", "whole"),
    ("--threads", "100000", "the CPUs this process may use"), ("--threads", "0", "positive"),
])
def test_weights_schedules_and_threads_are_checked_as_they_are_read(cli_error, tmp_path, option, value, needle):
    cli_error(["train", option, value, *SMALL, "--out", str(tmp_path / "run")], option, needle)
    assert not (tmp_path / "run").exists()


def test_no_more_threads_than_cpus(tmp_path):
    import os
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(UserError, match=f"at most {cpus}"):
        compare(tmp_path / "c", vary={"model": ["vae", "cvae1"]}, seeds=1, threads=cpus + 1, progress=False)
    assert not (tmp_path / "c").exists()


def test_unknown_device(cli_error):
    cli_error(["train", "--device", "tpu", *SMALL[:-2]], "unknown device 'tpu'")


# ---- data files ----------------------------------------------------------------------------

def idx(array):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder, n=40, labels=None, damage=None):
    """A tiny well-formed IDX data set (both splits) in `folder`; damage(name, bytes) may spoil a file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx(labels if labels is not None else rng.integers(0, 10, n)),
        "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (10, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx(rng.integers(0, 10, 10)),
    }
    for name, raw in files.items():
        data = gzip.compress(raw, mtime=0)
        (folder / name).write_bytes(damage(name, data) if damage else data)
    return folder


@pytest.fixture
def no_other_data(monkeypatch, tmp_path):
    """Only the folder a test names holds data: no cache, no PYRO_VAE_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)


def spoil(target, how):
    def damage(name, data):
        if name != target:
            return data
        if how == "truncated":
            return data[: len(data) // 2]
        if how == "crc":  # the gzip trailer's CRC-32 no longer matches the contents
            return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]
        raw = gzip.decompress(data)
        if how == "magic":
            raw = b"\x00\x00\x08\x07" + raw[4:]
        elif how == "length":
            raw = raw[:-5]
        return gzip.compress(raw, mtime=0)
    return damage


@pytest.mark.parametrize("how, needle", [
    ("truncated", "not a readable gzip file"),
    ("crc", "not a readable gzip file"),
    ("magic", "bad IDX magic number"),
    ("length", "bytes of data, file holds"),
])
def test_corrupt_data_file(cli_error, tmp_path, no_other_data, how, needle):
    folder = write_idx_set(tmp_path / "data", damage=spoil("train-images-idx3-ubyte.gz", how))
    cli_error(["train", "--dataset", "mnist", "--data-dir", str(folder), *SMALL,
              "--out", str(tmp_path / "run")], needle, "train-images-idx3-ubyte.gz")


def test_missing_data_file(cli_error, tmp_path, no_other_data):
    cli_error(["train", "--dataset", "kmnist", "--data-dir", str(tmp_path / "empty"), *SMALL],
              "kmnist: train split not found", "pyro-vae download kmnist")


def test_label_out_of_range(cli_error, tmp_path, no_other_data):
    folder = write_idx_set(tmp_path / "data", labels=[3] * 39 + [12])
    cli_error(["train", "--dataset", "mnist", "--data-dir", str(folder), *SMALL],
              "label 12 out of range 0..9")


def test_download_into_a_file_is_one_line_and_the_file_kept(cli_error, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    cli_error(["download", "kmnist", "--dest", str(mine)], "a file of that name is in the way of the folder")
    assert mine.read_text() == "mine"


def test_download_checksum_mismatch(tmp_path):
    mirror = write_idx_set(tmp_path / "mirror")  # well-formed files, but not the published ones
    with pytest.raises(UserError, match="checksum mismatch"):
        download("mnist", tmp_path / "dest", mirrors=[mirror.as_uri() + "/"], progress=False)
    assert not list((tmp_path / "dest").iterdir())  # nothing half-downloaded is left looking complete


def test_corrupt_data_file_from_a_fresh_process_has_no_traceback(tmp_path, no_other_data):
    folder = write_idx_set(tmp_path / "data", damage=spoil("t10k-labels-idx1-ubyte.gz", "magic"))
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--dataset", "fashion-mnist",
                           "--data-dir", str(folder), *SMALL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "bad IDX magic number" in done.stderr
    assert "Traceback" not in done.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=64),  # not gzip at all
    st.binary(max_size=200).map(lambda b: gzip.compress(b, mtime=0)),  # gzip of junk
    st.tuples(st.binary(max_size=40), st.integers(0, 3)).map(  # a plausible header, then junk
        lambda t: gzip.compress(struct.pack(">HBB", 0, 8, t[1]) + t[0], mtime=0)),
    st.tuples(st.integers(0, 400), st.integers(0, 10 ** 6)).map(  # a valid file, truncated or bit-flipped
        lambda t: (lambda g: g[:t[0]] if t[1] % 2 else
                   g[:t[0] % len(g)] + bytes([g[t[0] % len(g)] ^ (1 + t[1] % 255)]) + g[t[0] % len(g) + 1:])(
            gzip.compress(idx(np.arange(60).reshape(3, 4, 5)), mtime=0))),
))
def test_idx_reader_fuzz_raises_only_user_errors(tmp_path, blob):
    path = tmp_path / "fuzz.gz"
    path.write_bytes(blob)
    for dims in (1, 3):
        try:
            array = read_idx(path, dims)
        except UserError as e:
            assert str(e).count("\n") == 0
        else:
            assert array.dtype == np.uint8 and array.ndim == dims


# ---- checkpoints and run directories -------------------------------------------------------

def test_checkpoint_from_another_model(cli_error, tmp_path, fake_run):
    vae, cvae1 = fake_run(tmp_path / "vae"), fake_run(tmp_path / "cvae1", "cvae1")
    (cvae1 / "checkpoint.pt").write_bytes((vae / "checkpoint.pt").read_bytes())
    cli_error(["evaluate", str(cvae1), "--iw-samples", "2", "--quiet"],
              "another model or configuration", "model 'vae' (config.json: 'cvae1')")
    cli_error(["train", "--resume", str(cvae1), "--quiet"], "another model or configuration")


def test_checkpoint_with_weights_of_another_shape(cli_error, tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    state = load_checkpoint(run / "checkpoint.pt")
    state["model"]["encoder.net.0.weight"] = torch.zeros(3, 3)
    torch.save(state, run / "checkpoint.pt")
    cli_error(["sample", str(run)], "does not fit the model in config.json")


def test_truncated_checkpoint(cli_error, tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    raw = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(raw[: len(raw) // 2])
    cli_error(["evaluate", str(run), "--iw-samples", "2", "--quiet"], "not a loadable pyro-vae checkpoint",
              "cut short")
    (run / "checkpoint.pt").write_bytes(b"")
    cli_error(["evaluate", str(run), "--iw-samples", "2", "--quiet"], "(an empty file)")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").symlink_to("/etc/hostname" if Path("/etc/hostname").is_file() else __file__)
    cli_error(["evaluate", str(run), "--iw-samples", "2", "--quiet"], "not the zip archive torch.save writes")


class Payload:
    """Unpickling this would create a file: the proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_refused(cli_error, tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    marker = tmp_path / "code-ran"
    state = load_checkpoint(run / "checkpoint.pt")
    state["extra"] = Payload(str(marker))
    torch.save(state, run / "checkpoint.pt")
    cli_error(["evaluate", str(run), "--iw-samples", "2", "--quiet"], "refused", "pickled")
    cli_error(["train", "--resume", str(run), "--quiet"], "refused")
    assert not marker.exists()


def test_output_directory_that_cannot_be_written(cli_error, tmp_path):
    (tmp_path / "a-file").write_text("")
    cli_error(["train", *SMALL, "--out", str(tmp_path / "a-file" / "run")], "cannot write the run directory")


def test_resume_of_something_that_is_not_a_run(cli_error, tmp_path):
    cli_error(["train", "--resume", str(tmp_path)], "not a run directory")
    (tmp_path / "config.json").write_text("{not json")
    cli_error(["train", "--resume", str(tmp_path)], "config.json is not readable")


def test_sample_label_out_of_range(cli_error, tmp_path, fake_run):
    run = fake_run(tmp_path / "run", "cvae1")
    cli_error(["sample", str(run), "--label", "12"], "label 12 out of range 0..9")


def test_sample_takes_a_class_by_name(cli_error, tmp_path):
    """`sample --label Sneaker` was "invalid int value"; a class is now asked for by number or by its
    name (any case), the same draws either way, and a name the data lacks lists the classes."""
    x = (np.random.default_rng(0).random((120, 4, 4)) > 0.5).astype(np.float32)
    data = pyro_vae.Dataset.from_arrays(x, labels=np.arange(120) % 3, classes=["cat", "Dog", "T-shirt/top"])
    run = pyro_vae.train(model="cvae1", dataset=data, epochs=1, z_dim=2, hidden=8, progress=False, out=tmp_path / "run")
    assert main(["sample", str(run), "--label", "dog", "--n", "6"]) == 0
    by_name = run / "samples-label-dog-n6-seed0.png"
    by_number = pyro_vae.sample_run(run, n=6, label=1)
    assert by_number.name == "samples-label1-n6-seed0.png" and by_name.read_bytes() == by_number.read_bytes()
    cli_error(["sample", str(run), "--label", "cow"], "no class named 'cow' in ", "its classes are 0 cat, 1 Dog, 2 T-shirt/top")
    # a name a file cannot hold as it is: the default file name keeps it readable, in the run's folder
    assert pyro_vae.sample_run(run, n=6, label="t-shirt/top").name == "samples-label-t-shirt_top-n6-seed0.png"
    cli_error(["sample", str(run), "--label", "7"], "label 7 out of range 0..2")
    with pytest.raises(pyro_vae.UserError, match="give a class's number or name"):
        pyro_vae.sample_run(run, label=" ")


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999999"])
def test_a_seed_outside_what_the_generators_take_is_one_line_everywhere(cli_error, tmp_path, fake_run, seed):
    """Every command's --seed (and compare's --seeds) is checked as train's is: NumPy's generator
    takes 0..2**32-1 and used to raise its own traceback from `sample`."""
    run = fake_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    cli_error(["sample", str(run), "--seed", seed], "--seed", "0..2**32-1")
    assert sorted(p.name for p in run.iterdir()) == before  # no figure started
    cli_error(["train", "--seed", seed, *SMALL, "--out", str(tmp_path / "t")], "--seed", "0..2**32-1")
    cli_error(["quadrants", "--seed", seed, "--out", str(tmp_path / "q")], "--seed", "0..2**32-1")
    cli_error(["compare", "--models", "vae,cvae1", "--seeds", f"0,{seed}", "--out", str(tmp_path / "c")],
              "--seeds", "0..2**32-1")
    assert not any((tmp_path / d).exists() for d in "tqc")
    with pytest.raises(UserError, match="seed must be a whole number in 0..2"):
        sample_run(run, seed=int(seed))
    with pytest.raises(UserError, match="seed must be a whole number in 0..2"):
        run_quadrants(tmp_path / "q", seed=int(seed))
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("seeds", [10 ** 12, 10_001, 0, -2, "abc", [0] * 10_001, True])
def test_a_number_of_seeds_too_large_is_refused_before_it_is_counted_out(tmp_path, seeds):
    """`compare --seeds N` makes the list 0..N-1: a huge N (a typo) is one line, not memory filled."""
    with pytest.raises(UserError, match="seeds"):
        compare(tmp_path / "c", vary={"model": ["vae", "cvae1"]}, seeds=seeds, progress=False)
    assert not (tmp_path / "c").exists()
    (tmp_path / "e.toml").write_text(f"seeds = {json.dumps(seeds)}\n[vary]\nmodel = ['vae', 'cvae1']\n")
    with pytest.raises(UserError, match="seeds"):
        compare(tmp_path / "c", experiment=tmp_path / "e.toml", progress=False)
    assert not (tmp_path / "c").exists()


def test_config_json_keeps_every_setting(tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["clip_grad"] is None


@pytest.mark.parametrize("make, data, error, needle", [
    (lambda d: pyro_vae.build_model("vae", d.x_dim, z_dim=2, hidden=8), lambda d: "digits", pyro_vae.BadType,
     "data must be a pyro_vae.Dataset (pyro_vae.load_dataset(...), or Dataset.from_arrays(...)), got str 'digits'"),
    (lambda d: pyro_vae.build_model("vae", 10, z_dim=2, hidden=8), lambda d: d, pyro_vae.BadValue,
     "the model was built for x of 10 values, and digits gives x of 64"),
    (lambda d: pyro_vae.build_model("cvae1", d.x_dim, 3, z_dim=2, hidden=8), lambda d: d, pyro_vae.BadValue,
     "the model was built for y of 3 values, and digits gives y of 10"),
])
def test_fit_refuses_data_the_model_was_not_built_for(tiny_digits, make, data, error, needle):
    """The Python API's fit on a string, or on data whose sizes are not the model's: an
    AttributeError, or torch's 'mat1 and mat2 shapes cannot be multiplied' from inside Pyro's
    trace. Now one line saying what to build, before any step; the model's weights unchanged."""
    model = make(tiny_digits)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error) as e:
        pyro_vae.fit(model, data(tiny_digits), 1, progress=False)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the sizes it was built for train as before
    pyro_vae.fit(pyro_vae.build_model(make(tiny_digits).__class__.__name__.lower(), tiny_digits.x_dim,
                                      tiny_digits.y_dim, z_dim=2, hidden=8), tiny_digits, 1, progress=False)


def test_fit_takes_an_objective_by_name_and_refuses_what_is_not_one(tiny_digits):
    """`fit(..., elbo="bogus")` ended in "'str' object has no attribute 'loss_and_grads'" from inside
    the first step. An objective's name is taken as --elbo takes it; anything else that is not an
    ELBO is one line before any step, the weights unchanged."""
    from pyro.infer import TraceMeanField_ELBO

    model = pyro_vae.build_model("vae", tiny_digits.x_dim, z_dim=2, hidden=8)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(pyro_vae.UserError, match=r"^unknown objective 'bogus'; choose from trace, meanfield, iwae, enum$"):
        pyro_vae.fit(model, tiny_digits, 1, elbo="bogus", progress=False)
    with pytest.raises(pyro_vae.BadType, match=r"^elbo must be an objective's name \(trace, .*\) or a pyro.infer ELBO, got int$"):
        pyro_vae.fit(model, tiny_digits, 1, elbo=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert isinstance(pyro_vae.Trainer(model, elbo="meanfield").elbo, TraceMeanField_ELBO)
    history = pyro_vae.fit(model, tiny_digits, 1, elbo="iwae", progress=False)
    assert "val_bound" in history[-1]  # the IWAE objective's own bound, reported as for --elbo iwae
