"""The swappable parts of a model: priors, guides and likelihoods (layer 3: imports nets).

Each part is an `nn.Module` whose forward returns a Pyro distribution over one example's
variable with event dim 1, so a model samples it inside its batch plate:

    prior:       prior(c) -> p(z|c)        c: the prior's conditioning input, or None
    guide:       encoder(h) -> q(z|h)      h: what the guide sees (x, or x and y)
    likelihood:  decoder(h) -> p(x|h)      h: what the decoder sees (z, or z and y)

Each kind is built with one keyword-only call, the same for every entry of its table:

    prior:       Prior(z_dim=, c_dim=, net=)       c_dim == 0 when the model gives it no input
    guide:       Guide(in_dim=, z_dim=, net=)
    likelihood:  Likelihood(in_dim=, out_dim=, net=)

where `net(in_dim, out_dim)` builds the part's network (a `nets.Body`: the kind chosen with
--net, its widths and activation; a part built by hand may be given a width, net=128). So a
constructor (or class) of your own with parameters of those names, in any order, plugs in
beside the built-in ones; so does a built module, or the import path "package.module:Name" of a
constructor (how a run directory records a part of your own). What the rest of the package may
read off a part besides its forward is the `PartContract` below.
"""

import importlib
import math
from typing import Protocol

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from .errors import BadType, BadValue, UserError, one_of, positive_int
from .nets import body

# --- priors -------------------------------------------------------------------------------


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(z) = sum_k pi_k N(z; loc_k, diag scale_k^2) over K components of D dimensions (logits
    (K,), loc and scale (K, D)): the mixture of the MoG prior and the VampPrior. The same law as
    MixtureSameFamily(Categorical, Normal.to_event(1)), whose log-density broadcasts a batch of z
    against every component, (B, K, D) values and as many again for the gradient. Here it is one
    (B, 2D + 1) x (2D + 1, K) product instead, from

        sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . s_k^-2 - 2 z . m_k s_k^-2 + m_k^2 . s_k^-2,

    taken in float64, since for the component z came from the three terms nearly cancel. The
    components are shared by the whole batch: `expand` only sets the batch shape."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, logits, loc, scale, batch_shape=torch.Size(), validate_args=None):
        if loc.dim() != 2 or scale.shape != loc.shape or logits.shape != loc.shape[:1]:
            raise BadValue(f"a mixture takes logits (K,), loc and scale (K, D), got {tuple(logits.shape)}, "
                           f"{tuple(loc.shape)}, {tuple(scale.shape)}")
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.logits, self.loc, self.scale, batch_shape, validate_args=self._validate_args)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(self._extended_shape(sample_shape)[:-1])
            return torch.normal(self.loc[k], self.scale[k])

    def log_prob(self, z):
        if self._validate_args:
            self._validate_sample(z)
        z64, loc, scale = z.double(), self.loc.double(), self.scale.double()
        precision = scale.pow(-2)
        scaled = loc * precision
        # log pi_k + log N(z; m_k, s_k) = [z^2, z, 1] . [-s_k^-2 / 2, m_k s_k^-2, c_k]: one product
        # gives every component's term, with no pass over the (..., K) result before the logsumexp
        constant = (self.logits.double().log_softmax(-1) - scale.log().sum(-1) - 0.5 * (loc * scaled).sum(-1)
                    - 0.5 * loc.shape[-1] * math.log(2 * math.pi))
        features = torch.cat([z64.pow(2), z64, torch.ones_like(z64[..., :1])], -1)
        weights = torch.cat([-0.5 * precision, scaled, constant[:, None]], -1)  # (K, 2D + 1)
        out = (features @ weights.T).logsumexp(-1).to(z.dtype)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))


class StandardNormal(nn.Module):
    """p(z) = N(0, I). Takes no conditioning input."""

    conditional = False

    def __init__(self, *, z_dim, c_dim=0, net=None):
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self, c=None):
        return dist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)


