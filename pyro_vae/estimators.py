"""Estimators over any model/guide pair whose sample sites sit in one batch plate at dim -1
(layer 6: imports models for `model_inputs`): the importance-sampled log-likelihood, the ELBO
per example, latent means and active units, decoding, prediction and accuracy (cvae3), and the
label fidelity of class-conditional samples.

The importance-sampled log-likelihood (Burda et al. 2015) with z_k ~ q(z|.):

    log p(obs) ~= logsumexp_k [log p(obs, z_k) - log q(z_k|.)] - log K

is computed per example, vectorized over K by an outer `pyro.plate("particles", K, dim=-2)`
and chunked over examples and particles so memory stays bounded for K = 5000. The same log
weights averaged instead of log-sum-exp'd give the ELBO, so the two come from one code path and
the estimate is never below the bound on the same draws.
"""

import ctypes
import functools
import math
import sys
import time

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch.nn.functional import one_hot
from tqdm import tqdm

from .errors import positive_int
from .models import model_inputs

# (particle, example) pairs per network call. On the CPU, K = 5000 with 8192 pairs (one example's
# 5000 particles per call) ran 1.75x faster than 65536 pairs, in a tenth of the memory: the
# (pairs, 784) tensors then fit in cache (experiments/results/benchmark.md). Pass more on a GPU.
MAX_BATCH = 1 << 13


