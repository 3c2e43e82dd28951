"""The swappable parts of a model: priors p(z) or p(z|c), guides q(z|.), likelihoods p(x|.).

Each part is an `nn.Module` whose forward returns a Pyro distribution over one example with
event dim 1, so a model samples it inside its batch plate: `pyro.sample("z", prior(c))`.
A part written in user code only has to follow that interface to plug in.
"""

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError
from .nets import MLP


class StandardNormal(nn.Module):
    """p(z) = N(0, I). Takes no conditioning input."""

    def __init__(self, z_dim):
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self, c=None):
        return dist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)


class GaussianNet(nn.Module):
    """A diagonal Gaussian whose mean and scale an MLP reads off its input:
    the guide q(z|x) or q(z|x,y), and the conditional prior p(z|c)."""

    def __init__(self, in_dim, hidden, z_dim):
        super().__init__()
        self.net = MLP(in_dim, hidden, 2 * z_dim)

    def forward(self, h):
        loc, raw_scale = self.net(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)


class BernoulliDecoder(nn.Module):
    """p(x|h) = prod_i Bernoulli(x_i | sigmoid(logit_i(h))), for binarized pixels."""

    def __init__(self, in_dim, hidden, out_dim):
        super().__init__()
        self.net = MLP(in_dim, hidden, out_dim)

    def forward(self, h):
        return dist.Bernoulli(logits=self.net(h)).to_event(1)


class CategoricalDecoder(nn.Module):
    """p(y|h) = Categorical(softmax(logits(h))) over a one-hot y: a class label as the output."""

    def __init__(self, in_dim, hidden, out_dim):
        super().__init__()
        self.net = MLP(in_dim, hidden, out_dim)

    def forward(self, h):
        return dist.OneHotCategorical(logits=self.net(h))


LIKELIHOODS = {"bernoulli": BernoulliDecoder, "categorical": CategoricalDecoder}


def make_likelihood(name, in_dim, hidden, out_dim):
    if name not in LIKELIHOODS:
        raise UserError(f"unknown likelihood {name!r}; choose from {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](in_dim, hidden, out_dim)
