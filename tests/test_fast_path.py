"""The fast training path (pyro_vae.fit) against Pyro's textbook one: SVI + Trace_ELBO + pyro.optim.Adam.

fit keeps the ELBO of pyro.infer but switches Pyro's validation off after the first step and
steps one torch.optim.Adam; these tests pin that it is still the same estimator and the same
optimizer. No timing here: speed lives in experiments/benchmark.py.
"""

import copy
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode

import pyro_vae
from pyro_vae.data import binarize
from pyro_vae.objectives import DeviceTrace_ELBO, ScaleLatents

Z, H = 4, 32  # small networks keep the file fast


def batch(data, n=32):
    x, labels = data.splits["train"]
    return x[:n].bernoulli(generator=torch.Generator().manual_seed(0)), labels[:n]


@pytest.mark.parametrize("name", sorted(pyro_vae.MODELS))
def test_same_loss_and_update_as_svi(digits, make_model, name):
    """Same parameters and noise: the same loss, and after one Adam step the same parameters."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    fast = make_model(name, digits, z_dim=Z, hidden=H)
    plain = copy.deepcopy(fast)
    x, labels = batch(digits)

    # fit's step: pyro_vae.make_elbo() (DeviceTrace_ELBO, a Trace_ELBO), validation off, one torch.optim.Adam
    elbo = pyro_vae.make_elbo()
    optimizer = torch.optim.Adam(fast.parameters(), lr=1e-2)
    pyro.set_rng_seed(1)
    with pyro.validation_enabled(False):
        loss = elbo.differentiable_loss(fast.model, fast.guide, *pyro_vae.model_inputs(fast, x, labels, digits.n_classes))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    # the textbook path: SVI with Pyro's per-parameter Adam, validation on
    pyro.clear_param_store()
    svi = SVI(plain.model, plain.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    pyro.set_rng_seed(1)
    with pyro.validation_enabled(True):
        svi_loss = svi.step(*pyro_vae.model_inputs(plain, x, labels, digits.n_classes))

    assert loss.item() == pytest.approx(svi_loss, rel=1e-5)
    for (key, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), key


def svi_fit(model, data, epochs, batch_size, lr):
    """Pyro's textbook training loop, for reference."""
    pyro.clear_param_store()
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(max_plate_nesting=1))
    x_train, labels = data.splits["train"]
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train)).split(batch_size):
            svi.step(*pyro_vae.model_inputs(model, binarize(x_train[idx]), labels[idx], data.n_classes))


def val_elbo(model, data):
    x, labels = data.splits["val"]
    return pyro_vae.elbo_per_example(model.model, model.guide, *pyro_vae.model_inputs(model, x, labels, data.n_classes),
                                     particles=20).mean().item()


@pytest.mark.parametrize("name", ["vae", "cvae2"])
def test_trains_to_the_same_elbo_as_svi(digits, make_model, name):
    """Trained side by side from the same start, the two paths reach the same validation ELBO."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    fast = make_model(name, digits, z_dim=Z, hidden=H)
    plain = copy.deepcopy(fast)
    start = val_elbo(fast, digits)
    history = pyro_vae.fit(fast, digits, epochs=10, batch_size=64, lr=3e-3, progress=False)
    svi_fit(plain, digits, epochs=10, batch_size=64, lr=3e-3)
    a, b = val_elbo(fast, digits), val_elbo(plain, digits)
    assert a > start + 5 and b > start + 5  # both learned something
    assert history[-1]["train_elbo"] == pytest.approx(a, abs=3)
    assert abs(a - b) < 1.0, (a, b)  # seed-to-seed spread here is a few tenths of a nat


def test_validation_still_catches_a_bad_guide(digits):
    """Validation runs on fit's first step, so a guide that misses a model site is still reported."""
    model = pyro_vae.build_model("vae", digits.x_dim, z_dim=Z, hidden=H)
    model.guide = lambda x, y=None: None  # samples no z: the model's z would go unguided
    with pytest.warns(UserWarning, match="model but not guide.*z"):
        pyro_vae.fit(model, digits, epochs=1, batch_size=64, progress=False)


def loss_and_grads(elbo, model, guide, params, *args):
    pyro.set_rng_seed(3)  # the same noise for each objective
    for p in params:
        p.grad = None
    loss = elbo.differentiable_loss(model, guide, *args)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("name", ["vae", "cvae2", "cvae3"])
