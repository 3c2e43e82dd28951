"""Model selection: early stopping on the validation ELBO stops at the right epoch on a scripted
curve, the best epoch's weights (best.pt) are the ones evaluated, and a resume after an early stop
trains no further unless asked; the plateau schedule and a validation split given as a count."""

import copy
import json

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae import svi
from pyro_vae.objectives import make_elbo
from pyro_vae.runs.store import load_checkpoint
from pyro_vae.runs.training import ModelSelection
from pyro_vae.runs.config import Config

SMALL = dict(dataset="digits", train_size=64, batch_size=32, z_dim=2, hidden=8)
CURVE = [-50.0, -40.0, -42.0, -35.0, -36.0, -37.0, -38.0, -30.0, -31.0]  # best at 4 then 8


@pytest.fixture
def scripted_validation(monkeypatch):
    """The validation ELBO of epoch k is CURVE[k-1] (training itself is real)."""
    calls = {"n": 0}
    real = svi.elbo_per_example

    def scripted(model, guide, *args, **kwargs):
        out = real(model, guide, *args, **kwargs)
        value = CURVE[min(calls["n"], len(CURVE) - 1)]
        calls["n"] += 1
        return torch.full_like(out, value)

    monkeypatch.setattr(svi, "elbo_per_example", scripted)
    return calls


def test_early_stopping_stops_at_the_right_epoch_and_evaluates_the_best(tmp_path, scripted_validation):
    run = pyro_vae.train(model="vae", epochs=9, patience=3, out=tmp_path / "run", progress=False, **SMALL)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # best at epoch 4 (-35); epochs 5, 6, 7 are not better: stop after epoch 7, before the later best at 8
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6, 7]
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "checkpoint.pt")
    assert (best["epoch"], last["epoch"]) == (4, 7)
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False)
    assert (result["checkpoint"], result["checkpoint_epoch"]) == ("best.pt", 4)
    model, _, _ = pyro_vae.load_run(run)
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())  # the weights scored
    assert pyro_vae.evaluate_run(run, iw_samples=5, progress=False, checkpoint="last")["checkpoint_epoch"] == 7
    # a resume after the early stop trains nothing...
    before = (run / "checkpoint.pt").read_bytes()
    pyro_vae.train(resume=run, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    # ...unless asked for more epochs: patience counts from there (curve: -30 at the next epoch is a new best)
    scripted_validation["n"] = 7
    pyro_vae.train(resume=run, epochs=9, progress=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 10))
    assert load_checkpoint(run / "best.pt")["epoch"] == 8
    # the restart of patience is recorded, so a later plain resume counts from there too
    changes = json.loads((run / "config.json").read_text())["changes"]
    assert {"epoch": 7, "patience_from": 7} in changes
    assert ModelSelection(None, pyro_vae.runs.read_config(run)).since == 7


def test_the_decisions_replayed_from_a_history():
    config = Config(patience=3, lr_schedule="plateau", lr=1e-3)
    selection = ModelSelection(None, config)
    assert selection.since == 0
    history = [{"epoch": k + 1, "val_elbo": v} for k, v in enumerate(CURVE)]
    assert selection.replay(history[:7])[:3] == (4, -35.0, 3)
    assert selection.stopped(history[:7]) and not selection.stopped(history[:6])
    flat = [{"epoch": k + 1, "val_elbo": -1.0 - k} for k in range(25)]  # never better after epoch 1
    assert ModelSelection(None, config).replay(flat)[3] == 0.25  # halved after 10 and after 20 bad epochs


def test_plateau_schedule_lowers_the_rate_and_a_resume_sees_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(svi, "elbo_per_example", lambda *a, **k: torch.full((1,), -10.0))  # never improves
    run = pyro_vae.train(model="vae", epochs=11, lr_schedule="plateau", out=tmp_path / "run", progress=False, **SMALL)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)  # 10 bad epochs after the first
    assert not (run / "best.pt").exists()  # best.pt is kept with --patience only