class ClassMean(nn.Module):
    """p(z|y) = N(mu_y, I) with a learned mean per class (seed 000: push mu towards mu_Y).
    Its input is the one-hot label, so mu_y = M y."""

    conditional = True

    def __init__(self, *, z_dim, c_dim, net=None):
        super().__init__()
        self.means = nn.Linear(c_dim, z_dim, bias=False)

    def forward(self, y):
        loc = self.means(y)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class GaussianNet(nn.Module):
    """A diagonal Gaussian whose mean and scale an MLP reads off its input: the guide q(z|x) or
    q(z|x,y), and (through `conditional_gaussian`) the conditional prior network p(z|c)."""

    conditional = True

    def __init__(self, *, in_dim, z_dim, net):
        super().__init__()
        self.net = body(net)(in_dim, 2 * z_dim)

    def forward(self, h):
        loc, raw_scale = self.net(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)


def conditional_gaussian(*, z_dim, c_dim, net):
    """p(z|c): the Gaussian network of the prior's input c."""
    return GaussianNet(in_dim=c_dim, z_dim=z_dim, net=net)


conditional_gaussian.conditional = True


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k pi_k N(mu_k, diag sigma_k^2), every parameter learned."""

    conditional = False

    def __init__(self, *, z_dim, c_dim=0, net=None, components=10):
        super().__init__()
        positive_int("components", components)
        self.locs = nn.Parameter(torch.randn(components, z_dim))
        self.raw_scales = nn.Parameter(torch.zeros(components, z_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, c=None):
        return DiagonalNormalMixture(self.logits, self.locs, F.softplus(self.raw_scales) + 1e-3)


class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q(z|u_k): the guide's encoder applied to K learned pseudo-inputs
    (Tomczak & Welling 2018). With a flow guide the components are its Gaussian base, which
    keeps log p(z) a single pass. The model hands it the encoder with `attach`.

    `pixels` is how a pseudo-input's pixels are kept in [0, 1] like the data's: "sigmoid" (the
    default: the sigmoid of a parameter started near 0, so grey images to begin with) or
    "hardtanh" (the published code's: the parameter clipped to [0, 1], started at 0.05 +- 0.01,
    near-black images; a pixel pushed outside [0, 1] gets no gradient there)."""

    conditional = False
    PIXELS = ("sigmoid", "hardtanh")

    def __init__(self, *, z_dim, c_dim=0, net=None, pseudo_inputs=50, pixels="sigmoid"):
        super().__init__()
        self.pseudo_inputs = positive_int("pseudo_inputs", pseudo_inputs)
        self.pixels = one_of("pixels", pixels, self.PIXELS)
        self.encoder = None

    def attach(self, encoder, in_dim):
        # Not a submodule: the encoder's weights belong to the guide and are registered there.
        self.__dict__["encoder"] = getattr(encoder, "base", encoder)
        if self.pseudo_inputs * in_dim > 2 ** 28:  # 1 GiB of float32 pseudo-inputs
            raise BadValue(f"pseudo_inputs {self.pseudo_inputs} of {in_dim} values each would take over 1 GiB")
        spread, centre = (0.1, 0.0) if self.pixels == "sigmoid" else (0.01, 0.05)
        self.raw_u = nn.Parameter(spread * torch.randn(self.pseudo_inputs, in_dim) + centre)

    def forward(self, c=None):
        if self.encoder is None:
            raise UserError("the VampPrior needs the guide's encoder: the model did not attach it")
        u = torch.sigmoid(self.raw_u) if self.pixels == "sigmoid" else F.hardtanh(self.raw_u, 0.0, 1.0)
        q = self.encoder(u)
        uniform = torch.zeros(self.pseudo_inputs, device=self.raw_u.device)
        normal = q.base_dist if isinstance(q, dist.Independent) else None
        if isinstance(normal, dist.Normal) and q.reinterpreted_batch_ndims == 1:
            return DiagonalNormalMixture(uniform, normal.loc, normal.scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=uniform), q)  # another guide's family


PRIORS = {
    "normal": StandardNormal,
    "class-mean": ClassMean,
    "conditional": conditional_gaussian,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
}

# --- guides -------------------------------------------------------------------------------


class LowRankGaussian(nn.Module):
    """q(z|h) = N(mu, W W^T + diag d) with W of rank `rank`: correlated posteriors.
    With rank = z_dim it is a full-covariance Gaussian."""

    def __init__(self, *, in_dim, z_dim, net, rank=2):
        super().__init__()
        positive_int("rank", rank)
        self.z_dim, self.rank = z_dim, rank
        self.net = body(net)(in_dim, z_dim * (2 + rank))

    def forward(self, h):
        out = self.net(h)
        loc, raw_diag = out[..., : self.z_dim], out[..., self.z_dim: 2 * self.z_dim]
        factor = out[..., 2 * self.z_dim:].reshape(*out.shape[:-1], self.z_dim, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + 1e-5)


