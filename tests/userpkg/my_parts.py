"""Parts a user writes in their own module, outside the package: a prior, a guide and a
likelihood with the keyword signatures of parts.py. Importable as `my_parts` with tests/userpkg
on the path (the tests put it there; a run directory records them as "my_parts:Name")."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nets import MLP


class LaplacePrior(nn.Module):
    """p(z) = prod Laplace(0, b) with a learned scale b."""

    conditional = False

    def __init__(self, z_dim, c_dim=0, net=None):
        super().__init__()
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, c=None):
        scale = nn.functional.softplus(self.raw_scale) + 1e-3
        return dist.Laplace(torch.zeros_like(scale), scale).to_event(1)


class StudentTGuide(nn.Module):
    """q(z|h) = Student-t with 5 degrees of freedom, location and scale from an MLP."""

    def __init__(self, *, in_dim, z_dim, net):
        super().__init__()
        self.net = net(in_dim, 2 * z_dim)

    def forward(self, h):
        loc, raw = self.net(h).chunk(2, -1)
        return dist.StudentT(5.0, loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


def two_layer_bernoulli(*, in_dim, out_dim, net):
    """A likelihood as a plain function: Bernoulli pixels from a two-layer MLP."""

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = MLP(in_dim, net.width, out_dim, layers=2)

        def forward(self, h):
            return dist.Bernoulli(logits=self.net(h)).to_event(1)

    return TwoLayer()