def test_validation_split_as_a_count(tmp_path):
    data = pyro_vae.load_dataset("digits", val_size=100)
    assert len(data.splits["val"][0]) == 100
    with pytest.raises(pyro_vae.UserError, match="a share in \\(0, 1\\) or a whole number"):
        pyro_vae.load_dataset("digits", val_size=1.5)
    with pytest.raises(pyro_vae.UserError, match="has only"):
        pyro_vae.load_dataset("digits", val_size=5000)
    run = pyro_vae.train(model="vae", epochs=1, val_size=200, out=tmp_path / "run", progress=False,
                         **{k: v for k, v in SMALL.items()})
    assert json.loads((run / "data.json").read_text())["examples"]["val"] == 200


def test_tensorboard_event_files_hold_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pyro_vae.runs import training

    run = pyro_vae.train(model="cvae1", epochs=3, out=tmp_path / "run", progress=False, **SMALL)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(e.step, e.value) for e in events.Scalars("val_elbo")]
    assert logged == [(m["epoch"], pytest.approx(m["val_elbo"], rel=1e-6)) for m in metrics]
    assert events.Tags()["images"] == ["samples"]
    # --overwrite replaces a run with its event files; a foreign file among them keeps the run
    pyro_vae.train(model="vae", epochs=1, out=run, overwrite=True, progress=False, tensorboard="off", **SMALL)
    assert not (run / "tensorboard").exists()
    # without the package (or with tensorboard off) there are no event files, and nothing else changes
    monkeypatch.setattr(training, "tensorboard_available", lambda: False)
    other = pyro_vae.train(model="vae", epochs=1, out=tmp_path / "other", progress=False, **SMALL)
    assert not (other / "tensorboard").exists()


def test_overwrite_refuses_a_tensorboard_folder_with_foreign_files(tmp_path, cli_error):
    pytest.importorskip("tensorboard")
    run = pyro_vae.train(model="vae", epochs=1, out=tmp_path / "run", progress=False, **SMALL)
    (run / "tensorboard" / "my-notes.txt").write_text("mine")
    cli_error(["train", "--dataset", "digits", "--epochs", "1", "--out", str(run), "--overwrite"],
              "also holds others (tensorboard)")
    assert (run / "tensorboard" / "my-notes.txt").read_text() == "mine"


def test_selection_on_the_validation_iwae_bound(tmp_path, monkeypatch):
    """--select-on bound: patience and best.pt follow the validation IWAE bound (scripted as CURVE),
    not the validation ELBO (scripted to improve every epoch)."""
    calls = {"bound": 0, "elbo": 0}
    real_bound, real_elbo = svi.importance_sampled, svi.elbo_per_example

    def bound(model, guide, *args, samples, **kwargs):
        assert samples == 3  # the training objective's K
        log_lik, elbo = real_bound(model, guide, *args, samples=samples, **kwargs)
        calls["bound"] += 1
        return torch.full_like(log_lik, CURVE[calls["bound"] - 1]), elbo

    def elbo(*args, **kwargs):
        calls["elbo"] += 1
        return torch.full_like(real_elbo(*args, **kwargs), -100.0 + calls["elbo"])

    monkeypatch.setattr(svi, "importance_sampled", bound)
    monkeypatch.setattr(svi, "elbo_per_example", elbo)
    run = pyro_vae.train(model="vae", epochs=9, patience=3, elbo="iwae", particles=3, select_on="bound",
                         out=tmp_path / "run", progress=False, **SMALL)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_bound"] for m in metrics] == CURVE[:7]  # stopped after epoch 7, as on the ELBO's CURVE
    assert load_checkpoint(run / "best.pt")["epoch"] == 4
    assert pyro_vae.evaluate_run(run, iw_samples=5, progress=False)["checkpoint_epoch"] == 4
    # the same run selecting on its (ever better) ELBO keeps its last epoch
    calls.update(bound=0, elbo=0)
    other = pyro_vae.train(model="vae", epochs=9, patience=3, elbo="iwae", particles=3, out=tmp_path / "other",
                           progress=False, **SMALL)
    assert load_checkpoint(other / "best.pt")["epoch"] == 9
    with pytest.raises(pyro_vae.UserError, match="--select-on bound reads the validation IWAE bound of --elbo iwae"):
        pyro_vae.train(model="vae", epochs=1, select_on="bound", out=tmp_path / "no", progress=False, **SMALL)
    with pytest.raises(pyro_vae.UserError, match="select_on"):
        pyro_vae.train(model="vae", epochs=1, select_on="test", out=tmp_path / "no", progress=False, **SMALL)


