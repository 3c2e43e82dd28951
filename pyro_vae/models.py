"""The models: each a Pyro model/guide pair that reads like its graphical model (layer 4: imports parts).

x = the data, y = the conditioning variable (a one-hot label, an attribute vector or an image
part), z = the latent. `ModelContract` below is everything the training, estimators, figures
and runs may assume of a model; each class states its graph there once, as data:

    observed        the site the bound is a likelihood of: "x", or "y" (cvae3)
    guide_input     what q(z|.) reads: ("x",) or ("x", "y")
    prior_input     what p(z|.) is conditioned on: None, "x" or "y"
    decoder_input   what the likelihood reads: ("z",), ("z", "y") or ("x", "z")
    defaults        the prior, guide and likelihood it takes when none is named
    likelihoods, guides   the names it accepts (None: any)

and writes its `model()` out, since reading it as the graph is the point. `LatentVariableModel`
sizes and builds the three parts from those declarations (the guide first: a VampPrior is made
of it), and holds the one guide they share. The configuration, the CLI's help and the checks
read the declarations from the class, so a new model is one class here plus a line in MODELS.
"""

import dataclasses
from typing import ClassVar, Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.functional import one_hot

from .errors import BadValue, UserError, machine_memory, positive_int
from .nets import NETS, Body, cat, widths
from .parts import GUIDES, LIKELIHOODS, PIXEL_LIKELIHOODS, PRIORS, Y_LIKELIHOODS, constructor, make_part


@runtime_checkable
class ModelContract(Protocol):
    """What the rest of the package may assume of a model (and all a model of your own needs).

    - `model(x, y)` and `guide(x, y)` (y only when `conditional`) put every sample site inside
      one `pyro.plate("data", len(x))` at dim -1, with each example's variables in its event
      dims, so an outer particle plate at dim -2 vectorizes them; the latent site is "z".
    - `observed` names the observed site; `conditional` says whether the label y is an input;
      `prior_input` names what the prior reads (None, "x" or "y").
    - `encoder`, `prior` and `decoder` are the parts (parts.py): modules whose forward returns
      the distribution of q(z|.), p(z|.) and p(observed|.); the figures read means off them.
    """

    observed: str
    conditional: bool
    prior_input: str | None
    encoder: nn.Module
    prior: nn.Module
    decoder: nn.Module

    def model(self, x, y=None): ...

    def guide(self, x, y=None): ...


