"""Training improves the bound on real data; the CLI runs end to end; a seeded run repeats."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import build_model, elbo_per_example, fit, load_dataset, model_inputs
from pyro_vae.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")


def val_elbo(model, data):
    x, y = data.splits["val"]
    return elbo_per_example(model.model, model.guide, *model_inputs(model, x, y, data.n_classes),
                            particles=4).mean().item()


def test_training_on_digits_improves_the_validation_elbo(digits):
    pyro.set_rng_seed(0)
    model = build_model("vae", digits.x_dim, z_dim=8, hidden=64)
    before = val_elbo(model, digits)
    history = fit(model, digits, epochs=8, batch_size=64, progress=False)
    after = val_elbo(model, digits)
    assert before < -40  # an untrained decoder is near 64 * log 2 = 44 nats
    assert after > before + 12, (before, after)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]
    assert set(history[0]) == {"epoch", "train_elbo", "val_elbo", "seconds"}


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_training_on_a_fashion_mnist_subset_improves_the_validation_elbo():
    pyro.set_rng_seed(0)
    data = load_dataset("fashion-mnist", train_size=3000, val_size=0.02)
    model = build_model("vae", data.x_dim, z_dim=10, hidden=128)
    before = val_elbo(model, data)
    fit(model, data, epochs=3, batch_size=128, progress=False)
    after = val_elbo(model, data)
    assert before < -500  # about 784 * log 2 = 543 nats untrained
    assert after > before + 150, (before, after)


def test_cli_train_evaluate_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--hidden", "32", "--out", str(run), "--quiet"]) == 0
    assert f"run directory: {run}" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png",
                 "elbo.png", "latent.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "vae" and config["dataset"] == "digits" and config["hidden"] == 32
    assert config["z_dim"] == 8 and config["likelihood"] == "bernoulli"  # defaults written out
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(m["seconds"] > 0 and m["train_elbo"] < 0 for m in metrics)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3

    assert main(["evaluate", str(run), "--iw-samples", "64", "--quiet"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["iw_samples"] == 64 and 0 <= result["active_units"] <= 8
    assert result["test_log_likelihood"] >= result["test_elbo"]
    assert -64 < result["test_elbo"] < 0

    assert main(["sample", str(run), "--n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_conditional_run_samples_one_labelled_row_per_class(tmp_path):
    run = tmp_path / "cvae"
    assert main(["train", "--model", "cvae1", "--epochs", "2", "--hidden", "32", "--out", str(run), "--quiet"]) == 0
    assert main(["sample", str(run), "--label", "3", "--n", "10", "--out", str(tmp_path / "three.png")]) == 0
    assert (tmp_path / "three.png").is_file()


def test_same_seed_same_run_on_cpu(tmp_path):
    for name in ("a", "b"):
        main(["train", "--epochs", "2", "--hidden", "16", "--seed", "7", "--out", str(tmp_path / name), "--quiet"])
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for name in ("a", "b") for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert strip[:2] == strip[2:]
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["model"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, cli_error):
    err = cli_error(["train", "--dataset", "kmnist", "--data-dir", str(tmp_path), "--quiet"])  # one line, exit 2
    assert err.startswith("pyro-vae: error: kmnist: train split not found")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_console_script_help_lists_every_option_with_its_default():
    out = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    out = " ".join(out.split())  # argparse wraps lines
    for option in ("--model", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr", "--z-dim",
                   "--device", "--seed", "--out"):
        assert option in out
    assert "(default: None)" not in out
    assert "(default: vae)" in out and "(default: 0.001)" in out and "(default: auto)" in out
    out = subprocess.run([sys.executable, "-m", "pyro_vae", "evaluate", "--help"], capture_output=True,
                         text=True, check=True).stdout
    out = " ".join(out.split())
    assert "--iw-samples" in out and "(default: 5000)" in out


def test_every_subcommand_shows_the_default_of_every_option_that_has_one():
    from pyro_vae.cli import parser

    commands = parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"train", "evaluate", "sample", "figures", "quadrants", "download"}
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.default not in (None, False, "==SUPPRESS==") and action.option_strings != ["-h", "--help"]:
                assert f"(default: {action.default})" in text, (name, action.option_strings, action.default)
        assert "(default: None)" not in text, name


def test_evaluate_shows_progress_lines_when_output_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--train-size", "64", "--quiet",
                 "--out", str(run)]) == 0
    capsys.readouterr()

    def tenths():
        assert main(["evaluate", str(run), "--iw-samples", "20", "--max-batch", "200"]) == 0  # 10 examples a chunk
        err = capsys.readouterr().err  # captured: not a terminal
        return [line for line in err.splitlines() if line.startswith("log-likelihood (K=20): ")]

    assert tenths() == []  # an evaluation of under a second: no lines (estimators.QUIET_SECONDS)
    monkeypatch.setattr("pyro_vae.estimators.QUIET_SECONDS", 0.0)
    lines = tenths()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(10 * k) for k in range(1, 11)]
    assert "s left" in lines[0]


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    """`pyro-vae --help` and a mistyped option answer without importing the library (seconds of torch):
    the first call reads the option lists off the classes and caches them per source hash."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import sys; from pyro_vae.cli import main; status = main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)")
    first = subprocess.run([sys.executable, "-c", code, "train", "--help"], env=env, capture_output=True, text=True)
    assert "--patience" in first.stdout and first.stdout.strip().endswith("TORCH 0")  # computed, then cached
    assert list((tmp_path / "cache" / "pyro-vae").glob("cli-*.json"))
    for argv, status in [(["--help"], 0), (["--version"], 0), (["train", "--help"], 0), (["compare", "--help"], 0),
                         (["train", "--modle", "vae"], 2), (["train", "--model", "cvae9"], 2)]:
        done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
        assert done.stdout.strip().endswith(f"NO-TORCH {status}"), (argv, done.stdout[-200:], done.stderr[-300:])
    from importlib.metadata import version
    shown = subprocess.run([sys.executable, "-m", "pyro_vae", "--version"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.strip() == f"pyro-vae {version('pyro-vae')}"
    # the help is the same as the one read live from the classes
    live = subprocess.run([sys.executable, "-c", "import pyro_vae.runs, sys; from pyro_vae.cli import main; "
                           "main(['train', '--help'])"], env=env, capture_output=True, text=True).stdout
    assert live == first.stdout.rsplit("TORCH", 1)[0]


def test_a_damaged_help_cache_is_computed_again(tmp_path):
    """The option lists' cache file holding other JSON (`{}`, a list, another source's facts) or no
    JSON is read as missing: the help is computed again, the same, and the file written anew."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import sys; from pyro_vae.cli import main; status = main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)")
    first = subprocess.run([sys.executable, "-c", code, "train", "--help"], env=env, capture_output=True, text=True)
    [cache] = (tmp_path / "cache" / "pyro-vae").glob("cli-*.json")
    good = cache.read_bytes()
    other = json.dumps({"source": "0" * 64, "facts": {}})
    for damage in ["{}", "[1, 2]", "null", '{"source": 1}', other, good.decode()[:100], ""]:
        cache.write_text(damage)
        done = subprocess.run([sys.executable, "-c", code, "train", "--help"], env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0 and done.stdout == first.stdout, (damage, done.stderr[-300:])
        assert cache.read_bytes() == good
        again = subprocess.run([sys.executable, "-c", code, "train", "--modle"], env=env, capture_output=True,
                               text=True)
        assert again.stdout.strip().endswith("NO-TORCH 2") and "--modle" in again.stderr


def test_a_collapsed_posterior_is_flagged_by_train_and_evaluate(tmp_path, capsys):
    """beta 200 pulls every q(z|x) onto the prior: no unit is active, and both commands say what to try."""
    from pyro_vae.runs.training import collapse_note

    assert collapse_note(0) and collapse_note(3, rate=0.05) and collapse_note(3, rate=2.0) is None
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "3", "--train-size", "256", "--beta", "200",
                 "--z-dim", "2", "--hidden", "16", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "warning: posterior collapse (0 active latent units of 2, on the validation split)" in err
    assert "--warmup-epochs" in err
    assert main(["evaluate", str(run), "--iw-samples", "5", "--examples", "50"]) == 0
    out = capsys.readouterr()
    assert "warning: posterior collapse (0 active latent units" in out.err
    assert "over 50 test examples, 0 active units (weights of epoch 3" in out.out
    # more examples than the test split has: the line says how many were scored (digits: 359)
    assert main(["evaluate", str(run), "--iw-samples", "2", "--examples", "100000", "--quiet"]) == 0
    assert "over 359 test examples" in capsys.readouterr().out
    assert "posterior collapse" in json.loads((run / "eval.json").read_text())["collapse"]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import pyro_vae
    import pyro_vae.runs.store as store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(store.time, "strftime", lambda fmt, *a: "20261201-120000")  # one second for all
    settings = dict(model="vae", dataset="digits", train_size=64, batch_size=32, z_dim=2, hidden=8, epochs=1,
                    progress=False)
    first, second = pyro_vae.train(**settings), pyro_vae.train(**settings)
    assert first != second and second.name == first.name + "-2"
    assert (first / "checkpoint.pt").is_file() and (second / "checkpoint.pt").is_file()


def test_a_file_where_the_runs_folder_goes_is_one_line(tmp_path, monkeypatch, capsys):
    from pyro_vae.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--train-size", "64", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs" in err and "is a file" in err
    assert (tmp_path / "runs").read_text() == "not a folder"


def flushed():
    """Whether the CPU flushes a denormal result to zero now (1e-30 / 1e10 is one; the inputs are
    normal numbers, so nothing is flushed before the division), on this thread and on torch's other
    threads: a division of 4M numbers is split between them (with 2 threads, one unflushed thread
    leaves half of the results nonzero)."""
    zero = torch.full((1 << 22,), 1e-30) / 1e10 == 0
    assert zero.all() or not zero.any(), f"{zero.float().mean():.2f} of the results flushed: some threads only"
    return bool(zero.all())


def test_training_flushes_denormals_and_puts_torchs_default_back(tiny_digits, make_model, monkeypatch, request):
    from pyro_vae import Trainer
    from pyro_vae.nets import flush_denormals
    from pyro_vae.svi import Callback
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the flag is each thread's own: the pool's threads must be set too
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    seen = []

    class Look(Callback):
        def on_step_end(self, trainer, epoch, step, steps):
            seen.append(flushed())

    assert not flushed()
    Trainer(make_model("vae", tiny_digits)).run(tiny_digits, 1, 16, [Look()])
    assert seen and all(seen) and not flushed()  # on in every step, off again after
    with flush_denormals():  # blocks nest: the inner one's end leaves the outer's setting on
        with flush_denormals():
            assert flushed()
        assert flushed()
    assert not flushed()
    with pytest.raises(ZeroDivisionError):  # an exception inside the run turns it off too
        Trainer(make_model("vae", tiny_digits)).run(tiny_digits, 1, 16, [type("Boom", (Callback,), {
            "on_step_end": lambda self, *a: 1 / 0})()])
    assert not flushed()
    seen.clear()
    monkeypatch.setenv("PYRO_VAE_FLUSH_DENORMALS", "0")  # the way out: torch's setting left alone
    Trainer(make_model("vae", tiny_digits)).run(tiny_digits, 1, 16, [Look()])
    assert seen and not any(seen)
