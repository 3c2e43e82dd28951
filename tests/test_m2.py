"""The semi-supervised M2 (Kingma et al. 2014): Pyro's enumeration against sums over classes done
by hand, the labelled loss against the supervised ELBO plus the auxiliary term, the estimate of
log p(x) with y summed out against an exact answer, and the semi-supervised gain on `digits`."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.nn import functional as F

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.estimators import classifier_accuracy, importance_sampled_over_labels
from pyro_vae.runs import labels_alone

C, X, Z = 3, 6, 2


def small_m2(seed=0, **parts):
    pyro.set_rng_seed(seed)
    model = pyro_vae.build_model("m2", X, C, z_dim=Z, hidden=8, likelihood=parts.pop("likelihood", "normal"), **parts)
    return model


def by_hand(model, x, z):
    """Per class k and example: log p(k) + log p(z_k) + log p(x|z_k,k) - log q(z_k|x,k), a (C, B) tensor."""
    terms = []
    for k in range(C):
        y = F.one_hot(torch.full((len(x),), k), C).float()
        zk = z[k]
        log_p = -math.log(C) + dist.Normal(0, 1).log_prob(zk).sum(-1)
        log_p = log_p + model.decoder(torch.cat([zk, y], -1)).log_prob(x)
        terms.append(log_p - model.encoder(torch.cat([x, y], -1)).log_prob(zk))
    return torch.stack(terms)


def test_enumerated_elbo_is_the_sum_over_classes_by_hand():
    model = small_m2()
    x = torch.rand(5, X)
    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    pyro.set_rng_seed(7)  # the same draws of z, one per class and example, as the ELBO used
    trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    z = trace.nodes["z"]["value"].reshape(C, len(x), Z)
    log_q = F.log_softmax(model.classifier(x), -1).T  # (C, B)
    expected = (log_q.exp() * (by_hand(model, x, z) - log_q)).sum()
    assert torch.allclose(-loss, expected, rtol=1e-5, atol=1e-4), (-loss.item(), expected.item())


@pytest.mark.parametrize("alpha", [0.0, 46.0])
def test_with_every_label_observed_the_loss_is_the_supervised_elbo_plus_the_auxiliary_term(alpha):
    model = small_m2()
    model.alpha = alpha
    x, labels = torch.rand(5, X), torch.tensor([0, 2, 1, 1, 0])
    args = model.inputs(x, labels, C)
    assert bool(args[2].all())
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, *args)
    pyro.set_rng_seed(3)
    z = poutine.trace(model.guide).get_trace(*args).nodes["z"]["value"]
    y = F.one_hot(labels, C).float()
    supervised = (-math.log(C) + dist.Normal(0, 1).log_prob(z).sum(-1) + model.decoder(torch.cat([z, y], -1)).log_prob(x)
                  - model.encoder(torch.cat([x, y], -1)).log_prob(z)).sum()
    auxiliary = alpha * F.log_softmax(model.classifier(x), -1).gather(1, labels[:, None]).sum()
    assert torch.allclose(-loss, supervised + auxiliary, rtol=1e-5, atol=1e-4)


def test_a_mixed_batch_is_the_labelled_loss_plus_the_unlabelled_one():
    model = small_m2()
    model.alpha = 5.0
    x, labels = torch.rand(6, X), torch.tensor([0, -1, 2, -1, -1, 1])
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    known = labels >= 0
    pyro.set_rng_seed(11)
    mixed = elbo.differentiable_loss(model.model, model.guide, *model.inputs(x, labels, C))
    pyro.set_rng_seed(11)  # the labelled group draws first, then the unlabelled one, as in the mixed call
    part_l = elbo.differentiable_loss(model.model, model.guide, *model.inputs(x[known], labels[known], C))
    part_u = elbo.differentiable_loss(model.model, model.guide, x[~known])
    assert torch.allclose(mixed, part_l + part_u, rtol=1e-5, atol=1e-4)


class LinearGaussian(nn.Module):
    """p(x|z,y) = N(W z + B y, s^2 I): with p(z) = N(0, I), p(x|y) = N(B y, W W^T + s^2 I) exactly."""

    def __init__(self, *, in_dim, out_dim, net):
        super().__init__()
        torch.manual_seed(1)
        self.w = nn.Parameter(torch.randn(out_dim, Z))
        self.b = nn.Parameter(3 * torch.randn(out_dim, C))
        self.log_s = nn.Parameter(torch.tensor(-0.5))

    def forward(self, h):
        z, y = h[..., :Z], h[..., Z:]
        return dist.Normal(z @ self.w.T + y @ self.b.T, self.log_s.exp()).to_event(1)

    def exact_log_px(self, x):
        cov = self.w @ self.w.T + self.log_s.exp() ** 2 * torch.eye(X)
        per_class = torch.stack([dist.MultivariateNormal(self.b[:, k], cov).log_prob(x) for k in range(C)])
        return torch.logsumexp(per_class - math.log(C), 0)


class Posterior(nn.Module):
    """q(z|x,y) = the exact posterior of the LinearGaussian likelihood, its scale times `inflate`:
    N(S W^T (x - B y) / s^2, S) with S = (I + W^T W / s^2)^-1."""

    def __init__(self, likelihood, inflate=1.0):
        super().__init__()
        self.__dict__["likelihood"] = likelihood  # shared, not a second copy of its parameters
        self.inflate = inflate

    def forward(self, h):
        lik = self.likelihood
        x, y = h[..., :X], h[..., X:]
        s2 = lik.log_s.exp() ** 2
        cov = torch.linalg.inv(torch.eye(Z) + lik.w.T @ lik.w / s2)
        loc = (x - y @ lik.b.T) @ lik.w @ cov.T / s2
        return dist.MultivariateNormal(loc, self.inflate ** 2 * cov)


def linear_gaussian_m2(inflate):
    likelihood = LinearGaussian(in_dim=Z + C, out_dim=X, net=None)
    model = small_m2(likelihood=likelihood, guide=Posterior(likelihood, inflate)).eval()
    pyro.set_rng_seed(5)
    x = likelihood(torch.cat([torch.randn(8, Z), F.one_hot(torch.arange(8) % C, C).float()], -1)).sample()
    with torch.no_grad():
        return model, x, likelihood.exact_log_px(x)


def test_log_px_with_y_summed_out_is_exact_under_the_exact_posterior():
    model, x, exact = linear_gaussian_m2(inflate=1.0)
    log_px, elbo = importance_sampled_over_labels(model, x, C, samples=1)
    assert torch.allclose(log_px, exact, atol=1e-4), (log_px, exact)


def test_log_px_with_y_summed_out_bounds_the_elbo_and_converges_to_the_exact_answer():
    model, x, exact = linear_gaussian_m2(inflate=2.0)  # a proposal twice too wide
    gaps = []
    for k in (1, 100, 10000):
        pyro.set_rng_seed(0)
        log_px, elbo = importance_sampled_over_labels(model, x, C, samples=k)
        assert (log_px >= elbo - 1e-4).all()
        gaps.append((exact - log_px).abs().mean().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, gaps


# --- the CLI and the run directory --------------------------------------------------------------------

def test_m2_run_records_its_labels_and_evaluates(tmp_path, cli_error):
    run = tmp_path / "run"
    assert main(["train", "--model", "m2", "--labels", "50", "--epochs", "2", "--hidden", "16", "--z-dim", "4",
                 "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    kept = json.loads((run / "labelled.json").read_text())
    assert kept["labels"] == 50 and kept["per_class"] == [5] * 10 and len(set(kept["indices"])) == 50
    result = pyro_vae.evaluate_run(run, iw_samples=4, examples=50, device="cpu", progress=False, fidelity_samples=5)
    assert 0 <= result["test_accuracy"] <= 1 and result["test_log_likelihood"] >= result["test_elbo"]
    assert 0 <= result["label_fidelity"] <= 1
    assert main(["sample", str(run), "--label", "3", "--device", "cpu"]) == 0
    pyro_vae.train(resume=run, epochs=3, progress=False)
    assert json.loads((run / "labelled.json").read_text()) == kept  # the resumed run keeps the same labels
    cli_error(["train", "--model", "vae", "--labels", "50", "--out", str(tmp_path / "v")], "m2")
    cli_error(["train", "--model", "m2", "--elbo", "trace", "--out", str(tmp_path / "t")], "enum")
    cli_error(["train", "--model", "m2", "--prior", "conditional", "--out", str(tmp_path / "p")], "conditioning input")
    cli_error(["train", "--model", "m2", "--labels", "5000", "--out", str(tmp_path / "n")], "only")


def test_labels_are_balanced_and_seeded():
    a = pyro_vae.load_dataset("digits", labels=23, seed=4)
    b = pyro_vae.load_dataset("digits", labels=23, seed=4)
    c = pyro_vae.load_dataset("digits", labels=23, seed=5)
    ya = a.splits["train"][1]
    counts = torch.bincount(ya[ya >= 0], minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert torch.equal(ya, b.splits["train"][1]) and not torch.equal(ya, c.splits["train"][1])
    assert (a.splits["val"][1] == -1).all() and (a.splits["test"][1] >= 0).all()


def test_labelled_batches_apart_are_whole_and_spread_over_the_epoch():
    from pyro_vae.data import batch_count, batches_apart
    torch.manual_seed(0)
    for n, k, size in [(1000, 130, 64), (1000, 1, 64), (50, 50, 8), (300, 0, 32), (7, 3, 100)]:
        apart = torch.zeros(n, dtype=torch.bool)
        apart[torch.randperm(n)[:k]] = True
        order = batches_apart(apart, size)
        assert len(order) == batch_count(n, size, k)
        assert torch.equal(torch.cat(order).sort().values, torch.arange(n))  # every example once per epoch
        kinds = [int(apart[b].all()) - int(not apart[b].any()) for b in order]
        assert 0 not in kinds  # no batch mixes the two kinds
        own = [i for i, kind in enumerate(kinds) if kind == 1]
        assert len(own) == -(-k // size)
        if 1 < len(own) < len(order):  # spread, not bunched: gaps differ by at most one batch
            gaps = [b - a for a, b in zip(own, own[1:])]
            assert max(gaps) - min(gaps) <= 1
    # a fresh shuffle every epoch
    assert not torch.equal(torch.cat(batches_apart(apart, 4)), torch.cat(batches_apart(apart, 4)))


def test_separate_labelled_batches_reach_the_model_as_one_kind(tmp_path, cli_error, monkeypatch):
    from pyro_vae.models import M2
    data = pyro_vae.load_dataset("digits", labels=50, seed=0)
    model = pyro_vae.build_model("m2", data.x_dim, data.n_classes, z_dim=4, hidden=16)
    seen = []
    groups = M2.groups
    monkeypatch.setattr(M2, "groups", staticmethod(lambda x, y, labelled: seen.append(
        (int(labelled.sum()), len(x))) or groups(x, y, labelled)))
    pyro_vae.Trainer(model, compile="off", labelled_batches="separate").run(data, 1, 32)
    steps = seen[:-2:2]  # the model's call of each training step (the guide's repeats it; then validation)
    assert [n for n, _ in steps].count(0) == len(steps) - 2  # two batches hold the 50 labelled examples ...
    assert sorted(size for n, size in steps if n) == [18, 32] and all(n in (0, size) for n, size in steps)
    assert sum(size for _, size in steps) == len(data.splits["train"][0])  # ... and the rest one kind only
    run = tmp_path / "run"
    assert main(["train", "--model", "m2", "--labels", "50", "--labelled-batches", "separate", "--epochs", "1",
                 "--hidden", "16", "--z-dim", "4", "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["labelled_batches"] == "separate"
    cli_error(["train", "--model", "m2", "--labelled-batches", "separate", "--out", str(tmp_path / "a")],
              "--labels N")
    cli_error(["train", "--model", "vae", "--labelled-batches", "separate", "--out", str(tmp_path / "b")],
              "--labels N")


# --- the point of it: labels go further with the unlabelled data ----------------------------------------

@pytest.mark.slow
def test_m2_beats_the_classifier_trained_on_its_50_labels_alone():
    gains = []
    for seed in range(5):
        data = pyro_vae.load_dataset("digits", labels=50, seed=seed)
        pyro.set_rng_seed(seed)
        model = pyro_vae.build_model("m2", data.x_dim, data.n_classes, z_dim=M2_DIGITS["z_dim"],
                                     hidden=M2_DIGITS["hidden"])
        model.alpha = M2_DIGITS["alpha"]
        pyro_vae.fit(model, data, epochs=M2_DIGITS["epochs"], batch_size=64, progress=False)
        model.eval()
        gains.append(classifier_accuracy(model, *data.splits["test"]) - labels_alone(data, M2_DIGITS["hidden"], seed))
    mean = sum(gains) / len(gains)
    sd = (sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5
    # the 95% t-interval of the mean gain over the 5 seeds (4 df) lies above zero
    assert mean - 2.776 * sd / len(gains) ** 0.5 > 0, gains


M2_DIGITS = {"z_dim": 8, "hidden": 128, "alpha": 144.0, "epochs": 100}  # settled in the README's digits example