def log_weights(model, guide, *args, particles=1):
    """log p(obs, z) - log q(z|.) for `particles` draws z ~ q: a (particles, batch) tensor."""
    with pyro.plate("particles", particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return _log_joint(model_trace) - _log_joint(guide_trace)


def _log_joint(trace):
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["fn"].log_prob(site["value"])
    return total


@functools.cache  # once per process: the setting is process-wide
def keep_freed_memory():
    """Ask glibc to keep freed blocks of up to 32 MB in the heap for reuse. By default it hands
    each freed block above its mmap threshold back to the OS, and the next chunk's tensors of
    the same size fault the same pages in again, zeroed: thousands of page faults per test image
    at K = 5000, 10-30% of the evaluation's time (benchmark.md). A no-op where the C library is
    not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of free heap top


@torch.no_grad()
def importance_sampled(model, guide, *args, samples=5000, max_batch=MAX_BATCH, progress=False):
    """(log-likelihood, ELBO) per example, both (B,) tensors in nats, from `samples` draws each.

    At most `max_batch` (particle, example) pairs go through the networks at once."""
    positive_int("samples", samples)
    positive_int("max_batch", max_batch)
    if args[0].device.type == "cpu":
        keep_freed_memory()
    n = args[0].shape[0]
    per_chunk = max(1, min(n, max_batch // samples))  # examples per chunk
    particle_chunk = min(samples, max(1, max_batch // per_chunk))
    # Results go into preallocated tensors: small tensors kept from chunk to chunk, between the
    # chunks' large temporaries, fragmented the CPU heap (peak RSS grew with the example count).
    log_lik = torch.empty(n, dtype=args[0].dtype, device=args[0].device)
    elbo = torch.empty_like(log_lik)
    lines = TenthLines(f"log-likelihood (K={samples})", n) if progress and not sys.stderr.isatty() else None
    with tqdm(total=n, desc=f"log-likelihood (K={samples})", unit="ex", disable=None if progress else True) as bar:
        for start in range(0, n, per_chunk):
            chunk_args = [a[start:start + per_chunk] if torch.is_tensor(a) else a for a in args]
            w = torch.cat([log_weights(model, guide, *chunk_args, particles=min(particle_chunk, samples - k))
                           for k in range(0, samples, particle_chunk)])
            log_lik[start:start + per_chunk] = torch.logsumexp(w, 0) - math.log(samples)
            elbo[start:start + per_chunk] = w.mean(0)
            bar.update(w.shape[1])
            if lines:
                lines.update(w.shape[1])
    return log_lik, elbo


QUIET_SECONDS = 1.0  # TenthLines prints nothing before this much of the work's time has passed


class TenthLines:
    """Progress where a bar cannot be drawn (output to a file or a pipe): a line on stderr at each
    tenth of the work, with the time taken and an estimate of the time left; none in its first
    `quiet` seconds (an evaluation of a second is not worth ten lines of a log)."""

    def __init__(self, what, total, quiet=None):
        self.what, self.total, self.done, self.shown, self.start = what, total, 0, 0, time.monotonic()
        self.quiet = QUIET_SECONDS if quiet is None else quiet

    def update(self, n):
        self.done += n
        tenth = self.done * 10 // self.total
        if tenth > self.shown:
            self.shown = tenth
            took = time.monotonic() - self.start
            if took < self.quiet:
                return
            left = took * (self.total - self.done) / self.done
            print(f"{self.what}: {tenth * 10}% of {self.total} examples, {took:.0f} s, about {left:.0f} s left",
                  file=sys.stderr, flush=True)


@torch.no_grad()
def elbo_per_example(model, guide, *args, particles=1, max_batch=MAX_BATCH):
    """A Monte Carlo ELBO per example from `particles` draws: a (B,) tensor in nats."""
    n = args[0].shape[0]
    step = max(1, max_batch // particles)
    return torch.cat([log_weights(model, guide, *[a[i:i + step] if torch.is_tensor(a) else a for a in args],
                                  particles=particles).mean(0) for i in range(0, n, step)])


@torch.no_grad()
def rate_distortion(model, guide, *args, max_batch=MAX_BATCH):
    """(rate, distortion) per example from one draw z ~ q each, both (B,) tensors in nats:
    rate = log q(z|.) - log p(z|.) summed over the latent sites (a one-draw estimate of the KL),
    distortion = -log p(obs|z, .) summed over the observed sites. ELBO = -(rate + distortion)."""
    rates, distortions = [], []
    for i in range(0, args[0].shape[0], max_batch):
        chunk = [a[i:i + max_batch] if torch.is_tensor(a) else a for a in args]
        guide_trace = poutine.trace(guide).get_trace(*chunk)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*chunk)
        rate, distortion = 0.0, 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            log_p = site["fn"].log_prob(site["value"])
            if site["is_observed"]:
                distortion = distortion - log_p
            else:
                rate = rate - log_p
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                rate = rate + site["fn"].log_prob(site["value"])
        rates.append(torch.as_tensor(rate).expand(len(chunk[0])))
        distortions.append(torch.as_tensor(distortion).expand(len(chunk[0])))
    return torch.cat(rates), torch.cat(distortions)


@torch.no_grad()
def latent_means(model, *args, max_batch=1 << 14):
    """E_q[z|.] per example (B, Z): the guide's mean where it has one, else an average of draws."""
    means = []
    n = args[0].shape[0]
    for i in range(0, n, max_batch):
        chunk = [a[i:i + max_batch] if torch.is_tensor(a) else a for a in args]
        q = poutine.trace(model.guide).get_trace(*chunk).nodes["z"]["fn"]
        try:
            means.append(q.mean)
        except NotImplementedError:  # e.g. a flow: average 64 draws of q itself (the model, its decoder, is not run)
            means.append(q.sample((64,)).mean(0))
    return torch.cat(means)


def active_units(z_means, threshold=0.01):
    """Burda et al.'s count: latent dims whose posterior mean varies across examples, Cov_x(E_q[z_u]) > 0.01."""
    return int((z_means.var(0) > threshold).sum())


@torch.no_grad()
def decode(model, *args, z=None):
    """The mean of the observed site given z (drawn from the prior when z is None), and z."""
    if z is None:
        z = Predictive(model.model, num_samples=1, return_sites=["z"])(*args)["z"][0]
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(*args)
    return trace.nodes[model.observed]["fn"].mean, z


@torch.no_grad()
def predict(model, x, particles=0, max_batch=MAX_BATCH):
    """E[y|x] of a model that predicts y from x (cvae3, `observed == "y"`), per example.

    particles=0: the mean of p(y|x,z*) at z* = the mean of p(z|x) (Sohn et al.'s fast prediction);
    particles=S: the Monte Carlo average of that mean over S draws z ~ p(z|x). For a categorical
    y this is the vector of class probabilities; for Bernoulli pixels, the pixel probabilities."""
    out = []
    step = max(1, max_batch // max(1, particles))
    for i in range(0, x.shape[0], step):
        xs = x[i:i + step]
        if particles == 0:
            z_star = poutine.trace(model.model).get_trace(xs, None).nodes["z"]["fn"].mean
            out.append(decode(model, xs, None, z=z_star)[0])
        else:
            with pyro.plate("particles", particles, dim=-2):
                y_mean = poutine.trace(model.model).get_trace(xs, None).nodes[model.observed]["fn"].mean
            out.append(y_mean.mean(0))
    return torch.cat(out)


@torch.no_grad()
def importance_sampled_over_labels(model, x, n_classes, samples=5000, max_batch=MAX_BATCH, progress=False):
    """(log p(x), ELBO) per example, in nats, for a model whose label y is a latent it can sum out
    (m2: `model(x, y)` with y observed, `model.classify(x)` = q(y|x)).

    For each class k, log p(x, y=k) is importance-sampled with `samples` draws z ~ q(z|x,y=k);
    log p(x) = logsumexp_k of those: y summed out exactly, z sampled. The ELBO takes its
    expectation over y exactly too: sum_k q(k|x) [ELBO(x, k) - log q(k|x)]."""
    log_q = model.classify(x).logits.T  # (classes, B), normalised
    per_class = [importance_sampled(model.model, model.guide, x,
                                    one_hot(torch.full((len(x),), k, device=x.device), n_classes).to(x.dtype),
                                    samples=samples, max_batch=max_batch, progress=progress)
                 for k in range(n_classes)]
    log_joint = torch.stack([ll for ll, _ in per_class])
    elbo_joint = torch.stack([elbo for _, elbo in per_class])
    return torch.logsumexp(log_joint, 0), (log_q.exp() * (elbo_joint - log_q)).sum(0)


def classifier_accuracy(model, x, labels):
    """Share of examples whose most probable class under the model's q(y|x) is the true label."""
    with torch.no_grad():
        return (model.classify(x).logits.argmax(-1) == labels).float().mean().item()


def accuracy(model, x, labels, particles=0):
    """Share of examples whose most probable class under `predict` is the true label."""
    return (predict(model, x, particles).argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def conditional_samples(model, data, per_class):
    """Mean images of p(x|z,y) for z ~ p(z|y), `per_class` of each class: (images, labels asked for)."""
    device = next(model.parameters()).device
    labels = torch.arange(data.n_classes, device=device).repeat_interleave(per_class)
    x_unused = torch.zeros(len(labels), data.x_dim, device=device)  # the model only reads its shape
    images, _ = decode(model, *model_inputs(model, x_unused, labels, data.n_classes))
    return images, labels


@torch.no_grad()
def label_fidelity(model, data, reference, per_class=100):
    """Share of class-conditional mean images the reference classifier calls the class asked for.

    Label fidelity of a conditional model: draw z ~ p(z|y=k), decode the mean image of p(x|z,y),
    and ask a classifier trained on the real training split which class it shows; the share that
    comes back as k says whether the model's samples depend on y the way they should. `reference`
    is a dict with the classifier `net` and its `test_accuracy`. Returns `label_fidelity`, `label_fidelity_per_class`, `fidelity_samples_per_class` and the
    classifier's own `classifier_test_accuracy` (on real grey test images)."""
    images, labels = conditional_samples(model, data, per_class)
    hits = reference["net"](images).argmax(-1) == labels
    per = hits.float().reshape(data.n_classes, per_class).mean(1)
    return {"label_fidelity": hits.float().mean().item(),
            "label_fidelity_per_class": [round(v, 4) for v in per.tolist()],
            "fidelity_samples_per_class": per_class,
            "fidelity_samples_kind": "mean images of p(x|z,y), z ~ p(z|y)",
            "classifier_test_accuracy": reference["test_accuracy"]}


def r_squared(predicted, actual):
    """1 - residual / total sum of squares, per column."""
    residual = ((actual - predicted) ** 2).sum(0)
    total = ((actual - actual.mean(0)) ** 2).sum(0).clamp(min=1e-12)
    return 1 - residual / total


@torch.no_grad()
def condition_agreement(model, data, reference, draws=1000):
    """Whether samples follow the attributes or covariates they were drawn for: for the y of the
    first `draws` test examples, one mean sample of p(x|z,y) with z ~ p(z|y) each, read back by
    the reference predictor (`reference["read"]`, trained on real data). Attributes: the share of
    each attribute read back as asked; covariates: R^2 of the reading against the value asked, and
    the slope of that regression (1: the samples move with y as much as real data does)."""
    c = data.splits["test"][1][:draws]
    x_unused = torch.zeros(len(c), data.x_dim, device=c.device)
    images, _ = decode(model, *model_inputs(model, x_unused, c, data.n_classes))
    read = reference["read"](images)
    names = data.y_names or [f"y{k}" for k in range(c.shape[1])]
    out = {"agreement_draws": len(c), "reference_test_score": [round(v, 4) for v in reference["test_score"]],
           "y_names": names}
    if data.condition == "attributes":
        per = (read == c).float().mean(0)
        out.update(attribute_agreement=per.mean().item(), attribute_agreement_per_attribute=[round(v, 4) for v in per.tolist()])
    else:
        centred = c - c.mean(0)
        slope = (centred * (read - read.mean(0))).sum(0) / (centred ** 2).sum(0).clamp(min=1e-12)
        r2 = r_squared(read, c)
        out.update(covariate_r2=[round(v, 4) for v in r2.tolist()], covariate_slope=[round(v, 4) for v in slope.tolist()])
    return out
