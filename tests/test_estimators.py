"""The ELBO and the importance-sampled log-likelihood against answers known in closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae import build_model, elbo_per_example, importance_sampled, make_elbo


class LinearGaussian:
    """Probabilistic PCA: z ~ N(0, I), x|z ~ N(Wz + b, s^2 I), so p(x) = N(b, WW^T + s^2 I) exactly.

    The guide is a diagonal Gaussian: the exact posterior's mean shifted by `shift` with its
    variances inflated by `inflate` (a deliberately imperfect q), or the exact full-covariance
    posterior when exact=True."""

    def __init__(self, x_dim=6, z_dim=3, noise=0.5, shift=0.3, inflate=1.6, exact=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(x_dim, generator=g, dtype=torch.float64)
        self.noise, self.shift, self.inflate, self.exact = noise, shift, inflate, exact
        M = self.W.T @ self.W + noise**2 * torch.eye(z_dim, dtype=torch.float64)
        self.post_cov = noise**2 * torch.linalg.inv(M)
        self.post_gain = torch.linalg.solve(M, self.W.T)  # posterior mean = gain (x - b)
        self.z_dim = z_dim

    def marginal(self):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(len(self.b), dtype=torch.float64)
        return dist.MultivariateNormal(self.b, cov)

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z_dim, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def guide(self, x, y=None):
        mean = (x - self.b) @ self.post_gain.T
        with pyro.plate("data", x.shape[0]):
            if self.exact:
                pyro.sample("z", dist.MultivariateNormal(mean, self.post_cov))
            else:
                scale = (self.inflate * self.post_cov.diagonal()).sqrt()
                pyro.sample("z", dist.Normal(mean + self.shift, scale).to_event(1))


def test_importance_sampled_log_likelihood_converges_to_the_exact_one():
    pyro.set_rng_seed(0)
    lg = LinearGaussian()
    x = lg.marginal().sample((300,))
    exact = lg.marginal().log_prob(x)
    errors = {}
    for k in (1, 10, 100, 5000):
        log_lik, elbo = importance_sampled(lg.model, lg.guide, x, None, samples=k, max_batch=1 << 15)
        errors[k] = (log_lik - exact).mean().abs().item()
        assert (log_lik >= elbo - 1e-9).all()  # logmeanexp >= mean on the same draws
    # The bias shrinks as K grows and is small at K = 5000.
    assert errors[1] > errors[10] > errors[100] > errors[5000]
    assert errors[5000] < 0.02
    # The ELBO is a lower bound with a visible gap for this imperfect guide.
    _, elbo = importance_sampled(lg.model, lg.guide, x, None, samples=2000)
    assert (exact - elbo).mean() > 0.1
    assert (elbo <= exact + 1e-9).float().mean() == 1.0


def test_exact_posterior_guide_gives_exact_log_likelihood_for_any_k():
    lg = LinearGaussian(exact=True)
    x = lg.marginal().sample((50,))
    log_lik, elbo = importance_sampled(lg.model, lg.guide, x, None, samples=3)
    # With q = p(z|x) every weight equals p(x): no variance, no bias, and the ELBO is tight.
    assert torch.allclose(log_lik, lg.marginal().log_prob(x), atol=1e-8)
    assert torch.allclose(elbo, lg.marginal().log_prob(x), atol=1e-8)


def test_chunking_does_not_change_the_estimate():
    lg = LinearGaussian()
    x = lg.marginal().sample((100,))
    exact = lg.marginal().log_prob(x).mean()
    a, _ = importance_sampled(lg.model, lg.guide, x, None, samples=500, max_batch=1 << 20)
    b, _ = importance_sampled(lg.model, lg.guide, x, None, samples=500, max_batch=333)  # 1 example, 2 particle chunks
    # Different chunkings draw different z, so they agree only up to Monte Carlo noise
    # (about 0.03 nats on this mean); neither is biased by the split.
    assert (a.mean() - b.mean()).abs() < 0.1
    assert (a.mean() - exact).abs() < 0.1 and (b.mean() - exact).abs() < 0.1


def small_vae_batch():
    model = build_model("vae", x_dim=12, z_dim=3, hidden=16)
    x = torch.bernoulli(torch.full((7, 12), 0.4))
    return model, x


def test_meanfield_elbo_equals_analytic_kl_plus_monte_carlo_reconstruction():
    model, x = small_vae_batch()
    pyro.set_rng_seed(1)
    loss = make_elbo("meanfield").differentiable_loss(model.model, model.guide, x, None)
    pyro.set_rng_seed(1)
    q = model.encoder(x).base_dist  # Normal(loc, scale), shape (7, 3)
    z = q.rsample()  # the same noise the guide drew
    recon = torch.distributions.Bernoulli(logits=model.decoder.net(z)).log_prob(x).sum()
    kl = kl_divergence(q, torch.distributions.Normal(torch.zeros(3), torch.ones(3))).sum()
    assert torch.allclose(-loss, recon - kl, atol=1e-4)


def test_trace_elbo_and_per_example_elbo_equal_the_hand_computed_one():
    model, x = small_vae_batch()
    pyro.set_rng_seed(2)
    loss = make_elbo("trace").differentiable_loss(model.model, model.guide, x, None)
    pyro.set_rng_seed(2)
    per_example = elbo_per_example(model.model, model.guide, x, None)
    pyro.set_rng_seed(2)
    q = model.encoder(x).base_dist
    z = q.rsample()
    p_z = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    by_hand = (torch.distributions.Bernoulli(logits=model.decoder.net(z)).log_prob(x).sum(-1)
               + p_z.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
    assert torch.allclose(-loss, by_hand.sum(), atol=1e-4)
    assert torch.allclose(per_example, by_hand, atol=1e-4)


def test_iwae_bound_with_one_sample_is_the_elbo():
    model, x = small_vae_batch()
    pyro.set_rng_seed(5)
    log_lik, elbo = importance_sampled(model.model, model.guide, x, None, samples=1)
    assert torch.allclose(log_lik, elbo)
    assert math.isfinite(log_lik.sum().item())


@pytest.mark.parametrize("k", [7, 64])
def test_estimate_shape_is_per_example(k):
    model, x = small_vae_batch()
    log_lik, elbo = importance_sampled(model.model, model.guide, x, None, samples=k, max_batch=20)
    assert log_lik.shape == elbo.shape == (7,)


def test_latent_means_of_a_flow_guide_average_its_own_draws_without_running_the_decoder():
    """A flow guide has no closed-form mean: latent_means averages 64 draws of q(z|x) alone. (It
    used to draw them through the whole model, 64 decoder passes per example: a conv decoder's
    latent figure of 5000 test images took over 20 GB.)"""
    from pyro_vae import latent_means

    pyro.set_rng_seed(0)
    model = build_model("vae", 12, z_dim=3, hidden=8, guide="iaf")
    calls = []
    model.decoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(5, 12).round()
    means = latent_means(model, x)
    assert not calls, "the decoder ran"
    q = pyro.poutine.trace(model.guide).get_trace(x).nodes["z"]["fn"]
    draws = q.sample((20000,))
    # 64 draws: within 4 standard errors of the mean of 20000
    assert means.shape == (5, 3) and ((means - draws.mean(0)).abs() < 4 * draws.std(0) / 8).all()


def test_progress_lines_skip_an_evaluation_s_first_second(monkeypatch, capsys):
    """Written to a file or a pipe, evaluation progress is a line per tenth with the time left; a
    short evaluation printed ten lines of '0 s, about 0 s left' into every log (compare's above
    all). Now none in the first second, then every tenth reached, its time and estimate right."""
    from pyro_vae import estimators

    clock = [100.0]
    monkeypatch.setattr(estimators.time, "monotonic", lambda: clock[0])
    quick = estimators.TenthLines("log-likelihood (K=5)", 100)
    for _ in range(10):
        clock[0] += 0.05
        quick.update(10)
    assert capsys.readouterr().err == ""

    slow = estimators.TenthLines("log-likelihood (K=5000)", 100)
    for _ in range(10):
        clock[0] += 0.4  # 4 s in all: the first two tenths fall in the first second
        slow.update(10)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(p) for p in range(30, 101, 10)]
    assert lines[0] == "log-likelihood (K=5000): 30% of 100 examples, 1 s, about 3 s left"
    assert lines[-1] == "log-likelihood (K=5000): 100% of 100 examples, 4 s, about 0 s left"
