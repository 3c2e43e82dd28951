"""The models: each a Pyro model/guide pair that reads like its graphical model.

x = the data, y = the conditioning variable (a one-hot label, an attribute vector or an image
part), z = the latent. Every model and guide runs its sample sites inside one batch plate named
"data" at dim -1, with each example's variables in the event dims; that is all the training and
evaluation code assumes (an outer particle plate may wrap them, so networks see (K, B, .) inputs).

`observed` names the site the bound is a likelihood of ("x", or "y" for cvae3).
"""

import pyro
from torch import nn
from torch.nn.functional import one_hot

from .errors import UserError
from .nets import cat
from .parts import GaussianNet, StandardNormal, make_likelihood


class VAE(nn.Module):
    """p(z) p(x|z), guide q(z|x).

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))"""

    observed = "x"
    conditional = False

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood="bernoulli"):
        super().__init__()
        self.prior = StandardNormal(z_dim)
        self.encoder = GaussianNet(x_dim, hidden, z_dim)
        self.decoder = make_likelihood(likelihood, z_dim, hidden, x_dim)

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
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

    def __init__(self, x_dim, y_dim, z_dim=50, hidden=400, likelihood="bernoulli"):
        super().__init__()
        self.prior = GaussianNet(y_dim, hidden, z_dim)
        self.encoder = GaussianNet(x_dim + y_dim, hidden, z_dim)
        self.decoder = make_likelihood(likelihood, z_dim + y_dim, hidden, x_dim)

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

    def __init__(self, x_dim, y_dim, z_dim=50, hidden=400, likelihood="bernoulli"):
        super().__init__()
        self.prior = StandardNormal(z_dim)
        self.encoder = GaussianNet(x_dim + y_dim, hidden, z_dim)
        self.decoder = make_likelihood(likelihood, z_dim + y_dim, hidden, x_dim)

    def model(self, x, y):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
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

    def __init__(self, x_dim, y_dim, z_dim=50, hidden=400, likelihood="categorical"):
        super().__init__()
        self.prior = GaussianNet(x_dim, hidden, z_dim)
        self.encoder = GaussianNet(x_dim + y_dim, hidden, z_dim)
        self.decoder = make_likelihood(likelihood, x_dim + z_dim, hidden, y_dim)

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

    def __init__(self, x_dim, y_dim, z_dim=50, hidden=400, likelihood="bernoulli"):
        super().__init__()
        self.prior = GaussianNet(y_dim, hidden, z_dim)
        self.encoder = GaussianNet(x_dim + y_dim, hidden, z_dim)
        self.decoder = make_likelihood(likelihood, z_dim, hidden, x_dim)

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


MODELS = {"vae": VAE, "cvae1": CVAE1, "cvae2": CVAE2, "cvae3": CVAE3, "cvae4": CVAE4}


def build_model(name, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood=None):
    """A model from the table by name; the likelihood defaults to the model's own default."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for what, value in [("z_dim", z_dim), ("hidden", hidden), ("x_dim", x_dim)]:
        if value <= 0:
            raise UserError(f"{what} must be positive, got {value}")
    cls = MODELS[name]
    kwargs = {} if likelihood is None else {"likelihood": likelihood}
    return cls(x_dim, y_dim, z_dim=z_dim, hidden=hidden, **kwargs)


def model_inputs(model, x, labels, n_classes):
    """The (x, y) that a model's model and guide take: y is the one-hot label when it conditions."""
    if not model.conditional:
        return x, None
    return x, one_hot(labels, n_classes).to(x.dtype)
