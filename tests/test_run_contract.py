"""What the reshaped layers promise: a run directory written before the change still evaluates,
samples and resumes to the same numbers; parts of your own go through the whole run machinery
by import path; the model contract and the models' defaults are read from the classes; training
is a Trainer with callbacks, and a divergence is found from numbers, not from error wording."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import Callback, ModelContract, Trainer, UserError
from pyro_vae.cli import main, parser
from pyro_vae.errors import Diverged
from pyro_vae.models import MODELS
from pyro_vae.runs import Config, load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
USERPKG = Path(__file__).parent / "userpkg"
SMALL = dict(dataset="digits", hidden=16, z_dim=2, train_size=128, batch_size=32, epochs=1, device="cpu")


# --- a run directory from before the change (pyro-vae 0.1.0, commit 8989ee9) --------------------

@pytest.mark.parametrize("name", ["run-0.1-vae", "run-0.1-cvae1"])
def test_a_run_written_before_the_change_evaluates_samples_and_resumes_the_same(tmp_path, name):
    expected = json.loads((FIXTURES / "before-0.1.json").read_text())[name]
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    pyro.set_rng_seed(0)
    result = pyro_vae.evaluate_run(run, iw_samples=50, device="cpu", progress=False, examples=100,
                                   fidelity_samples=0)
    assert result["test_elbo"] == pytest.approx(expected["test_elbo"], rel=1e-5)
    assert result["test_log_likelihood"] == pytest.approx(expected["test_log_likelihood"], rel=1e-5)
    assert pyro_vae.sample_run(run, n=4, device="cpu").is_file()
    pyro_vae.train(resume=run, epochs=3, progress=False)
    state = load_checkpoint(run / "checkpoint.pt")
    weights = torch.cat([v.flatten() for _, v in sorted(state["model"].items())]).double().sum().item()
    assert weights == pytest.approx(expected["resumed_weights_sum"], rel=1e-5)
    last = json.loads(state["history"])[-1]
    for key in ("epoch", "train_elbo", "val_elbo"):
        assert last[key] == pytest.approx(expected["resumed_metrics"][key], rel=1e-5), key


# --- parts of your own, by import path ------------------------------------------------------------

@pytest.fixture
def my_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(USERPKG))
    import my_parts

    return my_parts


def test_own_parts_train_evaluate_sample_and_resume_by_import_path(tmp_path, my_parts):
    run = pyro_vae.train(out=tmp_path / "run", progress=False, prior=my_parts.LaplacePrior,
                         guide=my_parts.StudentTGuide, likelihood=my_parts.two_layer_bernoulli, **SMALL)
    config = json.loads((run / "config.json").read_text())
    assert (config["prior"], config["guide"], config["likelihood"]) == (
        "my_parts:LaplacePrior", "my_parts:StudentTGuide", "my_parts:two_layer_bernoulli")
    model, _, _ = pyro_vae.load_run(run, "cpu")
    assert isinstance(model.prior, my_parts.LaplacePrior) and isinstance(model.encoder, my_parts.StudentTGuide)
    assert len(model.decoder.net) == 5  # two hidden layers: the user's likelihood was rebuilt, not a default
    result = pyro_vae.evaluate_run(run, iw_samples=8, device="cpu", progress=False, examples=50)
    assert result["test_log_likelihood"] >= result["test_elbo"]
    assert pyro_vae.sample_run(run, n=4, device="cpu").is_file()
    pyro_vae.train(resume=run, epochs=2, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_a_run_with_own_parts_from_another_process(tmp_path, my_parts):
    run = pyro_vae.train(out=tmp_path / "run", progress=False, prior=my_parts.LaplacePrior, **SMALL)
    command = [sys.executable, "-m", "pyro_vae", "evaluate", str(run), "--iw-samples", "4", "--examples", "20",
               "--quiet", "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run(command, env={**env, "PYTHONPATH": str(USERPKG)}, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(command, env=env, capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "cannot import 'my_parts:LaplacePrior'" in missing.stderr


def test_parts_that_cannot_be_recorded_are_refused_before_anything_is_written(tmp_path, my_parts):
    class LocalPrior(my_parts.LaplacePrior):
        pass

    for prior, needle in [(LocalPrior, "defined in __main__ or inside a function"),
                          (my_parts.LaplacePrior(z_dim=2), "not a built module"),
                          ("my_parts:Nowhere", "cannot import 'my_parts:Nowhere'"),
                          ("no_such_module:Prior", "cannot import 'no_such_module:Prior'"),
                          (42, "prior must be a string or null, got 42")]:
        with pytest.raises(UserError, match=needle):
            pyro_vae.train(out=tmp_path / "run", progress=False, prior=prior, **SMALL)
        assert not (tmp_path / "run").exists()


# --- the model contract and the facts read off the classes ----------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_meets_the_contract(name):
    model = pyro_vae.build_model(name, 64, 10, z_dim=2, hidden=8)
    assert isinstance(model, ModelContract)
    assert model.conditional == ("y" in type(model).guide_input)
    config = Config(model=name).resolved()
    assert (config.prior, config.guide, config.likelihood) == tuple(MODELS[name].defaults[k]
                                                                    for k in ("prior", "guide", "likelihood"))


def test_the_cli_help_reads_the_defaults_from_the_model_classes(monkeypatch):
    def prior_help():
        train = next(a for a in parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
        return next(a.help for a in train._actions if "--prior" in a.option_strings)

    assert "conditional for cvae1/cvae3/cvae4" in prior_help()
    monkeypatch.setattr(MODELS["cvae2"], "defaults", {**MODELS["cvae2"].defaults, "prior": "conditional"})
    moved = prior_help()  # cvae2 moved to the conditional group, however the help words the majority
    assert "conditional for cvae1/cvae2/cvae3/cvae4" in moved or (
        "conditional otherwise" in moved and "cvae2" not in moved.split("normal for")[1].split(";")[0]), moved
    assert Config(model="cvae2").resolved().prior == "conditional"


# --- the Trainer ------------------------------------------------------------------------------------

class Record(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer, epochs, steps):
        self.calls.append(("start", epochs, steps))

    def on_step_end(self, trainer, epoch, step, steps):
        self.calls.append(("step", epoch, step))

    def on_epoch_end(self, trainer, metrics):
        self.calls.append(("epoch", metrics["epoch"], trainer.epoch))

    def on_train_end(self, trainer):
        self.calls.append(("end",))


def test_trainer_calls_its_callbacks_in_order_and_continues_from_its_state(tiny_digits):
    model = pyro_vae.build_model("vae", tiny_digits.x_dim, z_dim=2, hidden=8)
    trainer, record = Trainer(model), Record()
    trainer.run(tiny_digits, epochs=2, batch_size=16, callbacks=[record])
    assert record.calls == [("start", 2, 2), ("step", 1, 0), ("step", 1, 1), ("epoch", 1, 1),
                            ("step", 2, 0), ("step", 2, 1), ("epoch", 2, 2), ("end",)]
    trainer.run(tiny_digits, epochs=3, batch_size=16)  # continues: only epoch 3 is trained
    assert [m["epoch"] for m in trainer.history] == [1, 2, 3]


class RaisingGuide(nn.Module):
    """A guide with a bug: it raises ValueError for a reason that has nothing to do with numbers."""

    def __init__(self, *, in_dim, z_dim, net):
        super().__init__()
        self.net = nn.Linear(in_dim, 2 * z_dim)

    def forward(self, h):
        raise ValueError("found invalid values in my own bookkeeping")  # torch's wording, on purpose


def test_a_bug_that_raises_is_not_called_a_divergence(tiny_digits):
    model = pyro_vae.build_model("vae", tiny_digits.x_dim, z_dim=2, hidden=8, guide=RaisingGuide)
    with pytest.raises(ValueError, match="my own bookkeeping"):
        pyro_vae.fit(model, tiny_digits, epochs=1, batch_size=16, progress=False)


def test_nan_weights_are_a_divergence_found_from_the_numbers(tiny_digits):
    model = pyro_vae.build_model("vae", tiny_digits.x_dim, z_dim=2, hidden=8)
    with torch.no_grad():
        model.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match=r"epoch 1, step 1 of 2"):  # validation is on at the first step
        pyro_vae.fit(model, tiny_digits, epochs=1, batch_size=16, progress=False)


@pytest.mark.parametrize("bad_losses, bad_norms, first", [
    ({3: float("nan")}, {}, 4),  # a loss: named by its step, counted from 1
    ({4: float("inf")}, {1: float("inf")}, 2),  # a gradient norm, before a bad loss: the earlier
    ({0: float("-inf"), 5: float("nan")}, {}, 1),
    ({}, {5: float("nan")}, 6),  # the epoch's last step
])
def test_the_first_step_whose_loss_or_gradient_norm_was_not_finite_is_named(bad_losses, bad_norms, first):
    """Each step's loss and clipped gradient norm stay on the device and are checked once, at the
    epoch's end; the step named is the first bad one, whichever of the two it was."""
    data = pyro_vae.load_dataset("digits", train_size=96)  # 6 steps of 16
    trainer = Trainer(pyro_vae.build_model("vae", data.x_dim, z_dim=2, hidden=8), clip_grad=10.0)
    real, seen = trainer._step, []

    def step(args, validate):
        loss, norm = real(args, validate)
        i = len(seen)
        seen.append(i)
        return (torch.tensor(bad_losses.get(i, loss.item())), torch.tensor(bad_norms.get(i, norm.item())))

    trainer._step = step
    with pytest.raises(Diverged, match=rf"epoch 1, step {first} of 6$"):
        trainer.run(data, 1, 16)
    assert len(seen) == 6  # no host read stopped the epoch early: the check is at its end


