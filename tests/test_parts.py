"""Swappable priors, guides, likelihoods and objectives: every combination, known answers, user parts."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import (Config, UserError, build_model, fit, importance_sampled, load_dataset, log_weights, make_elbo,
                      model_inputs)
from pyro_vae.models import MODELS
from pyro_vae.parts import GUIDES, LIKELIHOODS, PRIORS

from my_parts import LaplacePrior  # a user's prior, in a module of theirs (tests/userpkg)
from pyro_vae.objectives import ScaleLatents, check_objective

UNCONDITIONAL_PRIOR = {"vae", "cvae2", "ae", "dae", "m2"}
ANALYTIC_KL_PRIORS = {"normal", "class-mean", "conditional"}


def expected_refusal(model, prior, guide, elbo):
    """The rules, written out independently of the code that enforces them."""
    if model in ("ae", "dae") and guide != "delta":
        return "its guide is delta"
    if model == "m2" and elbo != "enum":
        return "sums its label out exactly"
    if prior in ("conditional", "class-mean") and model in UNCONDITIONAL_PRIOR:
        return "needs a conditioning input"
    if prior == "class-mean" and model == "cvae3":
        return "needs a class label"
    if prior == "vamp" and guide == "delta":
        return "the delta guide has none"
    # Pyro defines KL(delta || p) = -log p(z*), so a point-mass guide has an "analytic KL" with any prior.
    if elbo == "meanfield" and guide != "delta" and not (guide == "diagonal" and prior in ANALYTIC_KL_PRIORS):
        return "needs an analytic KL"
    return None


@pytest.fixture
def build_and_step(make_model):
    def build_and_step(data, model_name, prior, guide, likelihood=None, elbo="trace", particles=1, **fit_kwargs):
        """What `train` does, on a tiny budget: the same checks, then one SVI step."""
        config = Config(model=model_name, prior=prior, guide=guide, likelihood=likelihood, elbo=elbo,
                        particles=particles, z_dim=3, hidden=8, epochs=1, **fit_kwargs).resolved()
        model = make_model(model_name, data, z_dim=3, hidden=8,
                           likelihood=config.likelihood, prior=config.prior, guide=config.guide)
        x, y = data.splits["val"]
        check_objective(model, config.elbo, *model_inputs(model, x[:2], y[:2], data.n_classes))
        before = [p.detach().clone() for p in model.parameters()]
        history = fit(model, data, epochs=1, batch_size=32, elbo=make_elbo(elbo, particles, config.jit),
                      beta=config.beta, warmup_epochs=config.warmup_epochs, progress=False)
        assert torch.isfinite(torch.tensor(history[0]["train_elbo"])) and torch.isfinite(torch.tensor(history[0]["val_elbo"]))
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved"
        return model

    return build_and_step


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_prior_guide_objective_combination_runs_or_is_refused(tiny_digits, build_and_step, model_name):
    ran = refused = 0
    for prior, guide, elbo in itertools.product(PRIORS, GUIDES, ["trace", "meanfield", "iwae", "enum"]):
        reason = expected_refusal(model_name, prior, guide, elbo)
        particles = 3 if elbo == "iwae" else 1
        if reason:
            with pytest.raises(UserError, match=reason):
                build_and_step(tiny_digits, model_name, prior, guide, elbo=elbo, particles=particles)
            refused += 1
        else:
            pyro.set_rng_seed(0)
            build_and_step(tiny_digits, model_name, prior, guide, elbo=elbo, particles=particles)
            ran += 1
    assert ran > 0 and refused > 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "normal"])
@pytest.mark.parametrize("model_name", ["vae", "cvae1", "cvae2", "cvae4", "ae"])
def test_every_likelihood_on_every_image_model(tiny_digits, build_and_step, likelihood, model_name):
    # tiny_digits is this data set binarized
    data = tiny_digits if likelihood == "bernoulli" else load_dataset("digits", train_size=32, val_size=0.02,
                                                                      binarize=False)
    for elbo in ("trace", "iwae"):
        build_and_step(data, model_name, None, None, likelihood=likelihood, elbo=elbo,
                       particles=2 if elbo == "iwae" else 1)


def test_beta_warmup_and_jit_combinations(tiny_digits, build_and_step):
    build_and_step(tiny_digits, "vae", "normal", "diagonal", beta=4.0, warmup_epochs=2)
    build_and_step(tiny_digits, "cvae1", "class-mean", "diagonal", elbo="meanfield", jit=True)
    with pytest.raises(UserError, match="cannot follow a KL warm-up"):
        build_and_step(tiny_digits, "vae", "normal", "diagonal", jit=True, warmup_epochs=1)
    with pytest.raises(UserError, match="no JIT variant"):
        make_elbo("iwae", 2, jit=True)


def test_unknown_part_names_list_the_valid_ones(make_model):
    for kind, table in [("prior", PRIORS), ("guide", GUIDES), ("likelihood", LIKELIHOODS)]:
        with pytest.raises(UserError, match=f"unknown {kind} 'nope'; choose from {', '.join(table)}"):
            make_model("vae", z_dim=50, hidden=400, **{kind: "nope"})  # build_model("vae", 64, 10) with its default sizes
    with pytest.raises(UserError, match="unknown objective 'nope'"):
        make_elbo("nope")


def small_vae(seed=0):
    torch.manual_seed(seed)
    model = build_model("vae", x_dim=10, z_dim=2, hidden=8)
    x = torch.bernoulli(torch.full((6, 10), 0.3))
    return model, x


def test_analytic_and_monte_carlo_kl_agree_in_expectation():
    model, x = small_vae()
    pyro.set_rng_seed(0)
    mc = make_elbo("trace", particles=20000).differentiable_loss(model.model, model.guide, x, None)
    analytic = make_elbo("meanfield", particles=20000).differentiable_loss(model.model, model.guide, x, None)
    # Both average the same reconstruction term; only the KL estimator differs. 20k draws: error ~0.03.
    assert abs(mc.item() - analytic.item()) < 0.15, (mc.item(), analytic.item())


def test_iwae_bound_with_one_particle_equals_the_elbo():
    model, x = small_vae()
    pyro.set_rng_seed(1)
    iwae = make_elbo("iwae", particles=1).loss(model.model, model.guide, x, None)
    pyro.set_rng_seed(1)
    elbo = make_elbo("trace").loss(model.model, model.guide, x, None)
    assert iwae == pytest.approx(elbo, abs=1e-5)


def test_the_iwae_differentiable_loss_is_renyi_elbos_value_and_gradient():
    """IWAE_ELBO.differentiable_loss against Pyro's own RenyiELBO(alpha=0) on the same draws: the
    loss of `loss`, the gradient of `loss_and_grads` (its surrogate). A guide whose site is not
    reparameterised has no IWAE gradient here and is refused."""
    model, x = small_vae()
    params = list(model.parameters())
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(7)
    ours = make_elbo("iwae", particles=5).differentiable_loss(model.model, model.guide, x, None)
    ours_grads = torch.autograd.grad(ours, params)
    pyro.set_rng_seed(7)
    assert ours.item() == pytest.approx(renyi.loss(model.model, model.guide, x, None), rel=1e-6)
    pyro.set_rng_seed(7)
    for p in params:
        p.grad = None
    renyi.loss_and_grads(model.model, model.guide, x, None)
    for a, p in zip(ours_grads, params):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max().item())
    pyro.set_rng_seed(7)  # and not the ELBO's gradient: the weights matter
    elbo_grads = torch.autograd.grad(make_elbo("trace", 5).differentiable_loss(model.model, model.guide, x, None), params)
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(ours_grads, elbo_grads))

    def discrete_guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(x.shape[0], 2)).to_event(1))

    with pytest.raises(UserError, match="needs a reparameterised guide: site 'z'"):
        make_elbo("iwae", 2).differentiable_loss(model.model, discrete_guide, x, None)


def test_jit_objectives_give_the_plain_loss():
    model, x = small_vae()
    pyro.clear_param_store()  # the JIT reads parameters from Pyro's store: no stale ones there
    for name in ("trace", "meanfield"):
        # The traced graph draws its noise through another torch call, so the two agree in
        # expectation, not draw for draw: average 4000 vectorized particles (error ~0.05 nats).
        plain = make_elbo(name, particles=4000).differentiable_loss(model.model, model.guide, x)
        jitted = make_elbo(name, particles=4000, jit=True)
        first = jitted.differentiable_loss(model.model, model.guide, x)  # traces and compiles
        second = jitted.differentiable_loss(model.model, model.guide, x)  # runs the compiled graph
        for loss in (first, second):
            assert abs(loss.item() - plain.item()) < 0.3, (name, plain.item(), loss.item())
        grads = torch.autograd.grad(second, list(model.parameters()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)  # gradients flow through it


def test_beta_weights_exactly_the_kl_term():
    model, x = small_vae()
    losses = {}
    for w in (1.0, 3.0):
        pyro.set_rng_seed(3)
        scale = ScaleLatents(w)
        losses[w] = make_elbo("meanfield").differentiable_loss(scale(model.model), scale(model.guide), x, None)
    q = model.encoder(x).base_dist
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    assert torch.allclose(losses[3.0] - losses[1.0], 2 * kl, atol=1e-4)


def test_iwae_bound_rises_with_k_on_a_trained_model(digits):
    pyro.set_rng_seed(0)
    model = build_model("vae", digits.x_dim, z_dim=8, hidden=64)
    fit(model, digits, epochs=10, batch_size=64, progress=False)
    x, _ = digits.splits["test"]
    # The K-sample bound from the same 60 draws per example, grouped: E[bound_K] rises with K.
    w = log_weights(model.model, model.guide, x, particles=60)  # (60, B)
    bounds = [(torch.logsumexp(w.reshape(60 // k, k, -1), 1) - math.log(k)).mean().item() for k in (1, 5, 60)]
    assert bounds[0] < bounds[1] < bounds[2] and bounds[2] - bounds[0] > 0.05, bounds


# --- a prior and a guide written in user code, plugged in without editing the package -----------


def student_t_guide(in_dim, net, z_dim):
    """A user's guide as a plain function with the Guide(in_dim, net, z_dim) signature."""

    class StudentT(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net(in_dim, 2 * z_dim)

        def forward(self, h):
            loc, raw = self.net(h).chunk(2, -1)
            return dist.StudentT(5.0, loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    return StudentT()


def test_user_prior_and_guide_train_through_the_same_api(digits):
    pyro.set_rng_seed(0)
    model = build_model("vae", digits.x_dim, z_dim=4, hidden=32, prior=LaplacePrior, guide=student_t_guide)
    assert isinstance(model.prior, LaplacePrior) and type(model.encoder).__name__ == "StudentT"
    history = fit(model, digits, epochs=6, batch_size=64, progress=False)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 2
    assert model.prior.raw_scale.grad is not None  # the user's prior parameters were trained
    x, _ = digits.splits["test"]
    log_lik, elbo = importance_sampled(model.model, model.guide, x, None, samples=20)
    assert (log_lik.mean() >= elbo.mean()).item()
    # A conditional user prior is refused on a model whose prior takes no input, by the same rule.
    LaplacePrior.conditional = True
    try:
        with pytest.raises(UserError, match="needs a conditioning input"):
            build_model("vae", digits.x_dim, z_dim=4, hidden=32, prior=LaplacePrior)
    finally:
        LaplacePrior.conditional = False


def test_autoencoder_with_beta_zero_is_trained_on_reconstruction_alone():
    torch.manual_seed(0)
    model = build_model("ae", x_dim=10, z_dim=2, hidden=8)
    x = torch.bernoulli(torch.full((6, 10), 0.3))
    scale = ScaleLatents(0.0)
    loss = make_elbo("trace").differentiable_loss(scale(model.model), scale(model.guide), x)
    code = model.encoder.net(x)  # the delta guide's point z* = f(x)
    recon = torch.distributions.Bernoulli(logits=model.decoder.net(code)).log_prob(x).sum()
    assert torch.allclose(-loss, recon, atol=1e-5)
    assert Config(model="ae", beta=0.0).resolved().beta == 0.0
    for beta in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="beta must be a finite number not below 0"):
            Config(beta=beta).resolved()


def test_a_parts_own_arguments_are_set_recorded_rebuilt_and_checked(tmp_path, cli_error):
    from pyro_vae.cli import main
    run = tmp_path / "run"
    assert main(["train", "--prior", "vamp", "--prior-arg", "pseudo_inputs=7", "--guide", "iaf", "--guide-arg",
                 "flows=3", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--device", "cpu", "--quiet",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["part_args"] == {"prior": {"pseudo_inputs": 7}, "guide": {"flows": 3}}
    model, _, _ = pyro_vae.load_run(run, "cpu")  # rebuilt with them: the checkpoint's shapes fit
    assert model.prior.raw_u.shape[0] == 7 and len(model.encoder.flows) == 3
    pyro_vae.train(resume=run, epochs=2, progress=False)
    # refused in one line, before a run directory exists
    for argv, needle in [(["--prior", "vamp", "--prior-arg", "pseudo_inputs=0"], "pseudo_inputs must be"),
                         (["--prior", "vamp", "--prior-arg", "pseudos=3"], "pseudos"),
                         (["--prior-arg", "7"], "KEY=VALUE"),
                         (["--prior", "vamp", "--prior-arg", "pseudo_inputs=10**9"], "pseudo_inputs must be"),
                         (["--prior", "vamp", "--prior-arg", "pseudo_inputs=100000000"], "1 GiB"),
                         (["--guide", "iaf", "--guide-arg", "flows=2.5"], "flows must be"),
                         (["--prior", "vamp", "--prior-arg", "pixels=tanh"], "pixels is sigmoid or hardtanh")]:
        cli_error(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "bad")], needle)
        assert not (tmp_path / "bad").exists()
    # a hand-edited config.json with malformed part_args says so in one line
    for bad, needle in [({"encoder": {}}, "maps guide, prior or likelihood"), ({"prior": [1]}, "{keyword: value}"),
                        ({"prior": {"pseudo_inputs": [500]}}, "must be a number"), ("vamp", "maps guide, prior or likelihood")]:
        (run / "config.json").write_text(json.dumps({**config, "part_args": bad}))
        cli_error(["evaluate", str(run), "--iw-samples", "2"], "config.json", needle, code=2)


def test_the_mixture_prior_density_is_the_broadcast_one_in_two_products():
    """DiagonalNormalMixture (the MoG prior's and the VampPrior's law) against torch's
    MixtureSameFamily in float64: the same log-density and gradients, for z near a component
    (where the expanded terms nearly cancel) and far from all, with particle and batch dims."""
    from pyro_vae.parts import DiagonalNormalMixture

    torch.manual_seed(0)
    K, D = 60, 7
    logits = torch.randn(K, requires_grad=True)
    loc = (3 * torch.randn(K, D)).requires_grad_()
    scale = (0.005 + torch.rand(K, D)).requires_grad_()
    near = loc[:20].detach() + 0.01 * torch.randn(20, D)
    z = torch.cat([near, 30 * torch.randn(20, D)]).reshape(2, 20, D).requires_grad_()  # (particles, batch, D)
    exact = dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                   dist.Normal(loc.double(), scale.double()).to_event(1)).log_prob(z.double())
    ours = DiagonalNormalMixture(logits, loc, scale).expand([20]).log_prob(z)
    assert ours.shape == (2, 20) and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), exact, rtol=1e-6, atol=1e-4), (ours.double() - exact).abs().max()
    for a, b in zip(torch.autograd.grad(ours.sum(), [logits, loc, scale, z]),
                    torch.autograd.grad(exact.sum(), [logits, loc, scale, z])):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4 * b.abs().max().item())

    # Its draws: each component as often as its weight, around its own mean.
    p = DiagonalNormalMixture(torch.tensor([0.0, math.log(3.0)]), torch.tensor([[-50.0], [50.0]]), torch.tensor([[1.0], [2.0]]))
    draws = p.expand([4]).sample((20000,))
    assert draws.shape == (20000, 4, 1)
    high = draws > 0
    assert abs(high.float().mean().item() - 0.75) < 0.01
    assert abs(draws[high].std().item() - 2.0) < 0.05 and abs(draws[~high].mean().item() + 50) < 0.05

    # The VampPrior is this law over its encoded pseudo-inputs; a low-rank guide keeps torch's mixture.
    for guide, family in [("diagonal", DiagonalNormalMixture), ("lowrank", dist.MixtureSameFamily)]:
        model = build_model("vae", 12, z_dim=3, hidden=8, prior="vamp", guide=guide, part_args={"prior": {"pseudo_inputs": 5}})
        assert type(model.prior()) is family
    with pytest.raises(pyro_vae.BadValue, match="logits"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(4, 2), torch.ones(4, 2))