class LatentVariableModel(nn.Module):
    """Builds the guide, prior and likelihood parts a subclass's declarations ask for, sized from
    x_dim, y_dim and z_dim, and runs the guide q(z | guide_input). Subclasses write `model()`.

    `net` says how every part builds its network: a `nets.Body`, or a dict of one per role
    ("encoder", "decoder", "prior"); None: the fully connected body of `hidden` widths."""

    observed: ClassVar[str] = "x"
    guide_input: ClassVar[tuple] = ("x",)
    prior_input: ClassVar[str | None] = None
    decoder_input: ClassVar[tuple] = ("z",)
    defaults: ClassVar[dict] = {"prior": "normal", "guide": "diagonal", "likelihood": "bernoulli", "elbo": "trace"}
    elbos: ClassVar[tuple | None] = None  # the objectives it accepts (None: any)
    likelihoods: ClassVar[tuple | None] = PIXEL_LIKELIHOODS
    guides: ClassVar[tuple | None] = None
    conditional: ClassVar[bool] = False  # whether model and guide take y: set from guide_input

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.conditional = "y" in cls.guide_input

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood=None, prior=None, guide=None, net=None,
                 part_args=None):
        super().__init__()
        parts = self.choose_parts(likelihood=likelihood, prior=prior, guide=guide)
        self.part_names = {kind: part if isinstance(part, str) else getattr(part, "__qualname__", type(part).__name__)
                           for kind, part in parts.items()}  # what was chosen, for titles and logs
        args = {kind: dict((part_args or {}).get(kind) or {}) for kind in ("guide", "prior", "likelihood")}
        self.dims = dims = {"x": x_dim, "y": y_dim, "z": z_dim}
        self.nets = net if isinstance(net, dict) else dict.fromkeys(ROLES, net or Body(hidden=widths(hidden)))
        guide_in = sum(dims[v] for v in self.guide_input)
        self.encoder = make_part("guide", GUIDES, parts["guide"], in_dim=guide_in, z_dim=z_dim,
                                 net=self.net_for("encoder", self.guide_input), **args["guide"])
        make_prior = constructor("prior", PRIORS, parts["prior"])
        self._check_prior(parts["prior"], make_prior)
        self.prior = make_part("prior", PRIORS, parts["prior"], z_dim=z_dim,
                               c_dim=dims[self.prior_input] if self.prior_input else 0,
                               net=self.net_for("prior", (self.prior_input,)), **args["prior"])
        if hasattr(self.prior, "attach"):  # a VampPrior is made of the guide's encoder
            self.prior.attach(self.encoder, guide_in)
        self.decoder = make_part("likelihood", LIKELIHOODS, parts["likelihood"],
                                 in_dim=sum(dims[v] for v in self.decoder_input), out_dim=dims[self.observed],
                                 net=self.net_for("decoder", self.decoder_input), **args["likelihood"])

    def net_for(self, role, reads):
        """The Body of a role's network, told whether its input starts with x."""
        return dataclasses.replace(self.nets[role], reads_x=reads[0] == "x")

    @classmethod
    def name(cls):
        return next((k for k, v in MODELS.items() if v is cls), cls.__name__.lower())

    @classmethod
    def choose_parts(cls, likelihood=None, prior=None, guide=None):
        """The parts asked for, with the class's defaults where None, checked against the names it
        accepts: {"likelihood": ..., "prior": ..., "guide": ...}."""
        chosen = {k: v if v is not None else cls.defaults[k]
                  for k, v in (("likelihood", likelihood), ("prior", prior), ("guide", guide))}
        name = cls.name()
        if cls.guides is not None and chosen["guide"] in GUIDES and chosen["guide"] not in cls.guides:
            raise UserError(f"{name} is the autoencoder: its guide is {' or '.join(cls.guides)}, not "
                            f"{chosen['guide']!r} (use --model vae)")
        lik = chosen["likelihood"]
        if cls.likelihoods is not None and lik in LIKELIHOODS and lik not in cls.likelihoods:
            if cls.observed == "y":
                raise UserError(f"{name} predicts y: its likelihood is one over y "
                                f"({' or '.join(cls.likelihoods)}), not {lik!r}")
            raise UserError(f"{name} models x: the {lik} likelihood (over a class label) only fits cvae3; "
                            f"choose from {', '.join(cls.likelihoods)}")
        return chosen

    def _check_prior(self, choice, make_prior):
        """Refuse, before it is built, a prior that the graph cannot feed or the guide cannot make."""
        name = self.name()
        label = f"prior {choice!r}" if isinstance(choice, str) else \
            f"prior {getattr(make_prior, '__name__', type(make_prior).__name__)}"
        if getattr(make_prior, "conditional", False) and self.prior_input is None:
            unconditional = [k for k, v in PRIORS.items() if not getattr(v, "conditional", False)]
            raise UserError(f"{label} needs a conditioning input, and {name}'s prior p(z) has none; "
                            f"choose from {', '.join(unconditional)}")
        if choice == "class-mean" and self.prior_input != "y":
            raise UserError(f"{label} needs a class label as the prior's input; {name}'s prior is "
                            f"conditioned on {self.prior_input or 'nothing'} (use it with cvae1 or cvae4)")
        if hasattr(make_prior, "attach") and not getattr(self.encoder, "has_density", True):
            raise UserError(f"{label} is a mixture of the guide's densities; the delta guide has none")

    def register(self, *parts):
        """`pyro.module` for each part named: its parameters join Pyro's param store and the trace."""
        for name in parts:
            pyro.module(name, getattr(self, name))

    def guide(self, x, y=None):
        """q(z|x), or q(z|x,y) for the conditional models."""
        self.register("encoder")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(cat(x, y) if self.conditional else x))


class VAE(LatentVariableModel):
    """p(z) p(x|z), guide q(z|x).

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))"""

    def model(self, x, y=None):
        self.register("prior", "decoder")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(None))
            pyro.sample("x", self.decoder(z), obs=x)


class ConditionalVAE(LatentVariableModel):
    """What the four conditional graphs share: the guide q(z|x,y) and a conditional prior by default."""

    guide_input = ("x", "y")
    defaults = {**LatentVariableModel.defaults, "prior": "conditional"}


class CVAE1(ConditionalVAE):
    """p(z|y) p(x|z,y), guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z,y)] - KL(q(z|x,y) || p(z|y))"""

    prior_input = "y"
    decoder_input = ("z", "y")

    def model(self, x, y):
        self.register("prior", "decoder")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.decoder(cat(z, y)), obs=x)


class CVAE2(ConditionalVAE):
    """p(z) p(x|z,y): z independent of y; guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z,y)] - KL(q(z|x,y) || p(z))"""

    decoder_input = ("z", "y")
    defaults = {**ConditionalVAE.defaults, "prior": "normal"}

    def model(self, x, y):
        self.register("prior", "decoder")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(None))
            pyro.sample("x", self.decoder(cat(z, y)), obs=x)


