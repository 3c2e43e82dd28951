"""The captured SVI step (capture.py, `--compile on`): the same value and gradient as the eager
Trace_ELBO step for the same noise, fresh noise every step, one graph per batch shape, and the
eager step, with one line saying why, wherever a loss cannot or must not be captured."""

import json
import os
import subprocess
import sys

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.capture import CapturedStep, Compiled
from pyro_vae.svi import Trainer


@pytest.fixture(scope="module")
def small_digits():
    """80 training images: batches of 32, 32 and 16."""
    return pyro_vae.load_dataset("digits", train_size=80)


def train_both(name, data, epochs=2, options=None, **parts):
    out = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        model = pyro_vae.build_model(name, data.x_dim, data.n_classes, z_dim=3, hidden=16, **parts)
        trainer = Trainer(model, compile=mode, **(options or {}))
        history = trainer.run(data, epochs, 32)
        out[mode] = (model, history, trainer)
    return out


@pytest.mark.parametrize("name, parts", [("vae", {}), ("cvae1", {}), ("cvae3", {}), ("vae", {"guide": "iaf"}),
                                         ("cvae2", {"guide": "lowrank", "prior": "mog"})])
def test_captured_training_is_the_eager_training(small_digits, name, parts):
    runs = train_both(name, small_digits, **parts)
    eager, captured = runs["off"], runs["on"]
    assert captured[2].captured is not None and "captured" in captured[2].capture_note
    assert [m["val_elbo"] for m in captured[1]] == [m["val_elbo"] for m in eager[1]]
    for (k, a), (_, b) in zip(eager[0].state_dict().items(), captured[0].state_dict().items()):
        assert torch.equal(a, b), k  # bit for bit: the same operations on the same draws
    assert len(captured[2].captured.graphs) == 2  # 32 and the last, shorter batch: one graph per shape


def test_the_iwae_step_is_captured_and_is_the_eager_one(small_digits):
    runs = train_both("vae", small_digits, options={"elbo": pyro_vae.make_elbo("iwae", 3)}, prior="vamp",
                      part_args={"prior": {"pseudo_inputs": 4}})
    assert runs["on"][2].captured is not None and runs["on"][2].captured.graphs
    assert [m["train_elbo"] for m in runs["on"][1]] == [m["train_elbo"] for m in runs["off"][1]]
    for (k, a), (_, b) in zip(runs["off"][0].state_dict().items(), runs["on"][0].state_dict().items()):
        assert torch.equal(a, b), k


def test_a_kl_warm_up_is_captured_and_read_every_step(small_digits):
    # the weight ramps every step; a graph that had baked in the first step's weight would part from eager
    runs = train_both("cvae1", small_digits, options={"warmup_epochs": 3, "beta": 2.0})
    assert runs["on"][2].captured is not None and runs["on"][2].captured.graphs
    assert [m["train_elbo"] for m in runs["on"][1]] == [m["train_elbo"] for m in runs["off"][1]]
    for (k, a), (_, b) in zip(runs["off"][0].state_dict().items(), runs["on"][0].state_dict().items()):
        assert torch.equal(a, b), k


def test_a_captured_step_draws_fresh_noise_and_matches_the_eager_gradient(digits):
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    elbo = pyro_vae.make_elbo("trace")
    x = torch.bernoulli(digits.splits["train"][0][:20])
    loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x)  # noqa: E731
    loss_fn(x)  # registers the modules with Pyro, as the trainer's first (eager, checked) step does
    step = CapturedStep(model, loss_fn)
    assert step(x) is None and not step.graphs  # a shape's first step is the caller's, eagerly
    torch.manual_seed(5)
    captured = step(x).item()
    grads = [p.grad.clone() for p in step.params]
    torch.manual_seed(5)
    eager = loss_fn(x)
    expected = torch.autograd.grad(eager, step.params)
    assert captured == eager.item()
    assert all(torch.equal(g, e) for g, e in zip(grads, expected))
    assert step(x).item() != captured  # the next step draws again


def test_the_lean_graph_drops_dead_operators_but_keeps_every_draw(digits):
    """The replayed graph calls torch's C functions and has no operator nothing reads, yet a draw
    nothing reads stays: the generator must advance as the eager step advances it."""
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    elbo = pyro_vae.make_elbo("trace")
    x = torch.bernoulli(digits.splits["train"][0][:20])

    def loss_fn(x):
        torch.rand(7)  # a draw whose value nothing reads
        x.sum() * 3  # an operator whose value nothing reads
        return elbo.differentiable_loss(model.model, model.guide, x)

    loss_fn(x)
    step = CapturedStep(model, loss_fn)
    step(x)
    torch.manual_seed(5)
    captured = step(x).item()
    after_captured = torch.rand(3)
    graph = next(iter(step.graphs.values()))
    torch.manual_seed(5)
    assert loss_fn(x).item() == captured
    assert torch.equal(torch.rand(3), after_captured)
    assert "torch.ops." not in graph.code and "tree_flatten" not in graph.code
    unread = [n.target.__name__ for n in graph.graph.nodes if n.op == "call_function" and not n.users]
    assert unread == ["aten_rand_default"]  # the draw only: the product and sum are gone


