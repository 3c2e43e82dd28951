"""The training step captured once per input shape (layer 5: imports only nets, for its oneDNN products, and errors; any loss).

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
  (experiments/lean_step.py measures it; experiments/results/benchmark.md, tenth round);
- no work that gives the same tensor every step: values that depend on no input's value (the
  gradient's seed `ones_like(loss)`, a standard prior's scale, what follows from them alone) are
  computed once, at capture, and `x * 1` on them is read as `x` (`fold_shape_constants`;
  experiments/step_bookkeeping.py, benchmark.md's twelfth round).

Where a loss cannot be captured (a host read such as `int(mask.sum())`, data-dependent Python)
it says why and the eager step is used. A tensor the loss reads that is neither a parameter nor an
argument is held by the graph itself, so a value that changes between steps must be such a tensor
written in place (svi.Trainer's ramped KL weight), never a Python number, which would be baked in.

With `compiler="inductor"` the training batch's graph is also compiled by Inductor, which fuses
its elementwise work: the graph as it is (`torch._inductor.compile`, no TorchDynamo frame or guards
per call), cached on disk for the next process; oneDNN's products, which Inductor cannot lower as
nets.Linear calls them, become one opaque op first (`nets.opaque_onednn_products`).
"""

import contextlib
import functools
import math
import operator
import sys
import time

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.graph import CodeGen
from torch.nn.utils.stateless import _reparametrize_module

