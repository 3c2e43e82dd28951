"""Exact resume, crash safety (SIGKILL, Ctrl-C) and divergence. Small runs on `digits`, CPU only."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch

from pyro_vae import train
from pyro_vae.cli import main
from pyro_vae.errors import Diverged
from pyro_vae.runs import load_checkpoint

SMALL = dict(dataset="digits", hidden=16, z_dim=2, train_size=200, batch_size=32, device="cpu")
SMALL_ARGS = ["--dataset", "digits", "--hidden", "16", "--z-dim", "2", "--train-size", "200",
              "--batch-size", "32", "--device", "cpu", "--quiet"]


def assert_same_state(a, b):
    """Two checkpoints hold bitwise the same weights, optimizer state and random generators."""
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    strip = lambda h: [{k: v for k, v in m.items() if k != "seconds"} for m in json.loads(h)]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


@pytest.mark.parametrize("model", ["cvae1"])
def test_resume_is_exact(tmp_path, model):
    train(out=tmp_path / "straight", progress=False, epochs=4, model=model, **SMALL)
    train(out=tmp_path / "resumed", progress=False, epochs=2, model=model, **SMALL)
    pyro.set_rng_seed(123)  # whatever the generators hold now must not matter
    train(resume=tmp_path / "resumed", epochs=4, progress=False)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert_same_state(straight, resumed)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resume_from_the_cli(tmp_path, capsys, cli_error):
    run = str(tmp_path / "run")
    assert main(["train", *SMALL_ARGS, "--epochs", "1", "--out", run]) == 0
    assert main(["train", "--resume", run, "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
    assert main(["train", "--resume", run, "--epochs", "1"]) == 2  # --epochs is the new total
    assert "already has 2 epochs" in capsys.readouterr().err
    # a setting that would make it another run is refused
    cli_error(["train", "--resume", run, "--z-dim", "3"], "--resume", "--z-dim")


def child_train(out, epochs, *extra):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *SMALL_ARGS, "--epochs", str(epochs),
                             "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(ready, timeout=60):
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.02)


def forked_train(out, epochs):
    """A training process forked from this one (no second start-up of torch and pyro)."""
    import multiprocessing

    def run():
        torch.set_num_threads(1)
        os._exit(main(["train", *SMALL_ARGS, "--epochs", str(epochs), "--out", str(out)]))

    child = multiprocessing.get_context("fork").Process(target=run)
    child.start()
    return child


def test_sigkill_at_random_moments_leaves_a_checkpoint_that_resumes(tmp_path):
    rng = random.Random(0)
    for attempt in range(4):
        out = tmp_path / f"run{attempt}"
        child = forked_train(out, 1000)
        # anywhere: before the first checkpoint, mid-epoch, mid-write of a checkpoint
        time.sleep(rng.uniform(0.0, 2.0))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        if not (out / "config.json").exists():
            continue  # killed before the run directory existed: nothing to resume
        done = load_checkpoint(out / "checkpoint.pt")["epoch"] if (out / "checkpoint.pt").exists() else 0
        train(resume=out, epochs=done + 1, progress=False)
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == done + 1
        assert len((out / "metrics.jsonl").read_text().splitlines()) == done + 1
        assert not list(out.glob(".pyro-vae-tmp.*")) and not list(out.glob(".*.tmp"))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    child = child_train(out, 500)
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().strip())  # at least one epoch done
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pyro-vae: interrupted after epoch") and "--resume" in last
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert f"after epoch {done} " in last
    train(resume=out, epochs=done + 1, progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == done + 1


def test_absurd_learning_rate_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, cli_error):
    run = str(tmp_path / "run")
    assert main(["train", *SMALL_ARGS, "--epochs", "2", "--out", run]) == 0
    # continue the run with a learning rate no network survives
    cli_error(["train", "--resume", run, "--epochs", "4", "--lr", "1e30", "--quiet"],
              "diverged", "epoch 3, step", "--lr", "--clip-grad", "checkpoint of epoch 2")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2  # the last good one is kept
    # and the run goes on from it with a sane rate, as the message suggests
    assert main(["train", "--resume", run, "--epochs", "3", "--lr", "1e-3", "--clip-grad", "100", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 3


def test_nan_in_the_data_stops_training_without_validation(tmp_path):
    """With Pyro's validation off (it syncs per step) a NaN reaches the loss; fit notices it
    once per epoch from a device-side record, and names the first bad step."""
    from pyro_vae.data import load_dataset
    from pyro_vae.models import build_model
    from pyro_vae.svi import fit

    data = load_dataset("digits", binarize=False, train_size=200)
    x, y = data.splits["train"]
    x[100] = float("nan")  # the fourth batch of 32, in some order
    data.splits["train"] = (x, y)
    model = build_model("vae", data.x_dim, z_dim=2, hidden=16)
    pyro.set_rng_seed(0)
    pyro.enable_validation(False)
    try:
        with pytest.raises(Diverged, match=r"epoch 1, step \d of 7") as info:
            fit(model, data, epochs=2, batch_size=32, progress=False)
    finally:
        pyro.enable_validation(True)
    assert info.value.epoch == 1


def test_clip_grad_is_recorded_and_used(tmp_path):
    weights = {}
    for clip in (None, 1e-3):
        run = train(out=tmp_path / f"clip{clip}", progress=False, epochs=1, clip_grad=clip, **SMALL)
        assert json.loads((run / "config.json").read_text())["clip_grad"] == clip
        weights[clip] = load_checkpoint(run / "checkpoint.pt")["model"]
    assert any(not torch.equal(weights[None][k], weights[1e-3][k]) for k in weights[None])