def test_device_elbo_equals_trace_elbo(digits, make_model, name, beta):
    """fit's DeviceTrace_ELBO: Trace_ELBO's value and gradient, also with the latents scaled (beta)."""
    model = make_model(name, digits, z_dim=Z, hidden=H)
    x, labels = batch(digits)
    args = pyro_vae.model_inputs(model, x, labels, digits.n_classes)
    weight = ScaleLatents(beta)
    fns = (weight(model.model), weight(model.guide))
    params = list(model.parameters())
    with pyro.validation_enabled(False):
        (a, grads_a), (b, grads_b) = (loss_and_grads(elbo, *fns, params, *args)
                                      for elbo in (Trace_ELBO(max_plate_nesting=1), DeviceTrace_ELBO(max_plate_nesting=1)))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    for g, h in zip(grads_a, grads_b):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-6)


def test_device_elbo_score_function_terms():
    """A discrete latent has no reparameterised sample: the gradient then carries Trace_ELBO's
    REINFORCE term (Rao-Blackwellised over the plate), and DeviceTrace_ELBO must give it too."""
    torch.manual_seed(0)
    q_logits, w = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(6))
    loc = torch.nn.Parameter(torch.randn(6))
    x = torch.randn(6)

    def model(x):
        with pyro.plate("data", 6):
            c = pyro.sample("c", dist.Bernoulli(logits=torch.zeros(6)))
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(c * w + u, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 6):
            pyro.sample("c", dist.Bernoulli(logits=q_logits))
            pyro.sample("u", dist.Normal(loc, 0.5))

    params = [q_logits, w, loc]
    (a, grads_a), (b, grads_b) = (loss_and_grads(elbo, model, guide, params, x)
                                  for elbo in (Trace_ELBO(), DeviceTrace_ELBO()))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert grads_a[0].abs().sum() > 0  # the score-function term reaches the guide's logits
    for g, h in zip(grads_a, grads_b):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-6)