class CVAE3(ConditionalVAE):
    """p(z|x) p(y|x,z): predicts y from x (Sohn et al. 2015); guide q(z|x,y).

    log p(y|x) >= E_q[log p(y|x,z)] - KL(q(z|x,y) || p(z|x))"""

    observed = "y"
    prior_input = "x"
    decoder_input = ("x", "z")
    defaults = {**ConditionalVAE.defaults, "likelihood": "categorical"}
    likelihoods = tuple(dict.fromkeys(sum(Y_LIKELIHOODS.values(), ())))  # the one matching what y is (runs check)

    def model(self, x, y):
        self.register("prior", "decoder")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("y", self.decoder(cat(x, z)), obs=y)


class CVAE4(ConditionalVAE):
    """p(z|y) p(x|z): y reaches x only through z (CMMA, Pandey & Dukkipati); guide q(z|x,y).

    log p(x|y) >= E_q[log p(x|z)] - KL(q(z|x,y) || p(z|y))"""

    prior_input = "y"

    def model(self, x, y):
        self.register("prior", "decoder")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.decoder(z), obs=x)


class AE(VAE):
    """Deterministic autoencoder: the VAE's model with a point-mass guide q(z|x) = delta(f(x)).

    The ELBO becomes log p(x|f(x)) + log p(f(x)): reconstruction plus a prior penalty on the
    code, with no entropy term, so nothing fills the latent space between the codes."""

    defaults = {**VAE.defaults, "guide": "delta"}
    guides = ("delta",)


class DAE(AE):
    """Denoising autoencoder: the AE whose encoder sees x with a share of its pixels dropped
    (training only); the decoder still has to give back the clean x."""

    drop = 0.25

    def guide(self, x, y=None):
        if self.training:
            x = x * torch.bernoulli(torch.full_like(x, 1 - self.drop))
        super().guide(x, y)


class M2(LatentVariableModel):
    """p(y) p(z) p(x|y,z), guide q(y|x) q(z|x,y): semi-supervised (Kingma et al. 2014).

    labelled:    log p(x,y) >= E_q[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z))
    unlabelled:  log p(x)   >= E_q(y|x)[that bound - log q(y|x)], y summed out exactly by TraceEnum_ELBO
    plus alpha * log q(y|x) on labelled examples while training (the classifier's auxiliary term,
    an observed site scaled by alpha), so q(y|x) learns from the labels directly.

    A batch may mix both: `labelled` marks the examples whose y is observed. The two groups sit in
    two plates of one model call, "data" (the labelled ones, or all when the batch is of one kind)
    and "data_unlabelled", rather than one plate with a mask: with a masked, enumerated guide site
    TraceEnum_ELBO would weight every labelled example once per class. Splitting a batch by its
    mask reads the mask's count from the device once per step."""

    guide_input = ("x", "y")
    decoder_input = ("z", "y")
    defaults = {**LatentVariableModel.defaults, "elbo": "enum"}
    elbos = ("enum",)
    alpha = 46.0  # the auxiliary weight per labelled example (Pyro's SS-VAE example; runs set it from config)

    def __init__(self, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood=None, prior=None, guide=None, net=None,
                 part_args=None):
        super().__init__(x_dim, y_dim, z_dim, hidden, likelihood, prior, guide, net, part_args)
        positive_int("y_dim (the number of classes)", y_dim)
        self.classifier = self.net_for("encoder", ("x",))(x_dim, y_dim)
        self.register_buffer("label_logits", torch.zeros(y_dim))  # p(y) uniform

    def model(self, x, y=None, labelled=None):
        self.register("prior", "decoder", "classifier")
        for group, xs, ys in self.groups(x, y, labelled):
            with pyro.plate("data" + group, xs.shape[0]):
                y_ = pyro.sample("y" + group, dist.OneHotCategorical(logits=self.label_logits), obs=ys)
                z = pyro.sample("z" + group, self.prior(None))
                pyro.sample("x" + group, self.decoder(cat(z, y_)), obs=xs)
                if ys is not None and self.training and self.alpha:
                    with poutine.scale(scale=self.alpha):
                        pyro.sample("y_aux" + group, self.classify(xs), obs=ys)

    def guide(self, x, y=None, labelled=None):
        self.register("encoder", "classifier")
        for group, xs, ys in self.groups(x, y, labelled):
            with pyro.plate("data" + group, xs.shape[0]):
                if ys is None:
                    ys = pyro.sample("y" + group, self.classify(xs), infer={"enumerate": "parallel"})
                pyro.sample("z" + group, self.encoder(cat(xs, ys)))

    def classify(self, x):
        """q(y|x)."""
        return dist.OneHotCategorical(logits=self.classifier(x))

    @staticmethod
    def groups(x, y, labelled):
        """(site suffix, x, y or None) of the batch's labelled examples and of the rest; a batch of
        one kind is one group with plain site names, so the estimators see "z" and "x"."""
        if y is None or labelled is None:
            return [("", x, y)]
        n = int(labelled.sum())  # the one host read of an m2 step
        if n == len(x):
            return [("", x, y)]
        if n == 0:
            return [("", x, None)]
        return [("", x[labelled], y[labelled]), ("_unlabelled", x[~labelled], None)]

    @staticmethod
    def inputs(x, labels, n_classes):
        """(x, one-hot y, labelled): a label of -1 marks an example whose y is hidden."""
        known = labels >= 0
        return x, one_hot(labels.clamp(min=0), n_classes).to(x.dtype), known