def test_the_validation_iwae_bound_is_above_the_elbo():
    """The bound a run records is the IWAE bound: with K = 20 it lies above the one-draw ELBO of the
    same images by more than their noise (Burda et al.: the bound grows with K; here by 0.3-0.9 nats,
    the one-draw ELBO's mean over 500 images has a noise of about 0.1)."""
    pyro.set_rng_seed(0)
    trainer = svi.Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), make_elbo("iwae", 20))
    data = pyro_vae.load_dataset("digits", train_size=64, val_size=500)
    metrics = trainer.run(data, epochs=2, batch_size=32)
    assert all(m["val_bound"] > m["val_elbo"] + 0.2 for m in metrics)


def test_init_from_starts_from_another_runs_best_weights(tmp_path, monkeypatch, capsys, cli_error):
    source = pyro_vae.train(model="vae", epochs=4, patience=5, out=tmp_path / "source", progress=False, **SMALL)
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    best = load_checkpoint(source / "best.pt")
    started = {}
    real_run = svi.Trainer.run

    def run(trainer, *args, **kwargs):
        started.setdefault("weights", {k: v.clone() for k, v in trainer.model.state_dict().items()})
        started.setdefault("epoch", trainer.epoch)
        started.setdefault("adam", copy.deepcopy(trainer.optimizer.state_dict()))  # training updates it in place
        return real_run(trainer, *args, **kwargs)

    monkeypatch.setattr(svi.Trainer, "run", run)
    tuned = pyro_vae.train(model="vae", epochs=2, elbo="iwae", particles=2, select_on="bound", patience=5, lr=3e-4,
                           init_from=str(source), out=tmp_path / "tuned", **SMALL)
    assert (f"starting from the weights and Adam's moments of epoch {best['epoch']} in "
            f"{source.resolve() / 'best.pt'}") in capsys.readouterr().out
    assert started["epoch"] == 0
    assert all(torch.equal(v, best["model"][k]) for k, v in started["weights"].items())
    # Adam goes on from the source's moments, at this run's learning rate
    assert started["adam"]["param_groups"][0]["lr"] == 3e-4
    saved = best["optimizer"]["state"]
    assert len(saved) == len(started["adam"]["state"]) > 0 and all(
        torch.equal(entry[k], saved[i][k]) for i, entry in started["adam"]["state"].items() for k in entry)
    assert json.loads((tuned / "config.json").read_text())["init_from"] == str(source.resolve() / "best.pt")
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == before  # the source untouched
    # a resume continues from the run's own checkpoint: the source is not read again (here: gone)
    for p in source.iterdir():
        if p.is_file():
            p.unlink()
    started.clear()
    pyro_vae.train(resume=tuned, epochs=3, progress=False)
    assert started["epoch"] == 2
    # refused, in one line, before anything is written: a missing source, another architecture, other part settings
    cli_error(["train", "--dataset", "digits", "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")],
              "--init-from", "no such run directory or checkpoint file")
    other = pyro_vae.train(model="vae", epochs=1, out=tmp_path / "other", progress=False, **SMALL)
    cli_error(["train", "--dataset", "digits", "--train-size", "64", "--z-dim", "3", "--hidden", "8", "--init-from",
               str(other), "--out", str(tmp_path / "b")], "--init-from", "z_dim 2")
    vamp = pyro_vae.train(model="vae", epochs=1, prior="vamp", out=tmp_path / "vamp", progress=False, **SMALL)
    cli_error(["train", "--dataset", "digits", "--train-size", "64", "--z-dim", "2", "--hidden", "8", "--prior", "vamp",
               "--prior-arg", "pixels=hardtanh", "--init-from", str(vamp), "--out", str(tmp_path / "c")],
              "--init-from", "part settings")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((other / "checkpoint.pt").read_bytes()[:5000])  # a copy cut short
    cli_error(["train", "--dataset", "digits", "--train-size", "64", "--z-dim", "2", "--hidden", "8", "--init-from",
               str(damaged), "--out", str(tmp_path / "d")], "--init-from", "not a loadable pyro-vae checkpoint")
    assert not any((tmp_path / name).exists() for name in "abcd")