from .errors import first_line
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
        self.relayout = {}  # per shape: which gradients must be copied before the optimizer sees them (to_copy)
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
        relayout = self.relayout.get(k)
        if relayout is None:
            relayout = self.relayout[k] = self.to_copy(graph, out)
        for p, g, copy in zip(self.params, out[1:], relayout):
            # as autograd's accumulation does: a gradient the optimizer (or clipping) may write in place
            p.grad = torch.empty_like(p).copy_(g) if copy else g
        return out[0]

    def to_copy(self, graph, out):
        """Which of the gradients `graph` returned (`out[1:]`) must be copied before they are handed to
        the optimizer, which (or clipping) may write them in place: one not laid out as its parameter
        (an expanded tensor of ones, say), and one whose memory another output, a parameter or a
        tensor the graph holds also uses (a gradient that is a view of another, or of a folded value).
        Decided on a shape's first replay: the graph lays its outputs out the same way every time."""
        def storage(t):
            return t.untyped_storage().data_ptr() if t.numel() else None
        used = [storage(t) for t in (*out, *self.params, *getattr(graph, "buffers", tuple)())]
        return [g.stride() != p.stride() or (storage(g) is not None and used.count(storage(g)) > 1)
                for p, g in zip(self.params, out[1:])]

    def compile(self, graph, args):
        """The captured graph compiled by Inductor (fused kernels), drawing its random numbers with
        torch's own generator (`fallback_random`), so the noise is the eager step's; compiled on its
        first call, here. Where Inductor cannot compile it (no C++ compiler, say), the graph as it is."""
        import torch._inductor.config as inductor_config  # part of torch; read only when asked for

        inductor_config.fallback_random = True
        graph = opaque_onednn_products(graph)
        try:
            # compiling runs the graph once (undo its draws), without autograd, as every step runs it
            with torch.random.fork_rng(devices=cuda_devices(args)), torch.no_grad(), cacheable_compile():
                compiled = Compiled(graph, torch._inductor.compile(graph, [*self.params, *args]))
                compiled(*self.params, *args)
        except Exception as e:
            print(f"pyro-vae: Inductor could not compile the captured step ({type(e).__name__}: {first_line(e)[:120]}); "
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
            # tracing's draws are undone
            with pyro.validation_enabled(False), torch.random.fork_rng(devices=cuda_devices(args)):
                return make_fx(step)(*inputs, *args)
        except Exception as e:  # anything make_fx cannot record: the eager step stands
            raise CaptureFailed(f"{type(e).__name__}: {first_line(e)[:160]}") from None
        finally:
            torch.distributions.Distribution.set_default_validate_args(validate)


def cuda_devices(args):
    """The CUDA device the batch is on, as `torch.random.fork_rng` takes it ([] on the CPU): the
    draws of a capture or of a compile's first run are undone on the generator the steps use."""
    return [a.device.index or 0 for a in args if torch.is_tensor(a) and a.device.type == "cuda"][:1]


def cacheable_compile():
    """A context in which `torch._inductor.compile` may use Inductor's disk caches (of the compiled
    graph, and of AOTAutograd's): they read the shapes' environment from a tracing context, which a
    graph captured outside TorchDynamo lacks, and without one every process compiled afresh (3-4 s
    with the C++ kernels cached, 11-17 s cold, where a cache hit takes about 2 s, nearly all of it
    importing Inductor and probing the CPU's vector instructions: experiments/compile_cost.sh).
    All shapes stay static: the inputs are real tensors.
    Where this torch lacks those internals, no context: the compile works as before, uncached."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
        return tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv())))
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


class Compiled:
    """A captured graph compiled by Inductor (`torch._inductor.compile`: the graph as it is, without
    TorchDynamo's frame evaluation and guards, which cost ~0.1 ms a call), called as the graph is."""

    def __init__(self, graph, run):
        self.graph, self.run = graph, run  # the GraphModule (its oneDNN products made opaque), its kernels

    def __call__(self, *args):
        return self.run(*args)

    def buffers(self):
        return self.graph.buffers()


def lean(graph, args):
    """`graph`, captured for `args`, replayed with less Python: the operators whose values nothing
    reads dropped (a random draw is kept: it advances the generator as the eager step does); the
    inputs taken as they come, one placeholder each, where every argument is a tensor, instead of
    flattened by torch's pytree on every call; and each ATen operator called as torch's C function
    (`OpOverload._op`, in a C-level `functools.partial` that torch.fx can name) instead of through
    `OpOverload.__call__`'s Python frame; and the values that depend on no input computed once
    (`fold_shape_constants`). The same operators on the same values in the same order, so the same
    bits."""
    fold_shape_constants(graph)
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


# factories whose values are not defined (an in-place draw or write fills them): never folded
_UNDEFINED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def fold_shape_constants(graph):
    """Compute once, at capture, the values of `graph` that depend on no input's value: a factory
    (`ones_like(x)`, `full(...)`) and whatever is computed from such values alone. The gradient of
    the loss starts from `ones_like(loss)`, and a standard prior's scale is `ones_like(...)`: a few
    dozen operators of every step (negations, expansions, views and divisions of those ones) that
    give the same tensor each time. Each step then reads the tensor: the same values, so the same
    bits. A tensor the graph holds (`get_attr`) is never folded by value, only read for its shape,
    since it may be written in place between steps (the ramped KL weight); nor is a random draw or
    an operator that writes in place, and nothing is folded where the graph writes into a folded
    value. A gradient that comes out as a folded value (or a view of one) is copied before the
    optimizer, which may scale it in place, sees it (`CapturedStep.to_copy`, as for any gradient
    that shares memory). Returns the number of operators folded."""
    nodes = list(graph.graph.nodes)
    values = {}
    for node in nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem and node.args[0] in values:
            values[node] = values[node.args[0]][node.args[1]]
            continue
        op = node.target
        if (not isinstance(op, torch._ops.OpOverload) or op._schema.is_mutable
                or torch.Tag.nondeterministic_seeded in op.tags or op._schema.name.split("::")[-1] in _UNDEFINED):
            continue
        args, kwargs = node.args, node.kwargs
        if op._schema.name.endswith("_like") and args and isinstance(args[0], torch.fx.Node) and args[0] not in values:
            # reads its input's shape, dtype, device and strides, not its values
            val = getattr(graph, args[0].target) if args[0].op == "get_attr" else args[0].meta.get("val")
            if args[0].op == "placeholder" or not isinstance(val, torch.Tensor):
                continue  # an argument's strides may differ from call to call
            like = torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=val.device)
            args = (like, *args[1:])
        inputs = []
        torch.fx.node.map_arg((args, kwargs), inputs.append)
        if all(i in values for i in inputs):
            with torch.no_grad():
                values[node] = op(*torch.fx.node.map_arg(args, values.get), **torch.fx.node.map_arg(kwargs, values.get))

    def aliases_folded(node):  # whether the value of `node` is, or is a view of, a folded one
        while node not in values:
            if not (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                    and node.target.is_view and node.args and isinstance(node.args[0], torch.fx.Node)):
                return False
            node = node.args[0]
        return True

    written = []  # what the graph writes in place (a draw into a fresh tensor)
    for node in nodes:
        if (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                and node.target._schema.is_mutable):
            torch.fx.node.map_arg((node.args, node.kwargs), written.append)
    if any(aliases_folded(n) for n in written):
        return 0
    folded = 0
    for node in nodes:
        if node in values and any(u not in values for u in node.users):
            if not isinstance(values[node], torch.Tensor):
                continue  # a list (split's) read as it is: computed every step, from what it reads
            name = f"_folded_{folded}"
            graph.register_buffer(name, values[node], persistent=False)
            with graph.graph.inserting_before(node):
                constant = graph.graph.get_attr(name)
            node.replace_all_uses_with(constant)
            drop_identity_operations(graph, constant, values[node], written)
            folded += 1
    if not folded:
        return 0
    graph.graph.eliminate_dead_code()
    read = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name in [b for b, _ in graph.named_buffers() if b.startswith("_folded_") and b not in read]:
        delattr(graph, name)  # a constant that only an identity operation read
    return sum(1 for n in values if n.op == "call_function")


def drop_identity_operations(graph, constant, value, keep):
    """Where `constant` (a folded get_attr node) holds one value throughout, the operators that
    leave their other operand as it was, exactly, in every float: `x * 1`, `x / 1` and `x - (+0)`
    read as `x`, and `x * -1` as `-x` (one fewer full-size operator: the gradient of a Bernoulli
    likelihood is multiplied by a tensor of ones on every step). Not `x + 0`, which turns -0 into
    +0. An operator whose value the graph writes in place (`keep`) stays; where the graph now
    returns one tensor twice, or a parameter, `CapturedStep.to_copy` copies it."""
    signs = torch.signbit(value)
    if value.numel() == 0 or not bool((value == value.reshape(-1)[0]).all()) or bool(signs.any() != signs.all()):
        return  # not one value (+0 and -0 are two here)
    c = value.reshape(-1)[0].item()
    aten = torch.ops.aten
    for user in list(constant.users):
        if user in keep or not isinstance(user.target, torch._ops.OpOverload) or user.kwargs:
            continue
        args = user.args
        if len(args) != 2 or constant not in args or not all(isinstance(a, torch.fx.Node) for a in args):
            continue
        x = args[1] if args[0] is constant else args[0]
        out, seen = user.meta.get("val"), x.meta.get("val")
        if not (isinstance(out, torch.Tensor) and isinstance(seen, torch.Tensor) and out.shape == seen.shape
                and out.dtype == seen.dtype == value.dtype):
            continue
        op = user.target
        if (op == aten.mul.Tensor and c == 1) or (op == aten.div.Tensor and args[1] is constant and c == 1) or (
                op == aten.sub.Tensor and args[1] is constant and c == 0 and not math.copysign(1, c) < 0):
            user.replace_all_uses_with(x)
        elif op == aten.mul.Tensor and c == -1:
            with graph.graph.inserting_before(user):
                neg = graph.graph.call_function(aten.neg.default, (x,))
            neg.meta = dict(user.meta)
            user.replace_all_uses_with(neg)