class HostReads(TorchFunctionMode):
    """Counts the calls that copy a tensor's value to the host (each a wait for the device on a
    GPU). Adam's own reads are left out: it keeps its step counts on the host by design."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += "torch/optim/" not in sys._getframe(1).f_code.co_filename
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["vae", "cvae2"])
def test_training_steps_do_not_read_the_device(make_model, name):
    """An epoch of 4 steps and one of 12 make the same number of host reads: none per step."""
    reads = []
    for steps in (4, 12):
        data = pyro_vae.load_dataset("digits", train_size=32 * steps)
        pyro.set_rng_seed(0)
        model = make_model(name, data, z_dim=Z, hidden=H)
        with HostReads() as counter:
            pyro_vae.fit(model, data, epochs=1, batch_size=32, progress=False)
        reads.append(counter.count)
    assert reads[0] == reads[1] > 0, reads  # > 0: the counter sees the epoch's own reads


# --- oneDNN products (nets.Linear): the same layer as nn.Linear, up to float rounding ----------

@pytest.mark.skipif(not pyro_vae.nets.ONEDNN, reason="this torch has no oneDNN linear")
@pytest.mark.parametrize("shape", [(256, 784), (10, 64, 794), "transposed"])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_is_nn_linear(shape, bias):
    torch.manual_seed(0)
    out_dim = 400
    ours = pyro_vae.nets.Linear(794 if shape != (256, 784) else 784, out_dim, bias=bias)
    ref = torch.nn.Linear(ours.in_features, out_dim, bias=bias)
    ref.load_state_dict(ours.state_dict())  # the same parameters under the same names
    x = torch.randn(ours.in_features, 300).t() if shape == "transposed" else torch.randn(*shape)
    assert not x.is_contiguous() or shape != "transposed"
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with pyro_vae.nets.choosing_products("onednn"):  # every product in oneDNN, whichever is faster here
        y1 = ours(x1)
    y2 = ref(x2)
    assert y1.shape == y2.shape and torch.allclose(y1, y2, rtol=1e-5, atol=1e-4)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert y1.grad_fn.name().endswith("OneDnnLinearBackward")  # the oneDNN path was the one taken
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-5, atol=1e-4)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(not pyro_vae.nets.ONEDNN, reason="this torch has no oneDNN linear")
def test_onednn_backward_reads_the_transposes_in_place():
    # oneDNN reads W^T, g^T and x^T as strided views: the backward copies nothing (it copied the
    # 784 x 400 weight every step before; benchmark.md, fifth round)
    layer = pyro_vae.nets.Linear(784, 400)
    x = torch.randn(64, 784, requires_grad=True)

    def step(x, w, b):
        y = pyro_vae.nets.OneDnnLinear.apply(x, w, b)
        return torch.autograd.grad((y * y).sum(), (x, w, b))

    graph = make_fx(step)(x, layer.weight, layer.bias)
    ops = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    products = [n for n in graph.graph.nodes if n.op == "call_function"
                and n.target is torch.ops.mkldnn._linear_pointwise.default]
    assert len(products) == 3  # the forward and both backward products
    copies = [o for o in ops if o in (torch.ops.aten.clone.default, torch.ops.aten._to_copy.default,
                                      torch.ops.aten.contiguous.default)]
    assert copies == [], copies
    grads = step(x, layer.weight, layer.bias)
    ref = torch.autograd.grad((torch.nn.functional.linear(x, layer.weight, layer.bias) ** 2).sum(),
                              (x, layer.weight, layer.bias))
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_small_products_and_other_dtypes_take_torchs_linear():
    small = pyro_vae.nets.Linear(16, 8)
    assert small(torch.randn(4, 16, requires_grad=True)).grad_fn.name() == "AddmmBackward0"
    big = pyro_vae.nets.Linear(784, 400).double()
    x = torch.randn(64, 784, dtype=torch.float64)
    assert torch.equal(big(x), torch.nn.functional.linear(x, big.weight, big.bias))
    assert big.float()(torch.randn(0, 784)).shape == (0, 400)  # an empty batch


def test_fits_adam_is_fused_and_makes_torchs_default_update():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(40, 30)), torch.nn.Parameter(torch.randn(30))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, default = pyro_vae.svi.adam(params, 1e-3), torch.optim.Adam(copies, lr=1e-3)
    assert ours.defaults["fused"] or tuple(map(int, torch.__version__.split(".")[:2])) < (2, 4)
    for _ in range(50):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, copies, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        default.step()
    assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in zip(params, copies))


def test_adam_step_is_the_optimizers_own_step_bit_for_bit():
    """svi.adam_step calls the fused kernel itself after the first step: the same parameters and
    state as Optimizer.step, through a learning-rate change, weight decay and a state_dict reload;
    anything it does not handle (a hook, a parameter without a gradient) goes to Optimizer.step."""
    if not pyro_vae.svi.adam([torch.nn.Parameter(torch.zeros(1))], 1e-3).defaults.get("fused"):
        pytest.skip("this torch has no fused Adam on the CPU")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(40, 30)), torch.nn.Parameter(torch.randn(30))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, theirs = pyro_vae.svi.adam(params, 1e-3), pyro_vae.svi.adam(copies, 1e-3)
    stepped = []  # Optimizer.step's calls through adam_step

    def counting(optimizer):
        step = optimizer.step
        optimizer.step = lambda: stepped.append(1) or step()
        return optimizer

    ours = counting(ours)
    for i in range(30):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, copies, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if i == 10:
            for o in (ours, theirs):
                o.param_groups[0]["lr"], o.param_groups[0]["weight_decay"] = 3e-4, 0.01
        if i == 20:  # a resumed run: a fresh optimizer given the saved state
            state = ours.state_dict()
            ours = counting(pyro_vae.svi.adam(params, 1.0))
            ours.load_state_dict(state)
        pyro_vae.svi.adam_step(ours)
        theirs.step()
        assert all(torch.equal(p, q) for p, q in zip(params, copies)), i
    assert stepped == [1]  # the very first step only: it creates the state
    for a, b in zip(ours.state_dict()["state"].values(), theirs.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))

    seen = []
    ours.register_step_pre_hook(lambda *a: seen.append(1))  # a hook: Optimizer.step runs it
    params[1].grad = None  # and a parameter without a gradient: left alone, as Optimizer.step does
    copies[1].grad = None
    params[0].grad = torch.ones_like(params[0])
    copies[0].grad = torch.ones_like(copies[0])
    pyro_vae.svi.adam_step(ours)
    theirs.step()
    assert seen == [1] and stepped == [1, 1] and all(torch.equal(p, q) for p, q in zip(params, copies))


@pytest.mark.parametrize("name", ["cvae1", "cvae2"])
def test_conditions_made_once_train_bit_for_bit_as_per_batch(digits, make_model, name):
    """A conditional model's one-hot labels are made once for the training split and a batch's rows
    gathered from it (svi.Trainer.run), where they were made per batch: the same values, so the
    same run to the bit. The per-batch path is what a Trainer given its own `inputs` still takes."""
    from pyro_vae.models import model_inputs

    runs = []
    for own_inputs in (False, True):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        model = make_model(name, digits)
        inputs = (lambda x, y: model_inputs(model, x, y, digits.n_classes)) if own_inputs else None
        trainer = pyro_vae.Trainer(model, inputs=inputs)
        history = trainer.run(digits, 2, 32)
        assert (trainer._conditions is None) == own_inputs
        runs.append(([h["train_elbo"] for h in history], [p.detach().clone() for p in model.parameters()]))
    (elbo_a, params_a), (elbo_b, params_b) = runs
    assert elbo_a == elbo_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
