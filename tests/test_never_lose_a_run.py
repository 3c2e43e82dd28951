"""A run directory is owned by its run and nothing is lost: each case tried the way a hostile user
would, asserting the one-line message, the exit status, and (by hashing) that no file outside the
run, and no previous run, changed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import BadType, BadValue, UserError
from pyro_vae.runs import load_checkpoint
from run_helpers import hashes

SMALL = dict(dataset="digits", hidden=16, z_dim=2, train_size=200, batch_size=32, device="cpu")
ARGS = ["--dataset", "digits", "--hidden", "16", "--z-dim", "2", "--train-size", "200", "--batch-size", "32",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-epoch run, copied afresh by each test that may damage it."""
    return pyro_vae.train(out=tmp_path_factory.mktemp("trained") / "run", progress=False, epochs=2, **SMALL)


@pytest.fixture
def run(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# --- the run directory belongs to its run ------------------------------------------------------------

def test_train_over_an_existing_run_is_refused_and_the_run_kept(run, cli_error):
    before = hashes(run)
    cli_error(["train", *ARGS, "--epochs", "1", "--out", str(run)], "already holds a run", "--resume", "--overwrite")
    assert hashes(run) == before


def test_overwrite_replaces_a_previous_run_and_only_its_files(run, tmp_path):
    assert main(["train", *ARGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    (run / "notes.txt").write_text("mine")
    before = hashes(run)
    assert main(["train", *ARGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 2  # a foreign file: no
    assert hashes(run) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_of_unrelated_files_is_never_touched(tmp_path, cli_error, overwrite):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in [("config.txt", "a"), ("samples.png", "not a figure"), (".notes.tmp", "hidden"),
                       (".config.json.abc.tmp", "looks like an old temporary")]:
        (folder / name).write_text(text)
    before = hashes(folder)
    cli_error(["train", *ARGS, "--epochs", "1", "--out", str(folder), *overwrite], "choose a new or empty --out")
    assert hashes(folder) == before


def test_two_writers_of_one_directory_the_second_fails_at_once(tmp_path):
    out = tmp_path / "run"
    # more epochs than it can finish while the others start, on a loaded machine (it is stopped with Ctrl-C)
    first = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *ARGS, "--epochs", "100000", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "pyro_vae", "train", *ARGS, "--epochs", "1", "--out", str(out),
                                 "--overwrite"], capture_output=True, text=True, timeout=60)
        resumer = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", str(out), "--epochs", "200000",
                                  "--quiet"], capture_output=True, text=True, timeout=60)
        assert time.monotonic() - started < 30  # at once, not after the first finished
        for other in (second, resumer):
            assert other.returncode == 2
            assert other.stderr.count("\n") == 1 and f"in use by process {first.pid}" in other.stderr
        assert first.poll() is None  # the first is still training, undisturbed
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    state = load_checkpoint(out / "checkpoint.pt")
    assert json.loads((out / "config.json").read_text())["epochs"] == 100000  # the first run's own config
    assert state["epoch"] == len((out / "metrics.jsonl").read_text().splitlines())


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *ARGS, "--epochs", "400", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.kill()
    child.wait()
    assert (out / ".pyro-vae.lock").exists()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    pyro_vae.train(resume=out, epochs=done + 1, progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == done + 1


@pytest.mark.parametrize("figure", ["samples.png", "elbo.png", "latent.png", "reconstructions.png"])
def test_figures_replace_a_symlink_instead_of_writing_through_it(run, tmp_path, figure):
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes")
    (run / figure).unlink()
    (run / figure).symlink_to(victim)
    if figure == "samples.png":
        assert main(["figures", str(run), "--device", "cpu"]) == 0
    else:
        pyro_vae.train(resume=run, epochs=3, progress=False)  # training draws every figure again
    assert victim.read_text() == "my notes"
    assert not (run / figure).is_symlink() and (run / figure).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("damage", ['{"epoch": "x"}', "[1]", '"text"', '{"epoch": 3, "tra', "DUP",
                                    '{"epoch": 99, "train_elbo": -1, "val_elbo": -1, "seconds": 1}', "\x00\xff"])
def test_a_damaged_metrics_file_is_one_line_and_a_resume_writes_it_again(run, cli_error, damage):
    """metrics.jsonl is written whole and atomically, so a bad line came from elsewhere (an editor, a
    merge): `figures` says which line in one line (it raised KeyError, TypeError or JSONDecodeError),
    and a resume writes the file again from the checkpoint."""
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_bytes(good.encode() + (good.splitlines()[-1] if damage == "DUP" else damage).encode("latin-1"))
    cli_error(["figures", str(run), "--device", "cpu"], "metrics.jsonl: line 3 is not epoch 3's metrics")
    with pytest.raises(UserError, match="line 3"):
        pyro_vae.read_metrics(run)
    pyro_vae.train(resume=run, epochs=3, progress=False)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and metrics.read_text().startswith(good)


def test_checkpoint_and_metrics_replace_a_symlink_too(run, tmp_path):
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"precious")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    pyro_vae.train(resume=run, epochs=3, progress=False)
    assert victim.read_bytes() == b"precious"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.fixture
def umask():
    """Set the process's umask for a test, restored after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(folder):
    return {p.name: p.stat().st_mode & 0o777 for p in Path(folder).iterdir() if p.is_file()}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_run_s_files_get_the_permissions_the_umask_gives_as_open_would(tmp_path, umask, mask, expected):
    # written to a private temporary file and renamed, they had been 0600 whatever the umask: a run
    # on a shared machine that colleagues (or a web server for its figures) could not read
    umask(mask)
    out = pyro_vae.train(out=tmp_path / "run", progress=False, epochs=1, **SMALL)
    got = {name: mode for name, mode in modes(out).items() if not name.startswith(".")}  # the run's lock: its own
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "samples.png"} <= set(got)
    assert set(got.values()) == {expected}, got


def test_a_rewritten_file_keeps_the_permissions_it_had_and_a_replaced_symlink_gets_the_umask_s(run, tmp_path, umask):
    (run / "metrics.jsonl").chmod(0o640)  # a user's choice for this file, kept on every rewrite
    (run / "checkpoint.pt").chmod(0o400)
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    (run / "eval.json").unlink(missing_ok=True)
    (run / "eval.json").symlink_to(victim)
    pyro_vae.train(resume=run, epochs=3, progress=False)
    pyro_vae.evaluate_run(run, iw_samples=2, progress=False, device="cpu")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert (run / "metrics.jsonl").stat().st_mode & 0o777 == 0o640
    assert (run / "checkpoint.pt").stat().st_mode & 0o777 == 0o400 and load_checkpoint(run / "checkpoint.pt")["epoch"] == 3
    assert not (run / "eval.json").is_symlink() and (run / "eval.json").stat().st_mode & 0o777 == 0o644
    assert victim.read_bytes() == b"precious" and victim.stat().st_mode & 0o777 == 0o600


def test_a_run_killed_in_its_first_epoch_is_said_untrained_not_collapsed(tmp_path, capsys):
    """SIGKILL before the first epoch ends leaves the initial checkpoint (epoch 0). evaluate and
    sample used it with no word (evaluate even called the untrained weights a collapsed posterior
    and advised a KL warm-up); now both say what the weights are, figures has nothing to draw, and
    --resume trains it."""
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *ARGS, "--batch-size", "1", "--train-size",
                              "300", "--epochs", "5", "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists():
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    child.kill()
    child.wait(timeout=30)
    if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip():
        pytest.skip("the first epoch ended before the kill")  # 300 steps: not on any machine seen
    capsys.readouterr()
    result = pyro_vae.evaluate_run(out, iw_samples=2, device="cpu")
    err = capsys.readouterr().err
    assert result["checkpoint_epoch"] == 0 and "collapse" not in result
    assert "has no finished epoch: these are its initial, untrained weights" in err and "collapse" not in err
    pyro_vae.sample_run(out, n=4, device="cpu")
    assert "initial, untrained weights" in capsys.readouterr().err
    with pytest.raises(UserError, match="no finished epoch yet"):
        pyro_vae.runs.redraw_run(out, device="cpu")
    pyro_vae.train(resume=out, epochs=1, progress=False)
    pyro_vae.evaluate_run(out, iw_samples=2, device="cpu")
    assert "untrained" not in capsys.readouterr().err


# --- SIGTERM (a scheduler's notice) ------------------------------------------------------------------

def sigterm_after_an_epoch(command, metrics, wait=60, **popen):
    """Start `command`, send it SIGTERM once `metrics` holds an epoch; (exit status, stderr)."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + wait
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.monotonic() < deadline and child.poll() is None, child.stderr.read() if child.poll() else ""
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


def test_sigterm_ends_any_command_in_one_line_keeping_what_it_wrote(tmp_path):
    """Outside training SIGTERM killed a command without a word (quadrants, evaluate, compare, ...:
    the shell's status 143, no line saying why). Now every command ends as Ctrl-C ends it: one line,
    status 143, the files it finished kept as they were, no temporary file left."""
    out = tmp_path / "q"
    child = subprocess.Popen([sys.executable, "-m", "pyro_vae", "quadrants", "--dataset", "digits", "--given", "1", "2",
                              "--epochs", "300", "--hidden", "16", "--z-dim", "2", "--iw-samples", "2", "--examples", "5",
                              "--device", "cpu", "--quiet", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "baseline-1.pt"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert time.monotonic() < deadline and child.poll() is None, child.stderr.read() if child.poll() else ""
        time.sleep(0.02)
    before = hashes(out, skip=(".pyro-vae.lock",))
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143 and "Traceback" not in err, err
    assert err == "pyro-vae: terminated (SIGTERM)\n", err
    after = hashes(out, skip=(".pyro-vae.lock",))
    assert after["baseline-1.pt"] == before["baseline-1.pt"] and "results.json" not in after
    assert not [name for name in after if ".pyro-vae-tmp" in name]


def sigterm_run(out, grace, epochs=400):
    return sigterm_after_an_epoch([sys.executable, "-m", "pyro_vae", "train", *ARGS, "--epochs", str(epochs),
                                   "--out", str(out), "--grace", str(grace)], out / "metrics.jsonl")


def test_sigterm_keeps_the_last_epoch_and_resumes_bitwise(tmp_path):
    out = tmp_path / "run"
    code, err = sigterm_run(out, grace=0)
    assert code == 143 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pyro-vae: terminated (SIGTERM)") and f"--resume {out}" in last
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert f"checkpoint of epoch {done}" in last or f"after epoch {done}" in last
    pyro_vae.train(resume=out, epochs=done + 2, progress=False)
    pyro_vae.train(out=tmp_path / "straight", epochs=done + 2, progress=False, **SMALL)
    resumed, straight = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for name in straight["model"]:
        assert torch.equal(resumed["model"][name], straight["model"][name]), name
    assert torch.equal(resumed["rng"]["torch"], straight["rng"]["torch"])


def test_sigterm_with_a_grace_period_finishes_the_epoch(tmp_path):
    out = tmp_path / "run"
    code, err = sigterm_run(out, grace=60)
    assert code == 143
    last = err.strip().splitlines()[-1]
    assert last.startswith("pyro-vae: terminated (SIGTERM) after epoch")
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert f"after epoch {done} " in last and len((out / "metrics.jsonl").read_text().splitlines()) == done


# --- bounded resources and one-line errors ----------------------------------------------------------

def test_sample_asks_for_too_many_draws(run, cli_error):
    before = hashes(run)
    cli_error(["sample", str(run), "--n", "2000000"], "at most 4096")
    assert hashes(run) == before


@pytest.mark.parametrize("out, needle", [
    ("DIR", "is a directory"), ("missing/s.png", "does not exist"), ("s.txt", "ends in .png"), ("plain", "ends in .png"),
])
def test_sample_out_is_checked_before_any_work(run, tmp_path, cli_error, out, needle):
    target = tmp_path if out == "DIR" else tmp_path / out
    cli_error(["sample", str(run), "--out", str(target)], needle)
    assert not (tmp_path / "plain.png").exists()


def proc_refuses_with_enoent():
    """Whether creating a file in /proc fails with ENOENT here (Linux as root; another user may get EACCES)."""
    try:
        os.close(os.open("/proc/pyro-vae-probe", os.O_WRONLY | os.O_CREAT, 0o600))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    os.unlink("/proc/pyro-vae-probe")
    return False


@pytest.mark.skipif(not proc_refuses_with_enoent(), reason="needs a /proc that refuses new names with ENOENT")
def test_a_folder_that_takes_no_new_files_is_not_called_missing(run, tmp_path, cli_error):
    """/proc exists but refuses new names with ENOENT: the error names the folder rather than saying
    it does not exist (which would send the user looking for a folder that is there)."""
    before = hashes(run)
    cli_error(["sample", str(run), "--out", "/proc/pyro-vae-test.png"], "/proc takes no new files")
    cli_error(["train", "--out", "/proc/pyro-vae-test/run", "--epochs", "1"], "/proc takes no new files")
    cli_error(["download", "kmnist", "--dest", "/proc/pyro-vae-test"], "/proc takes no new files")
    assert hashes(run) == before
    from pyro_vae.files import write_reason
    assert write_reason(FileNotFoundError(2, "No such file", str(tmp_path / "gone" / "x"))) == "its folder does not exist"


def test_quadrants_out_under_a_file(tmp_path, cli_error):
    (tmp_path / "file").write_text("x")
    cli_error(["quadrants", "--dataset", "digits", "--out", str(tmp_path / "file" / "sub")], "cannot write")


def test_quadrants_keeps_an_earlier_run_and_has_one_writer_at_a_time(tmp_path, cli_error, capsys):
    """`pyro-vae quadrants` into a folder holding an earlier run replaced its results, weights and
    figures without a word (train refuses such an --out), and two at once wrote over each other. Now:
    refused in one line, every file as it was; --overwrite replaces them; a second writer is refused
    at once; a setting listed twice is one line (it trained the same model twice)."""
    from pyro_vae.runs.store import LOCK_FILE, RunLock

    out = tmp_path / "q"
    argv = ["quadrants", "--dataset", "digits", "--given", "2", "--models", "cvae3", "--epochs", "1", "--hidden", "8",
            "--z-dim", "2", "--iw-samples", "2", "--examples", "5", "--quiet", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    assert "1 result in" in capsys.readouterr().out
    before = hashes(out, skip=(LOCK_FILE,))
    assert set(before) == {"results.json", "cvae3-2.pt", "quadrants-2.png"}
    cli_error(argv, f"{out} holds an earlier quadrants run (results.json, cvae3-2.pt, quadrants-2.png); "
                    "pass --overwrite to replace it")
    cli_error(argv[:4] + ["1"] + argv[5:], "holds an earlier quadrants run (results.json)")  # its table, too
    assert hashes(out, skip=(LOCK_FILE,)) == before
    lock = RunLock(out).acquire()  # another writer (flock: another open file, as another process's)
    lock.announce()
    try:
        cli_error(argv + ["--overwrite"], f"{out} is in use by process {os.getpid()}")
    finally:
        lock.release()
    assert hashes(out, skip=(LOCK_FILE,)) == before
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert hashes(out, skip=(LOCK_FILE,))["cvae3-2.pt"] != before["cvae3-2.pt"]
    cli_error(argv[:4] + ["1", "1"] + argv[5:], "quadrants: given lists each of 1, 2, 3 at most once, got [1, 1]")
    cli_error(argv[:6] + ["cvae3", "cvae3"] + argv[7:], "models lists each of baseline, cvae3, hybrid at most once")


def test_a_figure_path_that_is_a_directory(run, cli_error):
    (run / "samples.png").unlink()
    (run / "samples.png").mkdir()
    cli_error(["figures", str(run)], "samples.png", "is a directory")
    cli_error(["sample", str(run), "--out", str(run / "samples.png")], "samples.png", "is a directory")


def test_sample_writes_a_new_file_and_replaces_only_when_asked(run, cli_error):
    before = hashes(run)
    assert main(["sample", str(run), "--n", "9", "--device", "cpu"]) == 0
    made = run / "samples-n9-seed0.png"
    assert made.read_bytes()[:4] == b"\x89PNG"
    after = hashes(run)
    assert after.pop(made.name) and after == before  # training's samples.png and the rest untouched
    cli_error(["sample", str(run), "--n", "9", "--device", "cpu"], "exists", "--replace")
    assert main(["sample", str(run), "--n", "9", "--seed", "1", "--device", "cpu"]) == 0  # another name
    assert main(["sample", str(run), "--n", "9", "--device", "cpu", "--replace"]) == 0


def test_figures_redraws_what_an_interrupted_run_lacks(run, cli_error, tmp_path):
    figures = ["samples.png", "reconstructions.png", "elbo.png", "latent.png"]
    for name in figures:
        (run / name).unlink()
    assert main(["figures", str(run), "--device", "cpu"]) == 0
    assert all((run / name).read_bytes()[:4] == b"\x89PNG" for name in figures)
    empty = pyro_vae.train(out=tmp_path / "e", progress=False, epochs=1, **SMALL)
    (empty / "metrics.jsonl").write_text("")
    cli_error(["figures", str(empty), "--device", "cpu"], "no finished epoch")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--hidden", "1000000000"], "would need about"),
    (["train", "--device", "cuda:1"], "cuda:1"),
    (["train", "--device", "gpu"], "unknown device"),
    (["train", "--beta", "inf"], "beta"),
    (["train", "--train-size", "1", "--dataset", "digits", "--epochs", "1"], None),
])
def test_impossible_sizes_and_devices(tmp_path, cli_error, argv, needle):
    if needle is None:  # one image is enough for a training split of one: it must train
        assert main([*argv, "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(tmp_path / "r")]) == 0
        return
    cli_error([*argv, "--out", str(tmp_path / "r")], needle)
    assert not (tmp_path / "r").exists()


def test_an_idx_training_split_of_one_image(tmp_path, cli_error, monkeypatch):
    import gzip
    import struct

    import numpy as np

    folder = tmp_path / "data"
    folder.mkdir()
    for split, n in [("train", 1), ("t10k", 5)]:
        images = np.random.default_rng(0).integers(0, 256, (n, 4, 4), dtype=np.uint8)
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 8, 3, n, 4, 4)
                                                                            + images.tobytes()))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">HBB1I", 0, 8, 1, n)
                                                                            + bytes(n)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    cli_error(["train", "--dataset", "kmnist", "--data-dir", str(folder), "--hidden", "8", "--z-dim", "2",
               "--out", str(tmp_path / "r")], "leave none to train on")


