"""Model selection: early stopping on the validation ELBO stops at the right epoch on a scripted
curve, the best epoch's weights (best.pt) are the ones evaluated, and a resume after an early stop
trains no further unless asked; the plateau schedule and a validation split given as a count."""

import json

import pytest
import torch

import pyro_vae
from pyro_vae import svi
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
