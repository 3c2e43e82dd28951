"""Networks: plain MLPs, and the one helper that joins inputs that carry particle dimensions
(layer 2: imports nothing of the package)."""

import torch
from torch import nn


class MLP(nn.Sequential):
    """in_dim -> hidden (softplus) -> ... -> out_dim, as in Pyro's VAE example."""

    def __init__(self, in_dim, hidden, out_dim, layers=1):
        sizes = [in_dim] + [hidden] * layers
        blocks = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            blocks += [nn.Linear(a, b), nn.Softplus()]
        super().__init__(*blocks, nn.Linear(sizes[-1], out_dim))


def cat(*inputs):
    """Concatenate on the last dim after broadcasting the leading ones.

    z may carry extra leading particle dims (K, B, Z) while y is (B, Y): both become (K, B, .)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in inputs], dim=-1)