def test_the_published_vampprior_pixels_start_near_black_and_stop_learning_outside_0_1(tmp_path):
    """pixels="hardtanh" (the published code's pseudo-inputs): started at 0.05 +- 0.01, clipped to
    [0, 1], no gradient to a pixel outside it; the default sigmoid ones start grey and always learn."""
    torch.manual_seed(0)
    published = build_model("vae", 784, z_dim=4, hidden=16, prior="vamp",
                            part_args={"prior": {"pseudo_inputs": 50, "pixels": "hardtanh"}})
    u = published.prior.raw_u.detach()
    assert abs(u.mean().item() - 0.05) < 1e-3 and abs(u.std().item() - 0.01) < 1e-3
    with torch.no_grad():
        published.prior.raw_u[0, :10] = -0.5  # pushed below black
        published.prior.raw_u[0, 10:20] = 1.5  # and above white
    z = torch.randn(8, 4)
    published.prior().log_prob(z).sum().backward()
    grad = published.prior.raw_u.grad
    assert (grad[0, :20] == 0).all() and (grad[0, 20:] != 0).any() and (grad[1:] != 0).any()

    grey = build_model("vae", 784, z_dim=4, hidden=16, prior="vamp", part_args={"prior": {"pseudo_inputs": 50}})
    assert abs(torch.sigmoid(grey.prior.raw_u).mean().item() - 0.5) < 0.01
    run = pyro_vae.train(dataset="digits", prior="vamp", part_args={"prior": {"pseudo_inputs": 5, "pixels": "hardtanh"}},
                         epochs=1, hidden=16, z_dim=2, out=tmp_path / "run", progress=False)
    model, _, _ = pyro_vae.load_run(run, "cpu")
    assert model.prior.pixels == "hardtanh"  # recorded in config.json and rebuilt