def captured_graph(model, loss_fn, x, compiler=None):
    loss_fn(x)  # registers the modules with Pyro, as the trainer's first (eager, checked) step does
    step = CapturedStep(model, loss_fn, compiler)
    step(x)
    step(x)
    return step, next(iter(step.graphs.values()))


def test_values_that_depend_on_no_input_are_computed_once_at_capture(digits):
    """The gradient's seed `ones_like(loss)`, the standard prior's `ones_like` scale and what is
    computed from them alone are folded into tensors the graph holds; `x * 1` and `x * -1` on such a
    tensor are read as `x` and `-x`. Fewer operators per step, the same bits."""
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    elbo = pyro_vae.make_elbo("trace")
    x = torch.bernoulli(digits.splits["train"][0][:20])
    loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x)  # noqa: E731
    step, graph = captured_graph(model, loss_fn, x)
    raw = step.capture((x,))  # the same loss recorded again, nothing folded
    operators = lambda g: [n for n in g.graph.nodes if n.op == "call_function"]  # noqa: E731
    names = [str(n.target) for n in operators(graph)]
    assert not any("ones_like" in name for name in names)
    assert len(operators(graph)) <= len(operators(raw)) - 20
    held = dict(graph.named_buffers())
    assert held and all(name.startswith("_folded_") or name.startswith("_tensor_constant") for name in held)
    for node in operators(graph):  # no product with a folded tensor of ones or minus ones is left
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and "mul" in str(node.target):
                assert not bool((held[arg.target].abs() == 1).all()), node
    torch.manual_seed(5)
    folded = step(x).item(), [p.grad.clone() for p in step.params]
    torch.manual_seed(5)
    with torch.no_grad():
        out = raw(*step.params, x)
    assert folded[0] == out[0].item() and all(torch.equal(g, e) for g, e in zip(folded[1], out[1:]))


def test_a_gradient_that_depends_on_no_input_is_not_folded_into_a_shared_tensor(digits):
    """A parameter whose gradient is the same every step (here d/dw of w.sum(): ones) gets a fresh
    tensor each step: clipping scales gradients in place, which must not change the next step's."""
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    model.offset = torch.nn.Parameter(torch.zeros(4))
    elbo = pyro_vae.make_elbo("trace")
    x = torch.bernoulli(digits.splits["train"][0][:20])
    loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x) + model.offset.sum()  # noqa: E731
    step, graph = captured_graph(model, loss_fn, x)
    offset = step.names.index("offset")
    step(x)
    first = step.params[offset].grad
    assert torch.equal(first, torch.ones(4))
    first.mul_(0.25)  # as clip_grad_norm_ does
    step(x)
    assert torch.equal(step.params[offset].grad, torch.ones(4)) and step.params[offset].grad is not first


def test_gradients_that_share_memory_are_handed_over_apart(digits):
    """Two scalar parameters added to the loss get the same gradient, which the graph may return as
    two views of one tensor of ones: each must get its own, or scaling one in place (as clipping
    does) would scale the other."""
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    model.a, model.b = torch.nn.Parameter(torch.tensor(0.0)), torch.nn.Parameter(torch.tensor(0.0))
    elbo = pyro_vae.make_elbo("trace")
    x = torch.bernoulli(digits.splits["train"][0][:20])
    loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x) + model.a + model.b  # noqa: E731
    step, graph = captured_graph(model, loss_fn, x)
    for _ in range(2):
        step(x)
        a, b = (step.params[step.names.index(n)].grad for n in ("a", "b"))
        assert a.item() == b.item() == 1.0
        a.mul_(0.5)
        assert b.item() == 1.0 and a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()


@pytest.mark.parametrize("compiler", [None, "inductor"])
def test_a_held_tensor_written_between_steps_is_read_every_step_not_folded(digits, compiler):
    """A tensor the loss reads that the caller writes in place (the ramped KL weight) is never
    folded, even where an operator on it looks constant: `ones_like(w) * w`; nor baked into
    Inductor's kernels as a constant."""
    torch.manual_seed(0)
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
    elbo = pyro_vae.make_elbo("trace")
    w = torch.tensor(1.0)
    x = torch.bernoulli(digits.splits["train"][0][:20])
    loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x) * (torch.ones_like(w) * w)  # noqa: E731
    step, graph = captured_graph(model, loss_fn, x, compiler)
    if compiler is not None and step.compiler is None:  # no C++ compiler here
        pytest.skip("Inductor could not compile")
    torch.manual_seed(5)
    one = step(x).item()
    w.fill_(3.0)
    torch.manual_seed(5)
    assert step(x).item() == pytest.approx(3 * one, rel=1e-6)