class FlowGuide(nn.Module):
    """q(z|h): a diagonal Gaussian from the encoder network pushed through inverse
    autoregressive flows (`pyro.distributions.transforms.affine_autoregressive`). Sampling
    and the density of its own samples each take one pass."""

    def __init__(self, *, in_dim, z_dim, net, flows=2):
        super().__init__()
        positive_int("flows", flows)
        self.base = GaussianNet(in_dim=in_dim, z_dim=z_dim, net=net)
        self.flows = nn.ModuleList([T.affine_autoregressive(z_dim, hidden_dims=[max(body(net).width, 2 * z_dim)])
                                    for _ in range(flows)])

    def forward(self, h):
        return dist.TransformedDistribution(self.base(h), list(self.flows))


class DeltaGuide(nn.Module):
    """q(z|h) = delta(f(h)): a point mass, which makes the model an autoencoder. It has no
    density, so no importance-sampled log-likelihood."""

    has_density = False

    def __init__(self, *, in_dim, z_dim, net):
        super().__init__()
        self.net = body(net)(in_dim, z_dim)

    def forward(self, h):
        return dist.Delta(self.net(h), event_dim=1)


GUIDES = {"diagonal": GaussianNet, "lowrank": LowRankGaussian, "iaf": FlowGuide, "delta": DeltaGuide}

# --- likelihoods --------------------------------------------------------------------------


class BernoulliDecoder(nn.Module):
    """p(x|h) = prod_i Bernoulli(x_i | sigmoid(logit_i(h))), for binarized pixels."""

    def __init__(self, *, in_dim, out_dim, net):
        super().__init__()
        self.net = body(net)(in_dim, out_dim)

    def forward(self, h):
        return dist.Bernoulli(logits=self.net(h)).to_event(1)


class ContinuousBernoulliDecoder(BernoulliDecoder):
    """p(x|h) = prod_i ContinuousBernoulli(x_i | logit_i(h)) (Loaiza-Ganem & Cunningham 2019):
    a proper density on grey pixels in [0, 1]."""

    def forward(self, h):
        return dist.ContinuousBernoulli(logits=self.net(h)).to_event(1)


class NormalDecoder(nn.Module):
    """p(x|h) = N(sigmoid(mean(h)), sigma^2) per pixel; sigma learned per pixel, or fixed
    when `scale` is given. A density on grey pixels: its log-likelihoods can be positive.
    (For real values outside [0, 1], `gaussian`.)"""

    def __init__(self, *, in_dim, out_dim, net, scale=None):
        super().__init__()
        self.net = body(net)(in_dim, out_dim)
        self.fixed_scale = scale
        if scale is None:
            self.raw_scale = nn.Parameter(torch.full((out_dim,), -1.0))

    def forward(self, h):
        loc = torch.sigmoid(self.net(h))
        scale = self.fixed_scale if self.fixed_scale is not None else F.softplus(self.raw_scale) + 1e-3
        return dist.Normal(loc, scale).to_event(1)


class CategoricalDecoder(nn.Module):
    """p(y|h) = Categorical(softmax(logits(h))) over a one-hot y: a class label as the output."""

    def __init__(self, *, in_dim, out_dim, net):
        super().__init__()
        self.net = body(net)(in_dim, out_dim)

    def forward(self, h):
        return dist.OneHotCategorical(logits=self.net(h))


class GaussianDecoder(nn.Module):
    """p(x|h) = N(mean(h), sigma^2) per value, the mean unbounded and sigma learned per value:
    for real-valued data (standardised measurements, continuous covariates)."""

    def __init__(self, *, in_dim, out_dim, net):
        super().__init__()
        self.net = body(net)(in_dim, out_dim)
        self.raw_scale = nn.Parameter(torch.zeros(out_dim))

    def scale(self):
        return F.softplus(self.raw_scale) + 1e-3

    def forward(self, h):
        return dist.Normal(self.net(h), self.scale()).to_event(1)


