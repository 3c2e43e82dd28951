"""Which library runs a large CPU product (nets.ProductChoices): timed once per shape and product,
recorded in the run's checkpoint, and taken back on resume so the resumed run is bit for bit the
one that never stopped, whatever the timings say in the new process."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae import nets, train
from pyro_vae.errors import UserError
from pyro_vae.runs import load_checkpoint

pytestmark = pytest.mark.skipif(not nets.ONEDNN, reason="this torch has no oneDNN products")

# hidden 1024 on 8 x 8 digits: 32 rows x 64 x 1024 = 2^21 multiply-adds, the smallest product
# that is chosen (nets.ONEDNN_MIN_MACS), in both the encoder's first layer and the decoder's last
WIDE = dict(dataset="digits", hidden=1024, z_dim=2, train_size=96, batch_size=32, device="cpu", model="vae")


def timings(monkeypatch, rule):
    """Make every timing say `rule(key, product)` (True: oneDNN is faster); returns the calls."""
    calls = []

    def fake(key, product, **_):
        calls.append((key, product))
        return rule(key, product)

    monkeypatch.setattr(nets, "onednn_is_faster", fake)
    monkeypatch.setattr(nets, "_MODE", "auto")
    return calls


def digest(run):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(run).iterdir()) if p.is_file()}


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_resumed_run_takes_back_its_choices_not_this_machines_timings(tmp_path, monkeypatch):
    grad_x_in_torch = lambda key, product: product != 1  # noqa: E731
    calls = timings(monkeypatch, grad_x_in_torch)
    train(out=tmp_path / "straight", progress=False, epochs=3, **WIDE)
    assert calls, "no product was large enough to be chosen: the test would prove nothing"
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    recorded = json.loads(straight["products"])
    assert {tuple(e[:3]) for e in recorded} >= {(32, 64, 1024), (32, 1024, 64)}
    for e in recorded:  # what the timings said, product by product (None: never needed, the data's gradient)
        assert all(c is None or c == grad_x_in_torch(None, i) for i, c in enumerate(e[3:])), e

    train(out=tmp_path / "resumed", progress=False, epochs=1, **WIDE)
    calls = timings(monkeypatch, lambda key, product: product == 1)  # this process would choose the opposite
    train(resume=tmp_path / "resumed", epochs=3, progress=False)
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert same_weights(straight, resumed)
    assert torch.equal(straight["optimizer"]["state"][0]["exp_avg"], resumed["optimizer"]["state"][0]["exp_avg"])
    assert json.loads(resumed["products"]) == recorded
    assert not [c for c in calls if c[0] in {tuple(e[:3]) for e in recorded}]  # none of the run's shapes retimed

    # the control: the same resume with the choices taken away trains another way (so the check above could fail)
    timings(monkeypatch, grad_x_in_torch)
    train(out=tmp_path / "control", progress=False, epochs=1, **WIDE)
    state = torch.load(tmp_path / "control" / "checkpoint.pt", weights_only=True)
    state["products"] = "[]"
    torch.save(state, tmp_path / "control" / "checkpoint.pt")
    timings(monkeypatch, lambda key, product: product == 1)
    train(resume=tmp_path / "control", epochs=3, progress=False)
    assert not same_weights(straight, load_checkpoint(tmp_path / "control" / "checkpoint.pt"))


def test_a_checkpoint_from_before_choices_resumes_with_every_product_in_onednn(tmp_path, monkeypatch):
    timings(monkeypatch, lambda key, product: False)
    train(out=tmp_path / "old", progress=False, epochs=1, **WIDE)
    state = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    del state["products"]  # as this package wrote checkpoints before it timed products
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    calls = timings(monkeypatch, lambda key, product: False)
    train(resume=tmp_path / "old", epochs=2, progress=False)
    recorded = json.loads(load_checkpoint(tmp_path / "old" / "checkpoint.pt")["products"])
    assert recorded and all(c in (None, True) for e in recorded for c in e[3:]), recorded
    assert any(c is True for e in recorded for c in e[3:])
    trained = [c for c in calls if c[0] in {tuple(e[:3]) for e in recorded}]
    assert not trained  # chosen by the old rule, not timed


@pytest.mark.parametrize("damage", ['[[32, 64, "1024", true, null, true]]', '[[32, 64, 1024, 1, null, true]]',
                                    '[[32, 64, 1024, true]]', '{"32": true}', "not json", "null", 7])
def test_damaged_choices_are_refused_before_anything_is_written(tmp_path, monkeypatch, damage):
    timings(monkeypatch, lambda key, product: True)
    train(out=tmp_path / "run", progress=False, epochs=1, **WIDE)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    state["products"] = damage
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    before = digest(tmp_path / "run")
    with pytest.raises(UserError, match="products must be a JSON list"):
        train(resume=tmp_path / "run", epochs=2, progress=False)
    assert digest(tmp_path / "run") == before


def test_each_product_is_timed_once_per_shape_and_only_where_needed(monkeypatch):
    calls = timings(monkeypatch, lambda key, product: product == 2)
    layer = nets.Linear(784, 400)
    choices = nets.new_choices()
    with nets.choosing_products(choices):
        for rows in (64, 60, 64):  # 60 rows round up to 64: one shape
            y = layer(torch.randn(rows, 784))  # data: no gradient of x, so grad_x is never timed
            y.sum().backward()
            assert y.grad_fn.name().endswith("OneDnnLinearBackward")  # grad_w in oneDNN
        with torch.no_grad():
            assert layer(torch.randn(200, 784)).grad_fn is None
    assert calls == [((64, 784, 400), 0), ((64, 784, 400), 2), ((256, 784, 400), 0)]
    assert choices.state() == [[64, 784, 400, False, None, True], [256, 784, 400, False, None, None]]
    assert choices.summary().startswith("1 of 3 large CPU products in oneDNN, 2 in torch's matmul (each the faster")
    assert nets.new_choices().summary() == ""  # nothing chosen: the run log says nothing
    timings(monkeypatch, lambda key, product: False)
    with nets.choosing_products(nets.new_choices()):  # all in torch: torch's own layer, no Function around it
        assert layer(torch.randn(64, 784, requires_grad=True)).grad_fn.name() == "AddmmBackward0"


@pytest.mark.parametrize("use", [(True, False, True), (False, True, False), (False, False, True)])
def test_every_mixture_of_libraries_is_the_same_layer(use):
    torch.manual_seed(0)
    x, w, b = torch.randn(64, 784, requires_grad=True), torch.randn(400, 784, requires_grad=True), torch.randn(400)
    b.requires_grad_()
    y = nets.OneDnnLinear.apply(x, w, b, use)
    grads = torch.autograd.grad((y * y).sum(), (x, w, b))
    ref = torch.nn.functional.linear(x, w, b)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-3)
    for a, r in zip(grads, torch.autograd.grad((ref * ref).sum(), (x, w, b))):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-2)


def test_timing_draws_no_random_number_and_is_not_recorded_by_a_trace():
    state = torch.get_rng_state()
    assert nets.onednn_is_faster((64, 784, 400), 1) in (True, False)
    assert torch.equal(torch.get_rng_state(), state)  # a run's noise does not depend on when it timed
    layer = nets.Linear(784, 400)
    choices = nets.new_choices("auto")

    def step(x):
        return torch.autograd.grad(layer(x).square().sum(), layer.weight)[0]

    with nets.choosing_products(choices):  # nothing chosen yet: timed while make_fx records
        graph = make_fx(step)(torch.randn(64, 784))
    ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert not any("rand" in o or "uniform" in o for o in ops), ops
    assert choices.state() and choices.state()[0][:3] == [64, 784, 400]
    products = [n for n in graph.graph.nodes if n.op == "call_function" and any(
        t in str(n.target) for t in ("addmm", "aten.mm", "_linear_pointwise"))]
    assert len(products) == 2  # the forward and the weight's gradient, nothing of the timing


@pytest.mark.parametrize("slow", ["onednn", "torch"])
def test_the_faster_library_is_the_one_chosen(monkeypatch, slow):
    # one side made 3 ms slower per call than it is: the timing must pick the other
    import time

    def slowed(f):
        def g(*a, **k):
            time.sleep(0.003)
            return f(*a, **k)
        return g

    if slow == "onednn":
        monkeypatch.setattr(nets, "_dnn", slowed(nets._dnn))
    else:
        monkeypatch.setattr(nets, "F", SimpleNamespace(linear=slowed(torch.nn.functional.linear)))
    assert nets.onednn_is_faster((64, 784, 400), 0) is (slow == "torch")


def test_an_unknown_setting_is_said_in_one_line_and_timing_goes_on():
    done = subprocess.run([sys.executable, "-c", "import pyro_vae.nets as n; print(n._MODE)"],
                          env={**__import__("os").environ, "PYRO_VAE_ONEDNN": "yes"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "auto"
    assert done.stderr.strip() == "pyro-vae: PYRO_VAE_ONEDNN is 0, 1 or auto, not 'yes': taking auto"


def test_load_refuses_what_state_cannot_have_written():
    choices = nets.ProductChoices("auto")
    for bad in ([[0, 64, 1024, True, None, None]], [[32, 64, 1024, True, None]], [(32, 64, 1024, True, None, None)],
                [[True, 64, 1024, True, None, None]], "[]"):
        with pytest.raises(UserError):
            choices.load(bad)
    assert choices.chosen == {}