def test_what_cannot_be_captured_runs_eagerly_and_says_why(small_digits, capsys):
    torch.manual_seed(0)
    m2 = pyro_vae.build_model("m2", small_digits.x_dim, small_digits.n_classes, z_dim=3, hidden=16)
    trainer = Trainer(m2, compile="on")
    trainer.run(small_digits, 2, 32)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be captured" in err and trainer.captured is None
    renyi = pyro.infer.RenyiELBO(alpha=0.5, num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    renyi = Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), renyi, compile="on")
    assert renyi.captured is None and "RenyiELBO has no differentiable loss" in renyi.capture_note
    off = Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), compile="off")
    assert off.captured is None and "--compile off" in off.capture_note
    # the default captures where it can, and decides m2's eager step before trying (nothing on stderr)
    assert Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8)).captured is not None
    auto_m2 = Trainer(m2)
    assert auto_m2.captured is None and "label mask" in auto_m2.capture_note
    # auto captures where the benchmark measured it faster: the CPU (a device without that measurement: eager)
    elsewhere = Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8).to("meta"))
    assert elsewhere.captured is None and "CPU only" in elsewhere.capture_note
    assert Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8).to("meta"), compile="on").captured is not None
    with pytest.raises(pyro_vae.UserError, match="compile is auto, on, inductor, off"):
        Trainer(pyro_vae.build_model("vae", 64, z_dim=2, hidden=8), compile="yes")