class StudentTDecoder(GaussianDecoder):
    """p(x|h) = Student-t(nu, mean(h), sigma) per value, nu > 1 learned (one for all values):
    real-valued data with heavy tails or outliers, which a Gaussian would chase."""

    def __init__(self, *, in_dim, out_dim, net):
        super().__init__(in_dim=in_dim, out_dim=out_dim, net=net)
        self.raw_df = nn.Parameter(torch.tensor(2.0))

    def forward(self, h):
        df = 1.0 + F.softplus(self.raw_df)  # > 1, so the mean the figures draw exists
        return dist.StudentT(df, self.net(h), self.scale()).to_event(1)


LIKELIHOODS = {
    "bernoulli": BernoulliDecoder,
    "cbernoulli": ContinuousBernoulliDecoder,
    "normal": NormalDecoder,
    "gaussian": GaussianDecoder,
    "studentt": StudentTDecoder,
    "categorical": CategoricalDecoder,
}


# The likelihoods of x; "categorical" is over a class label (cvae3's y).
PIXEL_LIKELIHOODS = ("bernoulli", "cbernoulli", "normal", "gaussian", "studentt")
# The likelihoods for values in [0, 1] (pixels), and those for any real value.
UNIT_LIKELIHOODS = ("bernoulli", "cbernoulli", "normal")
REAL_LIKELIHOODS = ("gaussian", "studentt")
# Likelihoods over grey levels or real values: the data pipeline binarizes pixels for every other one.
GREY_LIKELIHOODS = ("cbernoulli", "normal") + REAL_LIKELIHOODS
# What cvae3 predicts y with, by what y is: a class label, attributes (0/1 each), covariates.
Y_LIKELIHOODS = {"label": ("categorical",), "attributes": ("bernoulli",), "covariates": REAL_LIKELIHOODS}


class PartContract(Protocol):
    """What the models, estimators and runs may assume of a part, beyond `forward` returning a
    distribution with event dim 1 (every attribute is optional: the defaults hold without it).

    conditional   a prior: whether it needs an input c (default False for a prior of your own)
    has_density   a guide: False for a point mass, which has no importance-sampled estimate
    attach(encoder, in_dim)
                  a prior built from the guide (the VampPrior): the model calls it once, with the
                  guide's encoder and its input size, right after building both
    """

    def forward(self, h): ...


def import_path(obj):
    """"package.module:Name" of a class or function that another process can import again, or
    None for one it cannot (defined in __main__ or inside a function)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in name:
        return None
    try:
        found = import_object(f"{module}:{name}")
    except UserError:
        return None
    return f"{module}:{name}" if found is obj else None


def import_object(path):
    """The object an import path "package.module:Name" names, or a UserError saying why not."""
    module_name, _, name = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for attr in name.split("."):
            obj = getattr(obj, attr)
    except Exception as e:  # ImportError, AttributeError, or the module's own failure on import
        raise UserError(f"cannot import {path!r} ({type(e).__name__}: {e}); make its module importable "
                        f"(installed, or on PYTHONPATH)") from None
    return obj


def constructor(kind, table, choice):
    """What builds a part: the table's entry for a name, the object an import path "module:Name"
    names, or `choice` itself (a constructor, a class or an already built module)."""
    if isinstance(choice, str):
        if ":" in choice:
            return import_object(choice)
        if choice not in table:
            raise UserError(f"unknown {kind} {choice!r}; choose from {', '.join(table)}")
        return table[choice]
    if isinstance(choice, nn.Module) or callable(choice):
        return choice
    raise UserError(f"a {kind} is a name, an import path, a constructor or an nn.Module, not {type(choice).__name__}")


def make_part(kind, table, choice, **sizes):
    """A part from its name, an import path "module:Name", a constructor or class taking the
    kind's keyword arguments, or a built module."""
    made = constructor(kind, table, choice)
    if isinstance(made, nn.Module):
        return made
    name = repr(choice) if isinstance(choice, str) else getattr(made, "__qualname__", repr(made))
    try:
        part = made(**sizes)
    except TypeError as e:  # not a constructor of this kind (e.g. builtins:print)
        hint = ""
        if "hidden" in str(e) or "'net'" in str(e):
            hint = "; since 0.2 a part takes net= (call net(in_dim, out_dim) for its network) instead of hidden="
        raise BadType(f"{kind} {name} cannot be built as {kind}({', '.join(f'{k}=' for k in sizes)}): {e}{hint}") \
            from None
    if not isinstance(part, nn.Module):
        raise BadType(f"{kind} {name} gave a {type(part).__name__}, not an nn.Module whose forward returns a "
                      f"distribution")
    return part
