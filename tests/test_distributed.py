"""Data-parallel training: two CPU processes with gloo against one process on the same global batches."""

import importlib
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_vae import distributed, load_dataset
from pyro_vae.models import build_model, model_inputs
from pyro_vae.objectives import make_elbo
from pyro_vae.runs import load_checkpoint
from pyro_vae.svi import Trainer

training = importlib.import_module("pyro_vae.runs.training")
SETTINGS = dict(model="cvae1", dataset="digits", hidden=16, z_dim=2, train_size=200, batch_size=32, epochs=2,
                device="cpu", seed=3)


def without_noise():
    """Make the guide's reparameterized draws zero (z = its mean), in this process.

    Two processes each draw noise for their half of a batch, one process for the whole batch: the
    draws differ, so the runs would differ by Monte Carlo noise. Without noise, what is left to
    compare is exactly what data parallelism must preserve: the same batches, the same binarized
    bits, and gradients summed over the whole batch."""
    import torch.distributions.normal as normal

    normal._standard_normal = lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, out, port, settings=SETTINGS):
    # what torchrun would set
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    without_noise()
    run = Trainer.run

    def run_and_keep(trainer, data, *args, **kwargs):  # every rank's final weights, not only rank 0's checkpoint
        history = run(trainer, data, *args, **kwargs)
        torch.save({"model": trainer.model.state_dict(), "history": history, "world": dist.get_world_size(),
                    "grads": batch_gradient(trainer.model, data)}, out / f"rank{rank}.pt")
        return history

    Trainer.run = run_and_keep  # in this worker process only
    training.train(out=out / "run", progress=False, **settings)


def batch_gradient(model, data, n=40):
    """The gradient of the ELBO loss of n fixed examples, each process taking its shard as fit does:
    it must be the whole batch's gradient (Adam would hide a wrong scale, so it is checked directly)."""
    x, y = data.splits["val"]
    part = distributed.shard(n)
    loss_fn = distributed.loss_module(model, make_elbo())
    model.zero_grad()
    distributed.backward(loss_fn(*model_inputs(model, x[:n][part], y[:n][part], data.n_classes)))
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    mp.start_processes(worker, args=(tmp_path, free_port()), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for name, value in ranks[0]["model"].items():  # every process holds the same weights
        assert torch.equal(value, ranks[1]["model"][name]), name
    written = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # process 0 wrote the run directory
    assert written["epoch"] == SETTINGS["epochs"] and not os.environ.get("WORLD_SIZE")

    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    training.train(out=tmp_path / "single", progress=False, **SETTINGS)
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")

    losses = [(m["train_elbo"], m["val_elbo"]) for m in ranks[0]["history"]]
    single_losses = [(m["train_elbo"], m["val_elbo"]) for m in json.loads(single["history"])]
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), torch.tensor(single_losses, dtype=torch.float64),
                          rtol=1e-5, atol=0)
    for name, value in single["model"].items():
        assert torch.allclose(value, ranks[0]["model"][name], rtol=1e-4, atol=1e-5), name

    # the averaged gradient is the whole batch's, at the same weights, in one process
    data = load_dataset("digits", train_size=SETTINGS["train_size"], seed=SETTINGS["seed"])
    model = build_model("cvae1", data.x_dim, data.n_classes, z_dim=2, hidden=16)
    model.load_state_dict(ranks[0]["model"])
    grads = batch_gradient(model, data)
    for name, grad in grads.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        assert torch.allclose(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-5), name


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_the_iwae_objective_trains_data_parallel_as_in_one_process(tmp_path, monkeypatch):
    """IWAE_ELBO has a differentiable loss (a sum over examples), so DDP wraps it like the ELBO."""
    settings = {**SETTINGS, "model": "vae", "elbo": "iwae", "particles": 3}
    mp.start_processes(worker, args=(tmp_path, free_port(), settings), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    training.train(out=tmp_path / "single", progress=False, **settings)
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    for name, value in single["model"].items():
        assert torch.equal(ranks[0]["model"][name], ranks[1]["model"][name]), name
        assert torch.allclose(value, ranks[0]["model"][name], rtol=1e-4, atol=1e-5), name
