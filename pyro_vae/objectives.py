"""Objectives: the ELBOs from `pyro.infer` by name, and the KL weight as an effect handler
(layer 5: imports only errors; works on any model/guide pair it is handed).

    trace      `DeviceTrace_ELBO`: Pyro's Trace_ELBO, the same traces, value and gradient, without
               Pyro 1.9's per-step host reads (`.item()` on every site's log-prob sum, the host NaN
               test), so on a GPU no training step waits for its kernels
    meanfield  `TraceMeanField_ELBO`: the KL term analytic where q and p have a formula
    iwae       `IWAE_ELBO`: Pyro's `RenyiELBO(alpha=0)`, the IWAE bound with K vectorized particles,
               with a differentiable loss of the same value and gradient (so its step is captured)
    enum       `TraceEnum_ELBO`: discrete guide sites marked for enumeration are summed out exactly

`ScaleLatents` weights the log-density of every latent site (beta-VAE, KL warm-up). `--jit`
selects Pyro's JIT variants; with torch 2.13's TorchScript executor they measured 2-4x slower
than the plain ELBO here (experiments/jit_check.py), so they are not the default.
"""

import math
import warnings

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import (JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO,
                        TraceMeanField_ELBO)
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from .errors import UserError


class DeviceTrace_ELBO(Trace_ELBO):
    """Trace_ELBO whose `differentiable_loss` stays on the device: the same traces (Pyro's
    `_get_traces`: guide traced, model replayed against it, log-densities and score parts from
    the trace), the same value (the ELBO estimate) and the same gradient (reparameterised and
    score-function terms alike), without the host reads: no `.item()` per site, no NaN test on
    the host (fit tests the loss on the device and reads the test once per epoch)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._loss_particle(model_trace, guide_trace)
        return loss / self.num_particles if self.num_particles > 1 else loss

    @staticmethod
    def _loss_particle(model_trace, guide_trace):
        """-ELBO of one particle, with the gradient of Trace_ELBO's surrogate."""
        elbo = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
        extra, log_r = [], None  # terms of surrogate - ELBO: none while every site is reparameterised
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_prob, score_function, entropy = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if entropy is not log_prob:  # reparameterised sites use their log-density as entropy term
                extra.append(site["log_prob_sum"] - (0.0 if is_identically_zero(entropy) else entropy.sum()))
            if not is_identically_zero(score_function):  # REINFORCE, Rao-Blackwellised as Pyro does
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                extra.append((log_r.sum_to(site["cond_indep_stack"]) * score_function).sum())
        if not extra:
            return -elbo
        extra = sum(extra)
        return -(elbo + extra - extra.detach())  # the ELBO's value, the surrogate's gradient


class EnumTrace_ELBO(TraceEnum_ELBO):
    """TraceEnum_ELBO, without its warning for a batch that has nothing to enumerate (an m2 batch of
    labelled examples only: then it is the plain ELBO, as it should be)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
            return super().differentiable_loss(model, guide, *args, **kwargs)


class IWAE_ELBO(RenyiELBO):
    """The IWAE bound (Burda et al.): Pyro's RenyiELBO at alpha = 0 with K particles, plus the
    `differentiable_loss` RenyiELBO lacks: -sum_b [logsumexp_k log w_kb - log K], from the same
    traces and log-weights as `RenyiELBO.loss`. Its gradient is the one RenyiELBO's surrogate
    gives when every guide site is reparameterised (the normalised weights times each gradient of
    log w), so fit captures its step like the others'. A guide site that is not reparameterised
    has no such gradient at alpha = 0 (RenyiELBO's surrogate drops its score-function term): it is
    refused."""

    def __init__(self, num_particles=2, **kwargs):
        super().__init__(alpha=0, num_particles=num_particles, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not is_identically_zero(site["score_parts"].score_function):
                    raise UserError(f"the iwae objective needs a reparameterised guide: site {name!r} "
                                    f"({type(site['fn']).__name__}) is not; use --elbo trace")
                log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            particles.append(log_w)
        log_w = particles[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(particles)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


# name -> (plain, JIT-compiled) objective; None where no JIT variant gives the same loss
ELBOS = {
    "trace": (DeviceTrace_ELBO, JitTrace_ELBO),
    "meanfield": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
    "iwae": (IWAE_ELBO, None),
    "enum": (EnumTrace_ELBO, None),  # sums out the guide's enumerated discrete sites exactly (m2's y)
}


def make_elbo(name="trace", particles=1, jit=False):
    """An ELBO object from `pyro.infer` by name: trace, meanfield (analytic KL) or iwae (K particles)."""
    if name not in ELBOS:
        raise UserError(f"unknown objective {name!r}; choose from {', '.join(ELBOS)}")
    plain, jitted = ELBOS[name]
    if jit and jitted is None:
        raise UserError(f"--jit: objective {name!r} has no JIT variant; use trace or meanfield")
    return (jitted if jit else plain)(num_particles=particles, vectorize_particles=particles > 1,
                                      max_plate_nesting=1)


class ScaleLatents(Messenger):
    """Weights the log-density of every latent (unobserved) site by `weight`, in the model and the
    guide alike, so the ELBO becomes E_q[log p(x|z)] - weight * KL: beta-VAE and KL warm-up."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.weight


def check_objective(model, elbo_name, *args):
    """Refuse, before training, an analytic-KL objective whose guide and prior have no KL formula."""
    if elbo_name != "meanfield":
        return
    guide_trace = poutine.trace(model.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        raise UserError(f"--elbo meanfield needs an analytic KL(q || p), and there is none for "
                        f"{type(model.encoder).__name__} against {type(model.prior).__name__}; "
                        f"use --elbo trace") from None