def test_classifier_files_that_are_not_classifiers(tmp_path, cli_error):
    run = pyro_vae.train(out=tmp_path / "c1", progress=False, epochs=1, model="cvae1", **SMALL)
    argv = ["evaluate", str(run), "--iw-samples", "2", "--examples", "10", "--quiet", "--device", "cpu"]
    cli_error([*argv, "--classifier", str(tmp_path)], "is not a file")
    partial = tmp_path / "partial.pt"
    torch.save({"format": "pyro-vae-classifier/1", "dataset": "digits", "net": {}}, partial)
    cli_error([*argv, "--classifier", str(partial)], "damaged reference classifier")


def test_resume_with_a_new_rate_keeps_the_original_and_records_the_change(run):
    original = json.loads((run / "config.json").read_text())
    pyro_vae.train(resume=run, epochs=3, lr=1e-4, clip_grad=50.0, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == original["lr"] and config["clip_grad"] is None
    assert config["changes"] == [{"epoch": 2, "lr": 1e-4, "clip_grad": 50.0}]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4  # and it trained with it
    pyro_vae.train(resume=run, epochs=4, lr=1e-4, progress=False)  # the same rate again: no new entry
    assert json.loads((run / "config.json").read_text())["changes"] == config["changes"]


def test_config_records_the_device_used(run):
    assert json.loads((run / "config.json").read_text())["device_used"] == "cpu"


@pytest.mark.parametrize("call, kind", [
    (lambda d: pyro_vae.fit(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), d, epochs=1, batch_size=0), BadValue),
    (lambda d: pyro_vae.importance_sampled(lambda x: None, lambda x: None, torch.zeros(2, 3), samples=0), BadValue),
    (lambda d: pyro_vae.evaluate_run("nowhere", iw_samples="5"), BadType),
    (lambda d: pyro_vae.build_model("vae", 64, z_dim="8"), BadType),
    (lambda d: pyro_vae.build_model("vae", 64, z_dim=0), BadValue),
])
def test_the_api_raises_value_and_type_errors_of_the_package(tiny_digits, call, kind):
    with pytest.raises(kind) as info:
        call(tiny_digits)
    assert isinstance(info.value, UserError)
    assert isinstance(info.value, TypeError if kind is BadType else ValueError)


