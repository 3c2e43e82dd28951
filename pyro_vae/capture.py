"""The training step captured once per input shape (layer 5: imports only nets, for its oneDNN products; any loss).

Pyro builds the loss in Python on every step: traces, replay, plates, distribution objects. For
a fixed model and batch shape that Python does the same thing each time, and only the tensors
change. `CapturedStep` runs it once per shape under `torch.fx`'s `make_fx`, which records the
tensor operations of the loss and of its gradient (Pyro's handlers resolved at trace time) as a
graph whose inputs are the parameters and the batch, and then replays that graph on every step:

- the same operations in the same order as the eager step, so the same value and gradient for the
  same random numbers (the draws are operations of the graph: fresh noise every step);
- no Python from Pyro per step; the optimizer step stays PyTorch's own (its fused Adam kernel);
- little Python of the graph's own (`lean`): operators nothing reads (make_fx keeps a few) are
  dropped, the inputs are not flattened by torch's pytree on every call, and each operator is
  called as torch's C function without the Python frame of `torch.ops.aten.*`
  (experiments/lean_step.py measures it; experiments/results/benchmark.md, tenth round).

Where a loss cannot be captured (a host read such as `int(mask.sum())`, data-dependent Python)
it says why and the eager step is used. A tensor the loss reads that is neither a parameter nor an
argument is held by the graph itself, so a value that changes between steps must be such a tensor
written in place (svi.Trainer's ramped KL weight), never a Python number, which would be baked in.

With `compiler="inductor"` the training batch's graph is also compiled by Inductor, which fuses
its elementwise work; oneDNN's products, which Inductor cannot lower as nets.Linear calls them,
become one opaque custom op first (`nets.opaque_onednn_products`).
"""

import functools
import sys
import time

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.graph import CodeGen
from torch.nn.utils.stateless import _reparametrize_module

from .nets import opaque_onednn_products


class CaptureFailed(Exception):
    """The loss could not be captured; the message says why."""


class CapturedStep:
    """`step(*args)` sets every parameter's `.grad` to the gradient of `loss_fn(*args)` and returns
    the loss, from a graph captured the second time each input shape is seen (the first time it
    returns None and the caller steps eagerly)."""

    def __init__(self, module, loss_fn, compiler=None):
        self.module, self.loss_fn, self.compiler = module, loss_fn, compiler
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.graphs = {}
        self.seen = set()  # shapes stepped once: a shape is captured on its second step
        self.seconds = 0.0  # spent capturing (and compiling) graphs, for the run log and the benchmark

    @staticmethod
    def key(args):
        return tuple((tuple(a.shape), a.dtype, str(a.device)) if torch.is_tensor(a) else repr(a) for a in args)

    def __call__(self, *args):
        """The loss (gradients set), or None on a shape's first step: the caller steps eagerly then,
        so a shape seen once (an epoch's last, shorter batch in a one-epoch run) costs no capture."""
        k = self.key(args)
        graph = self.graphs.get(k)
        if graph is None:
            if k not in self.seen:
                self.seen.add(k)
                return None
            start = time.perf_counter()
            graph = self.capture(args)
            if self.compiler == "inductor" and not self.graphs:
                # the first shape captured is the training batch; another (an epoch's shorter last
                # batch, stepped once an epoch) replays its graph uncompiled: seconds to save microseconds
                graph = self.compile(graph, args)
            else:
                graph = lean(graph, args)
            self.graphs[k] = graph
            self.seconds += time.perf_counter() - start
        with torch.no_grad():  # the graph holds its own backward: recording autograd history would be waste
            out = graph(*self.params, *args)  # [loss, *gradients]
        for p, g in zip(self.params, out[1:]):
            p.grad = g
        return out[0]

    def compile(self, graph, args):
        """The captured graph compiled by Inductor (fused kernels), drawing its random numbers with
        torch's own generator (`fallback_random`), so the noise is the eager step's; compiled on its
        first call, here. Where Inductor cannot compile it (no C++ compiler, say), the graph as it is."""
        import torch._inductor.config as inductor_config  # part of torch; read only when asked for

        inductor_config.fallback_random = True
        graph = opaque_onednn_products(graph)
        compiled = torch.compile(graph, backend="inductor", dynamic=False)
        try:
            # compiling runs the graph once (undo its draws), without autograd, as every step runs it
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                compiled(*self.params, *args)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"pyro-vae: Inductor could not compile the captured step ({type(e).__name__}: {first[:120]}); "
                  f"replaying the captured graph as it is", file=sys.stderr, flush=True)
            self.compiler = None
            return graph
        return compiled

    def capture(self, args):
        """The graph of `step(*parameters, *args) -> [loss, *gradients]`."""
        n = len(self.params)

        def step(*flat):
            params = flat[:n]
            with _reparametrize_module(self.module, dict(zip(self.names, params))):
                loss = self.loss_fn(*flat[n:])
            return [loss, *torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)]

        inputs = [p.detach().requires_grad_(p.requires_grad) for p in self.params]
        validate = torch.distributions.Distribution._validate_args
        torch.distributions.Distribution.set_default_validate_args(False)  # its checks read the host
        try:
            cuda = [a.device.index or 0 for a in args if torch.is_tensor(a) and a.device.type == "cuda"][:1]
            with pyro.validation_enabled(False), torch.random.fork_rng(devices=cuda):  # tracing's draws are undone
                return make_fx(step)(*inputs, *args)
        except Exception as e:  # anything make_fx cannot record: the eager step stands
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CaptureFailed(f"{type(e).__name__}: {first[:160]}") from None
        finally:
            torch.distributions.Distribution.set_default_validate_args(validate)


def lean(graph, args):
    """`graph`, captured for `args`, replayed with less Python: the operators whose values nothing
    reads dropped (a random draw is kept: it advances the generator as the eager step does); the
    inputs taken as they come, one placeholder each, where every argument is a tensor, instead of
    flattened by torch's pytree on every call; and each ATen operator called as torch's C function
    (`OpOverload._op`, in a C-level `functools.partial` that torch.fx can name) instead of through
    `OpOverload.__call__`'s Python frame. The same operators on the same values in the same order,
    so the same bits."""
    graph.graph.eliminate_dead_code()
    if all(torch.is_tensor(a) for a in args):
        graph.graph._codegen = CodeGen()
    for node in graph.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            call = functools.partial(node.target._op)
            call.__name__, call.__module__ = str(node.target).replace(".", "_"), "torch_c"
            node.target = call
    graph.recompile()
    return graph
