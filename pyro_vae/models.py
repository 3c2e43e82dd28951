"""The models: each a Pyro model/guide pair that reads like its graphical model.

x = the data, y = the conditioning variable (a one-hot label, an attribute vector or an image
part), z = the latent. Every model and guide runs its sample sites inside one batch plate named
"data" at dim -1, with each example's variables in the event dims; that is all the training and
evaluation code assumes (an outer particle plate may wrap them, so networks see (K, B, .) inputs).

`observed` names the site the bound is a likelihood of ("x", or "y" for cvae3); `prior_input`
names what the prior is conditioned on (None, "y" or "x"). Priors, guides and likelihoods are
swappable parts (parts.py): a name from their table, or a part of your own.
"""

import pyro
import torch
from torch import nn
from torch.nn.functional import one_hot

from .errors import UserError
from .nets import cat
from .parts import GUIDES, LIKELIHOODS, PRIORS, make_part


class VAE(nn.Module):
    """p(z) p(x|z), guide q(z|x).

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))"""

    observed = "x"
    conditional = False
    prior_input = None

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli", prior="normal",
                 guide="diagonal"):
        super().__init__()
        self.encoder = make_part("guide", GUIDES, guide, x_dim, hidden, z_dim)
        self.prior = make_prior(self, prior, z_dim, 0, hidden, x_dim)
        self.decoder = make_part("likelihood", LIKELIHOODS, likelihood, z_dim, hidden, x_dim)

    def model(self, x, y=None):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(None))
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))


class CVAE1(nn.Module):
    """p(z|y) p(x|z,y), guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z,y)] - KL(q(z|x,y) || p(z|y))"""

    observed = "x"
    conditional = True
    prior_input = "y"

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli", prior="conditional",
                 guide="diagonal"):
        super().__init__()
        self.encoder = make_part("guide", GUIDES, guide, x_dim + y_dim, hidden, z_dim)
        self.prior = make_prior(self, prior, z_dim, y_dim, hidden, x_dim + y_dim)
        self.decoder = make_part("likelihood", LIKELIHOODS, likelihood, z_dim + y_dim, hidden, x_dim)

    def model(self, x, y):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.decoder(cat(z, y)), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(cat(x, y)))


class CVAE2(nn.Module):
    """p(z) p(x|z,y): z independent of y; guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z,y)] - KL(q(z|x,y) || p(z))"""

    observed = "x"
    conditional = True
    prior_input = None

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli", prior="normal",
                 guide="diagonal"):
        super().__init__()
        self.encoder = make_part("guide", GUIDES, guide, x_dim + y_dim, hidden, z_dim)
        self.prior = make_prior(self, prior, z_dim, 0, hidden, x_dim + y_dim)
        self.decoder = make_part("likelihood", LIKELIHOODS, likelihood, z_dim + y_dim, hidden, x_dim)

    def model(self, x, y):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(None))
            pyro.sample("x", self.decoder(cat(z, y)), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(cat(x, y)))


class CVAE3(nn.Module):
    """p(z|x) p(y|x,z): predicts y from x (Sohn et al. 2015); guide q(z|x,y).

    log p(y|x) >= E_q[log p(y|x,z)] - KL(q(z|x,y) || p(z|x))"""

    observed = "y"
    conditional = True
    prior_input = "x"

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="categorical", prior="conditional",
                 guide="diagonal"):
        super().__init__()
        self.encoder = make_part("guide", GUIDES, guide, x_dim + y_dim, hidden, z_dim)
        self.prior = make_prior(self, prior, z_dim, x_dim, hidden, x_dim + y_dim)
        self.decoder = make_part("likelihood", LIKELIHOODS, likelihood, x_dim + z_dim, hidden, y_dim)

    def model(self, x, y):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("y", self.decoder(cat(x, z)), obs=y)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(cat(x, y)))


class CVAE4(nn.Module):
    """p(z|y) p(x|z): y reaches x only through z (CMMA, Pandey & Dukkipati); guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z)] - KL(q(z|x,y) || p(z|y))"""

    observed = "x"
    conditional = True
    prior_input = "y"

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli", prior="conditional",
                 guide="diagonal"):
        super().__init__()
        self.encoder = make_part("guide", GUIDES, guide, x_dim + y_dim, hidden, z_dim)
        self.prior = make_prior(self, prior, z_dim, y_dim, hidden, x_dim + y_dim)
        self.decoder = make_part("likelihood", LIKELIHOODS, likelihood, z_dim, hidden, x_dim)

    def model(self, x, y):
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(cat(x, y)))


class AE(VAE):
    """Deterministic autoencoder: the VAE's model with a point-mass guide q(z|x) = delta(f(x)).

    The ELBO becomes log p(x|f(x)) + log p(f(x)): reconstruction plus a prior penalty on the
    code, with no entropy term, so nothing fills the latent space between the codes."""

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli", prior="normal",
                 guide="delta"):
        super().__init__(x_dim, y_dim, z_dim, hidden, likelihood, prior, guide)


class DAE(AE):
    """Denoising autoencoder: the AE whose encoder sees x with a share of its pixels dropped
    (training only); the decoder still has to give back the clean x."""

    drop = 0.25

    def guide(self, x, y=None):
        if self.training:
            x = x * torch.bernoulli(torch.full_like(x, 1 - self.drop))
        super().guide(x, y)


MODELS = {"vae": VAE, "cvae1": CVAE1, "cvae2": CVAE2, "cvae3": CVAE3, "cvae4": CVAE4, "ae": AE, "dae": DAE}


def make_prior(model, choice, z_dim, c_dim, hidden, guide_in_dim):
    """The prior part, refused where the model's graph gives it no input it needs."""
    name = type(model).__name__.lower()
    prior = make_part("prior", PRIORS, choice, z_dim, c_dim, hidden)
    label = f"prior {choice!r}" if isinstance(choice, str) else f"prior {type(prior).__name__}"
    if getattr(prior, "conditional", False) and model.prior_input is None:
        unconditional = [k for k, v in PRIORS.items() if not getattr(v, "conditional", True)]
        raise UserError(f"{label} needs a conditioning input, and {name}'s prior p(z) has none; "
                        f"choose from {', '.join(unconditional)}")
    if choice == "class-mean" and model.prior_input != "y":
        raise UserError(f"{label} needs a class label as the prior's input; {name}'s prior is "
                        f"conditioned on {model.prior_input or 'nothing'} (use it with cvae1 or cvae4)")
    if hasattr(prior, "attach"):
        if not getattr(model.encoder, "has_density", True):
            raise UserError(f"{label} is a mixture of the guide's densities; the delta guide has none")
        prior.attach(model.encoder, guide_in_dim)
    return prior


def build_model(name, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood=None, prior=None, guide=None):
    """A model from the table by name. Parts left as None take the model's own defaults; each may
    be a name from its table in parts.py, a constructor of your own, or a built module."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for what, value in [("z_dim", z_dim), ("hidden", hidden), ("x_dim", x_dim)]:
        if value <= 0:
            raise UserError(f"{what} must be positive, got {value}")
    parts = {k: v for k, v in [("likelihood", likelihood), ("prior", prior), ("guide", guide)] if v is not None}
    return MODELS[name](x_dim, y_dim, z_dim=z_dim, hidden=hidden, **parts)


def model_inputs(model, x, labels, n_classes):
    """The arguments a model's model and guide take: (x,), or (x, y) with y the one-hot label when
    it conditions. (No None placeholder: the JIT-compiled ELBOs trace tensors only.)"""
    if not model.conditional:
        return (x,)
    return x, one_hot(labels, n_classes).to(x.dtype)