def test_fit_on_an_empty_training_split(tiny_digits):
    import dataclasses

    empty = dataclasses.replace(tiny_digits, splits={**tiny_digits.splits,
                                                     "train": tuple(t[:0] for t in tiny_digits.splits["train"])})
    with pytest.raises(BadValue, match="training split is empty"):
        pyro_vae.fit(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), empty, epochs=1, batch_size=8)


# --- read-only and full file systems (a small tmpfs; needs root) ------------------------------------

def can_mount():
    return hasattr(os, "geteuid") and os.geteuid() == 0 and subprocess.run(
        ["mount", "--version"], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a tmpfs of that many bytes under tmp_path; remount(readonly=True)."""
    mounted = []

    def mount(size):
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmpfs, cli_error):
    disk = tmpfs("120k")  # room for config.json, not for a checkpoint
    cli_error(["train", *ARGS, "--epochs", "1", "--out", str(disk / "run")], "the disk is full")
    assert not [p for p in (disk / "run").iterdir() if p.name.startswith(".pyro-vae-tmp.")]


def test_a_read_only_run_is_refused_before_the_scoring(trained, tmpfs, cli_error):
    import shutil

    disk = tmpfs("4m")
    shutil.copytree(trained, disk / "run")
    before = hashes(disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    started = time.monotonic()
    cli_error(["evaluate", str(disk / "run"), "--iw-samples", "5000", "--quiet", "--device", "cpu"], "read-only")
    assert time.monotonic() - started < 20  # refused before K = 5000 on every test image
    cli_error(["sample", str(disk / "run"), "--device", "cpu"], "read-only")
    cli_error(["train", "--resume", str(disk / "run"), "--epochs", "3", "--quiet"], "read-only")
    assert hashes(disk / "run") == before


# --- the experiment scripts end as the CLI does ----------------------------------------------------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("script, args", [
    ("ae_vs_vae.py", []), ("m2.py", ["--name", "never-written"]), ("priors_guides.py", []), ("quadrants.py", []),
    ("density_fashion_mnist.py", ["--name", "never-written", "--setups", "normal", "--seeds", "1"]),
])
def test_an_experiment_script_reports_a_bad_value_in_one_line(tmp_path, script, args):
    """A user's mistake in a script's arguments ends as the CLI's do: one line naming the script,
    exit 2, no traceback, and nothing under experiments/results changed."""
    before = hashes(EXPERIMENTS / "results")
    out = ["--runs" if script == "quadrants.py" else "--out", str(tmp_path / "out")]
    child = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--dataset", "no-such-set", *out, *args],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert child.returncode == 2, child.stderr
    assert child.stderr.count("\n") == 1 and child.stderr.startswith(f"{script}: error: unknown data set"), child.stderr
    assert hashes(EXPERIMENTS / "results") == before


@pytest.mark.parametrize("script, args, needle", [
    ("density_fashion_mnist.py", ["--seeds", "-1"], "argument --seeds: must be a positive whole number"),
    ("density_fashion_mnist.py", ["--epochs", "0"], "argument --epochs: must be a positive whole number"),
    ("density_fashion_mnist.py", ["--first-seed", "5"], "--first-seed 5 leaves no seed"),
    ("m2.py", ["--iw-samples", "0"], "argument --iw-samples"), ("vae_fashion_mnist.py", ["--seed", "-1"], "0..2**32-1"),
    ("compile_modes.py", ["--epochs", "0"], "argument --epochs"), ("compile_modes.py", ["--epochs", "1"], "at least 2"), ("benchmark.py", ["--threads", "4096"], "the CPUs"),
    ("benchmark.py", ["--epochs", "1"], "at least 2"),
    ("density_fashion_mnist.py", ["--paired", "vamp"], "--paired takes two setups"),
    ("density_fashion_mnist.py", ["--paired", "vamp,nope"], "--paired takes two setups"),
])
def test_an_experiment_scripts_counts_are_checked_before_it_runs(tmp_path, script, args, needle):
    """`density_fashion_mnist.py --seeds -1` (or --epochs 0) ran no seed and then wrote the results
    table anew, 'last written by' that command; compile_modes.py --epochs 0 ended in IndexError. Now
    every count a script takes is checked as the CLI checks it: exit 2, results untouched."""
    before = hashes(EXPERIMENTS / "results")
    child = subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert child.returncode == 2 and "Traceback" not in child.stderr, child.stderr
    assert child.stderr.strip().splitlines()[-1].startswith(f"{script}: error: ") and needle in child.stderr
    assert hashes(EXPERIMENTS / "results") == before


def test_density_paired_differences_are_the_rows_differences_by_seed(tmp_path):
    """`--paired A,B` (the paired numbers density_fashion_mnist.md quotes) against the same
    differences taken by hand from the rows, with Student's t for the seeds both setups scored;
    nothing trained or written."""
    before = hashes(EXPERIMENTS / "results")
    rows = [json.loads(line) for line in (EXPERIMENTS / "results" / "density_fashion_mnist.jsonl").read_text().splitlines()]
    by = {(r.get("setup", r.get("prior")), r["seed"]): r for r in rows}
    seeds = sorted(s for (setup, s) in by if setup == "vamp-iwae" and ("vamp-elbo", s) in by)
    assert len(seeds) >= 3
    diffs = [by["vamp-iwae", s]["test_log_likelihood"] - by["vamp-elbo", s]["test_log_likelihood"] for s in seeds]
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    t = {3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571}[len(diffs)]  # Student's t, 97.5%, n - 1 degrees of freedom
    child = subprocess.run([sys.executable, str(EXPERIMENTS / "density_fashion_mnist.py"), "--paired", "vamp-iwae,vamp-elbo"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert child.returncode == 0, child.stderr
    line = next(x for x in child.stdout.splitlines() if "test_log_likelihood" in x)
    assert f"{mean:+.3f} +- {t * sd / len(diffs) ** 0.5:.3f}" in line, (line, mean)
    assert ", ".join(f"{d:+.3f}" for d in diffs) in line
    assert hashes(EXPERIMENTS / "results") == before and not list(tmp_path.iterdir())


def test_sigterm_ends_an_experiment_script_in_one_line_and_keeps_its_run(tmp_path):
    """A scheduler's SIGTERM in the middle of a sweep: status 143, one line naming the resume
    command, the run's checkpoint and metrics kept, nothing in the results changed."""
    before = hashes(EXPERIMENTS / "results")
    out = tmp_path / "runs"
    metrics = out / "normal-seed0" / "metrics.jsonl"
    code, err = sigterm_after_an_epoch([sys.executable, str(EXPERIMENTS / "density_fashion_mnist.py"), "--dataset",
                                        "digits", "--val-size", "0.2", "--setups", "normal", "--seeds", "1", "--epochs",
                                        "2000", "--out", str(out), "--name", "never-written"], metrics, wait=120,
                                       cwd=tmp_path)
    assert code == 143 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("density_fashion_mnist.py: terminated (SIGTERM)"), err
    assert f"--resume {out / 'normal-seed0'}" in err
    done = load_checkpoint(out / "normal-seed0" / "checkpoint.pt")["epoch"]
    assert done >= 1 and len(metrics.read_text().splitlines()) == done
    assert hashes(EXPERIMENTS / "results") == before


def test_a_bug_keeps_its_traceback_where_memory_and_mistakes_end_in_a_line(capsys):
    from pyro_vae.cli import ending
    with pytest.raises(RuntimeError, match="a bug"):
        ending(RuntimeError("a bug"), "x.py")  # out of memory's base class, not out of memory: raised again
    assert ending(torch.OutOfMemoryError("CUDA out of memory"), "x.py") == 2
    assert ending(UserError("bad\nvalue"), "x.py") == 2
    assert capsys.readouterr().err.splitlines() == [
        "x.py: error: out of memory (CUDA out of memory); try a smaller --batch-size, --hidden or --max-batch",
        "x.py: error: bad value"]