def test_a_run_with_the_captured_step_resumes_exactly(tmp_path):
    settings = dict(model="vae", dataset="digits", train_size=64, batch_size=32, z_dim=2, hidden=8, compile="on")
    whole = pyro_vae.train(epochs=4, out=tmp_path / "whole", progress=False, **settings)
    half = pyro_vae.train(epochs=2, out=tmp_path / "half", progress=False, **settings)
    pyro_vae.train(resume=half, epochs=4, progress=False)
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(half / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_may_change_the_compile_mode_and_auto_on_off_agree_bit_for_bit(tmp_path, capsys):
    settings = dict(model="vae", dataset="digits", train_size=64, batch_size=32, z_dim=2, hidden=8)
    whole = pyro_vae.train(epochs=4, out=tmp_path / "whole", progress=False, **settings)  # auto throughout
    half = pyro_vae.train(epochs=2, out=tmp_path / "half", progress=False, **settings)
    pyro_vae.train(resume=half, epochs=4, compile="off", progress=False)  # Pyro's eager step from epoch 3
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(half / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((half / "config.json").read_text())["compile"] == "off"
    capsys.readouterr()
    pyro_vae.train(resume=half, epochs=5, compile="inductor")
    out = capsys.readouterr().out
    assert "compiled by Inductor" in out and json.loads((half / "config.json").read_text())["compile"] == "inductor"
    with pytest.raises(pyro_vae.UserError, match="compile is auto, on, inductor, off"):
        pyro_vae.train(resume=half, epochs=6, compile="fast", progress=False)
    assert json.loads((half / "config.json").read_text())["compile"] == "inductor"  # the refused value left nothing


def test_inductor_compiles_the_captured_step_with_the_same_noise(capsys):
    data = pyro_vae.load_dataset("digits", train_size=64)  # batches of 32 only: one graph, one compile
    losses = {}
    for mode in ("off", "inductor"):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        model = pyro_vae.build_model("vae", data.x_dim, z_dim=3, hidden=16)
        trainer = Trainer(model, compile=mode)
        history = trainer.run(data, 3, 32)
        losses[mode] = [m["train_elbo"] for m in history]
        if mode == "inductor":
            assert trainer.captured is not None and trainer.captured.seconds > 0
            err = capsys.readouterr().err
            if "could not compile" in err:  # no C++ compiler here: the captured graph ran as it is
                pytest.skip(err.strip())
            assert trainer.captured.compiler == "inductor"
    # fused kernels round differently, but the draws are the eager ones: the same numbers to float precision
    assert losses["inductor"] == pytest.approx(losses["off"], rel=1e-4)


def test_inductor_compiles_the_training_batch_shape_only():
    data = pyro_vae.load_dataset("digits", train_size=80)  # batches of 32, 32 and 16
    assert len(data.splits["train"][0]) == 80
    model = pyro_vae.build_model("vae", data.x_dim, z_dim=3, hidden=16)
    trainer = Trainer(model, compile="inductor")
    trainer.run(data, 3, 32)
    if trainer.captured.compiler != "inductor":  # no C++ compiler here
        pytest.skip("Inductor could not compile")
    compiled = {k[0][0][0]: isinstance(g, Compiled) for k, g in trainer.captured.graphs.items()}
    assert compiled == {32: True, 16: False}  # the last batch, once an epoch, replays its captured graph


def test_a_second_process_takes_the_compiled_step_from_inductors_disk_cache(tmp_path):
    """Compiled once, the step is read back from Inductor's cache by the next process (no compile),
    gives the same losses, and its kernels still read a held tensor written between steps."""
    script = """
import json, torch, pyro_vae
from torch._dynamo.utils import counters
from pyro_vae.capture import CapturedStep
torch.manual_seed(0)
digits = pyro_vae.load_dataset("digits", train_size=64)
model = pyro_vae.build_model("vae", digits.x_dim, z_dim=3, hidden=16)
elbo = pyro_vae.make_elbo("trace")
w = torch.tensor(1.0)
x = torch.bernoulli(digits.splits["train"][0][:20])
loss_fn = lambda x: elbo.differentiable_loss(model.model, model.guide, x) * w
loss_fn(x)
step = CapturedStep(model, loss_fn, compiler="inductor")
step(x), step(x)
losses = []
for weight in (1.0, 3.0):
    w.fill_(weight)
    torch.manual_seed(5)
    losses.append(step(x).item())
print(json.dumps({"compiler": step.compiler, "losses": losses, **counters["inductor"]}))
"""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if runs[0]["compiler"] != "inductor":  # no C++ compiler here
        pytest.skip("Inductor could not compile")
    assert runs[0].get("fxgraph_cache_miss") == 1 and runs[1].get("fxgraph_cache_hit") == 1, runs
    assert runs[1]["losses"] == runs[0]["losses"]
    assert runs[1]["losses"][1] == pytest.approx(3 * runs[1]["losses"][0], rel=1e-6)


def test_inductor_without_a_cpp_compiler_says_so_and_replays_the_captured_step(tmp_path):
    # in a process of its own: Inductor caches the compiler it found for the life of a process
    script = f"""
import pyro, torch, torch._inductor.config as inductor_config, pyro_vae
from pyro_vae.svi import Trainer
inductor_config.fx_graph_cache = False
inductor_config.cpp.cxx = ({str(tmp_path / "no-such-compiler")!r},)
data = pyro_vae.load_dataset("digits", train_size=64)
losses = {{}}
for mode in ("on", "inductor"):
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    trainer = Trainer(pyro_vae.build_model("vae", data.x_dim, z_dim=3, hidden=13), compile=mode)
    losses[mode] = [m["train_elbo"] for m in trainer.run(data, 3, 32)]
assert trainer.captured is not None and trainer.captured.compiler is None
assert losses["inductor"] == losses["on"], losses  # the captured graph, bit for bit
"""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}  # nothing compiled before helps
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "pyro-vae" in line]
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: Inductor could not compile the captured step")


@pytest.mark.skipif(not pyro_vae.nets.ONEDNN, reason="this torch has no oneDNN products")
def test_inductor_compiles_around_the_onednn_products_with_the_same_noise(capsys):
    # networks wide enough that nets.Linear runs its products in oneDNN: Inductor's own lowering of
    # that op fails on plain weights, so the step turns them into one opaque op and compiles the rest
    data = pyro_vae.load_dataset("digits", train_size=64)
    losses = {}
    for mode in ("off", "inductor"):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        model = pyro_vae.build_model("vae", data.x_dim, z_dim=20, hidden=2048)  # 32 x 64 x 2048 > 2^22
        trainer = Trainer(model, compile=mode)
        trainer.products = pyro_vae.nets.new_choices("onednn")  # whichever is faster on this machine
        losses[mode] = [m["train_elbo"] for m in trainer.run(data, 3, 32)]
        if mode == "inductor":
            err = capsys.readouterr().err
            if "could not compile" in err and "C++" in err:  # no C++ compiler here
                pytest.skip(err.strip())
            assert "could not compile" not in err
            assert trainer.captured.compiler == "inductor"
            graph = next(iter(trainer.captured.graphs.values()))
            targets = [str(n.target) for n in graph.graph.graph.nodes]  # the captured GraphModule, rewritten
            assert "pyro_vae.onednn_linear.default" in targets
            assert not any("_linear_pointwise" in t for t in targets)
    assert losses["inductor"] == pytest.approx(losses["off"], rel=1e-4)