MODELS = {"vae": VAE, "cvae1": CVAE1, "cvae2": CVAE2, "cvae3": CVAE3, "cvae4": CVAE4, "ae": AE, "dae": DAE,
          "m2": M2}


def model_class(name):
    """The class of a model name, or a UserError listing the names."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


ROLES = ("encoder", "decoder", "prior")


def build_model(name, x_dim, y_dim=0, z_dim=50, hidden=400, likelihood=None, prior=None, guide=None, net="mlp",
                activation="softplus", shape=None, nets=None, part_args=None):
    """A model from the table by name. Parts left as None take the model's own defaults; each may
    be a name from its table in parts.py, an import path "module:Name", a constructor of your
    own, or a built module.

    Every network is a `net` (a name in nets.NETS: mlp, gated, conv; an import path; or a class
    of your own taking the keywords of nets.py) of the `hidden` widths and `activation`; `nets`
    may give another one to a role ({"encoder": ..., "decoder": ..., "prior": ...}). `shape` is the
    shape of one example (default: (x_dim,)). `part_args` gives a part's own keyword arguments by
    kind, e.g. {"prior": {"pseudo_inputs": 500}} for a VampPrior of 500 pseudo-inputs."""
    cls = model_class(name)
    for what, value in [("z_dim", z_dim), ("x_dim", x_dim)]:
        positive_int(what, value)
    hidden = widths(hidden)
    check_memory(x_dim + y_dim + z_dim, hidden)
    chosen = {role: (nets or {}).get(role) or net for role in ROLES}
    for role, choice in chosen.items():
        if isinstance(choice, nn.Module):
            raise UserError(f"the {role} net is built once for each part that has one: pass the class of "
                            f"{type(choice).__name__}, not a built module")
    bodies = {role: Body(constructor("net", NETS, choice), hidden, activation, tuple(shape or (x_dim,)))
              for role, choice in chosen.items()}
    return cls(x_dim, y_dim, z_dim=z_dim, likelihood=likelihood, prior=prior, guide=guide, net=bodies,
               part_args=part_args)


def check_memory(io_dim, hidden):
    """Refuse sizes whose networks cannot fit in this machine's memory, before allocating them.
    The built-in parts are three networks (guide, prior, likelihood) of the `hidden` widths, each
    at most (inputs + outputs) x the first width in, the layers between, and (inputs + outputs) x
    the last width out (with one layer: 2 x (inputs + outputs) x hidden), float32, with Adam's two
    moments beside them."""
    hidden = widths(hidden)
    weights = io_dim * hidden[0] + sum(a * b for a, b in zip(hidden[:-1], hidden[1:])) + io_dim * hidden[-1]
    need = 3 * weights * 4 * 3  # bytes
    have = machine_memory()
    if have is not None and need > have:
        raise BadValue(f"sizes (inputs and outputs {io_dim}, hidden {hidden}): the networks would need about "
                       f"{need >> 30} GiB, and this machine has {have >> 30} GiB")


def model_inputs(model, x, labels, n_classes):
    """The arguments a model's model and guide take: (x,), or (x, y) with y the one-hot label when
    it conditions. (No None placeholder: the JIT-compiled ELBOs trace tensors only.)"""
    if hasattr(model, "inputs"):  # a model with its own (m2: which labels are known)
        return model.inputs(x, labels, n_classes)
    if not model.conditional:
        return (x,)
    return x, as_condition(labels, n_classes, x.dtype)


def as_condition(c, n_classes, dtype=torch.float32):
    """The y a model reads: the one-hot vector of a class label (a whole-number tensor), or the
    attribute or covariate vector itself (a float tensor)."""
    if c.is_floating_point():
        return c.to(dtype)
    return one_hot(c, n_classes).to(dtype)