def test_the_epoch_elbo_is_the_sum_of_its_step_losses():
    data = pyro_vae.load_dataset("digits", train_size=96)
    trainer = Trainer(pyro_vae.build_model("cvae2", data.x_dim, data.n_classes, z_dim=2, hidden=8))
    real, losses = trainer._step, []

    def step(args, validate):
        assert len(args) == 2 and args[1].shape == (16, data.n_classes)  # the labels, one-hot, for a cvae
        loss, norm = real(args, validate)
        losses.append(loss.item())
        assert norm is None  # no clipping asked for
        return loss, norm

    trainer._step = step
    seen = []
    trainer.run(data, 1, 16, callbacks=[type("Peek", (Callback,), {
        "on_step_end": lambda self, t, epoch, i, steps: seen.append(t.epoch_loss.item())})()])
    assert trainer.history[-1]["train_elbo"] == pytest.approx(-sum(losses) / 96, rel=1e-6)
    assert seen == pytest.approx([sum(losses[:i + 1]) for i in range(6)], rel=1e-6)  # the running sum


def test_cli_refuses_a_run_whose_part_no_longer_imports(tmp_path, my_parts, capsys):
    run = pyro_vae.train(out=tmp_path / "run", progress=False, prior=my_parts.LaplacePrior, **SMALL)
    config = json.loads((run / "config.json").read_text())
    config["prior"] = "my_parts:Renamed"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import 'my_parts:Renamed'" in err


def test_the_cli_takes_a_part_of_your_own_by_import_path(tmp_path, my_parts, capsys):
    run = tmp_path / "run"
    assert main(["train", "--prior", "my_parts:LaplacePrior", "--hidden", "16", "--z-dim", "2", "--train-size",
                 "64", "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["prior"] == "my_parts:LaplacePrior"
    assert main(["train", "--prior", "nope", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown prior 'nope'" in err and "MODULE:NAME" in err
