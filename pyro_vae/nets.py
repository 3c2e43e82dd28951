"""Networks: the bodies inside every part, and the one helper that joins inputs that carry
particle dimensions (layer 2: imports only errors).

A body maps (..., in_dim) -> (..., out_dim). Each kind in `NETS` is built with one keyword-only
call, the same for every entry (and for a network class of your own):

    Net(in_dim=, out_dim=, hidden=, activation=, shape=, reads_x=)

    hidden       the widths of the hidden layers, a tuple of whole numbers
    activation   a name in ACTIVATIONS
    shape        the shape of one example x: (H, W) or (C, H, W) for images, (D,) for vectors
    reads_x      whether the input starts with x (the guide's and cvae3's networks): its first
                 prod(shape) values are one example, and anything after them (y, z) joins it

A part never builds its network itself: it is handed a `Body` (the kind and its settings) and
calls it with its own input and output sizes, so `--net conv` changes every network of every
model without a line of model code.
"""

import ctypes
import functools
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
from torch.nn import functional as F

from .errors import BadValue, UserError

# Large float32 products on the CPU run in whichever of torch's own matmul (MKL in the official
# wheels) and oneDNN is faster for their shape on this processor, timed the first time a shape is
# seen (see `Linear`): on AMD processors MKL takes a path about half as fast as oneDNN's; on some
# Intel ones MKL is the faster (experiments/results/benchmark.md, "The CPU's matrix products" and
# the eighth round). PYRO_VAE_ONEDNN=0 keeps torch's, =1 takes oneDNN's for every large
# product (as this package did before it timed them).
ONEDNN = (os.environ.get("PYRO_VAE_ONEDNN", "auto") != "0" and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
ONEDNN_MIN_MACS = 1 << 21  # rows x in x out below which torch's call costs less than oneDNN's


_flushing = [0]  # how many flush_denormals() blocks are open (they nest)


_GOMP_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void fn(void *): a parallel region's body


@functools.lru_cache(maxsize=None)
def _openmp():
    """torch's own OpenMP runtime (libgomp, shipped beside libtorch on Linux), or None (another
    threading library, another platform); looked up once."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    try:
        gomp = ctypes.CDLL(path) if os.path.exists(path) else None
    except OSError:
        return None
    if gomp is None or not hasattr(gomp, "GOMP_parallel"):
        return None
    gomp.GOMP_parallel.argtypes = [_GOMP_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return gomp


def set_flush_denormal_all_threads(on):
    """torch.set_flush_denormal(on) on this thread and on every thread of torch's OpenMP pool.

    The flag is a bit of each thread's own MXCSR register: torch.set_flush_denormal sets the
    calling thread's alone, and the pool's threads (which run the other halves of the products and
    elementwise loops on 2 threads) keep theirs, so denormals went on costing there. Each pool
    thread is asked to set its own, in one parallel region of the pool's size; a thread started
    later copies its flag from the thread that starts it (POSIX). Returns whether the CPU can
    flush (False on one that cannot, where nothing is done)."""
    can = torch.set_flush_denormal(on)
    gomp = _openmp() if can and torch.get_num_threads() > 1 else None
    if gomp is not None:
        body = _GOMP_BODY(lambda _: torch.set_flush_denormal(on))
        gomp.GOMP_parallel(body, None, torch.get_num_threads(), 0)  # releases the GIL: each thread takes it to run body
    return can


@contextmanager
def flush_denormals():
    """Within it, float results below 2^-126 (denormals) are flushed to zero by the CPU, on this
    thread and on torch's OpenMP threads, as XLA does by default; torch's default (off) is set
    again when the outermost block ends. Arithmetic on denormals is slow on x86: the VampPrior's
    mixture writes them by the thousand (the weights of its far components, exp of large negative
    numbers, and their gradients), which made its first epochs 3x slower
    (experiments/denormals.py; the standard prior's, and evaluation, measure the same both ways).
    Trainer.run trains inside it; PYRO_VAE_FLUSH_DENORMALS=0 leaves torch's setting alone."""
    if os.environ.get("PYRO_VAE_FLUSH_DENORMALS", "1") == "0":
        yield
        return
    if _flushing[0] == 0:
        set_flush_denormal_all_threads(True)  # False (and nothing done) where the CPU cannot
    _flushing[0] += 1
    try:
        yield
    finally:
        _flushing[0] -= 1
        if _flushing[0] == 0:
            set_flush_denormal_all_threads(False)


PLAIN_PRODUCT = ("none", [], "")  # _linear_pointwise's post-op arguments: no activation fused in


def _dnn(x, w, b=None):
    """x @ w.T (+ b) for 2-D x and w, by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, *PLAIN_PRODUCT)


PRODUCTS = ("forward", "grad_x", "grad_w")  # x W^T (+ b), g W and g^T x: a layer's three products


class ProductChoices:
    """Which library runs each of a layer's three products (True: oneDNN, False: torch's own),
    per shape: rows rounded up to a power of two, in and out features. A shape's product is timed
    both ways the first time it runs (a few milliseconds, on inputs of its own: no random number
    of a run is drawn) and the faster kept, oneDNN only where it is at least 5% faster.

    The choice decides how float sums are ordered, so a run's checkpoint records the choices made
    so far (`state`) and a resumed run takes them back (`load`): it goes on bit for bit as if it
    had never stopped. A checkpoint written before choices were timed has none: oneDNN ran every
    large product then, and `load(None)` says so. `mode` is "auto" (timed), "onednn" or "torch"
    for every product not yet chosen; PYRO_VAE_ONEDNN=1 and =0 set the last two."""

    def __init__(self, mode):
        self.mode, self.chosen = mode, {}
        self.seconds = 0.0  # spent timing, for the run log

    @staticmethod
    def key(rows, in_dim, out_dim):
        return (1 << max(rows - 1, 0).bit_length(), in_dim, out_dim)

    def __call__(self, key, product):
        """Whether `product` (an index into PRODUCTS) of the shape `key` runs in oneDNN."""
        choice = self.chosen.get(key)
        if choice is None:  # (not setdefault: a layer asks on every call, and this allocates once per shape)
            choice = self.chosen[key] = [None, None, None]
        if choice[product] is None:
            start = time.perf_counter()
            choice[product] = (self.mode == "onednn" if self.mode != "auto" or torch.compiler.is_compiling()
                               else onednn_is_faster(key, product))
            self.seconds += time.perf_counter() - start
        return choice[product]

    def state(self):
        """The choices made, as plain data: [[rows, in, out, forward, grad_x, grad_w], ...] (None where not made)."""
        return [[*k, *v] for k, v in sorted(self.chosen.items())]

    def summary(self):
        """One line on the choices made ("" where none was): how many products run in each library."""
        made = [c for v in self.chosen.values() for c in v if c is not None]
        if not made:
            return ""
        how = {"auto": f"each the faster for its shape here, timed once: {self.seconds:.1f} s",
               "onednn": "oneDNN for every one",
               "torch": "torch's for every one"}[self.mode]
        return (f"{sum(made)} of {len(made)} large CPU products in oneDNN, {len(made) - sum(made)} in torch's "
                f"matmul ({how}; the checkpoint records them)")

    def load(self, state):
        """Take back the choices `state()` returned (None: a run from before choices were timed,
        which ran every large product in oneDNN); a damaged state is a UserError."""
        if state is None:
            self.mode = "onednn" if ONEDNN else "torch"
            return
        ok = isinstance(state, list) and all(
            isinstance(e, list) and len(e) == 6 and all(type(n) is int and n > 0 for n in e[:3])
            and all(c is None or type(c) is bool for c in e[3:]) for e in state)
        if not ok:
            raise UserError("the recorded product choices must be [[rows, in, out, forward, grad_x, grad_w], ...] "
                            "with whole sizes and true, false or null choices")
        for e in state:
            self.chosen[tuple(e[:3])] = list(e[3:])


def onednn_is_faster(key, product, rounds=6, budget=0.25):
    """Time `product` of the shape `key` in torch and in oneDNN, alternately, on inputs made here
    (from a generator of its own, outside any tracing); True where oneDNN's fastest round is at
    least 5% below torch's. The first round warms both up and is not counted; past `budget`
    seconds (a product of thousands of rows) two counted rounds are enough."""
    rows, in_dim, out_dim = key
    with torch.no_grad(), disable_proxy_modes_tracing():
        gen = torch.Generator().manual_seed(0)
        x, w = torch.rand(rows, in_dim, generator=gen), torch.rand(out_dim, in_dim, generator=gen)
        g, b = torch.rand(rows, out_dim, generator=gen), torch.rand(out_dim, generator=gen)
        pair = [(lambda: F.linear(x, w, b), lambda: _dnn(x, w, b)),
                (lambda: g @ w, lambda: _dnn(g, w.t())),
                (lambda: g.t() @ x, lambda: _dnn(g.t(), x.t()))][product]
        best, began = [math.inf, math.inf], time.perf_counter()
        for r in range(rounds + 1):
            for i, f in enumerate(pair):
                start = time.perf_counter()
                f()
                if r:
                    best[i] = min(best[i], time.perf_counter() - start)
            if r >= 2 and time.perf_counter() - began > budget:
                break
    return best[1] < 0.95 * best[0]


def _mode_asked():
    """PYRO_VAE_ONEDNN's mode; another value is said in one line and taken as auto."""
    value = os.environ.get("PYRO_VAE_ONEDNN", "auto")
    modes = {"0": "torch", "1": "onednn", "auto": "auto"}
    if value not in modes:
        print(f"pyro-vae: PYRO_VAE_ONEDNN is 0, 1 or auto, not {value[:40]!r}: taking auto", file=sys.stderr)
    return modes.get(value, "auto")


def new_choices(mode=None):
    """A fresh ProductChoices: `mode`, or PYRO_VAE_ONEDNN's (auto by default); torch's where this
    torch has no oneDNN products."""
    return ProductChoices((mode or _MODE) if ONEDNN else "torch")


_MODE = _mode_asked()
_choosing = [new_choices()]  # the choices in force last: the process's own at the bottom


@contextmanager
def choosing_products(choices):
    """Within it, layers take their products' choices from `choices` (a ProductChoices, or a mode
    for a fresh one): a Trainer trains within its own, which its checkpoints record; the
    benchmark's torch-only loop runs within "torch"."""
    _choosing.append(new_choices(choices) if isinstance(choices, str) else choices)
    try:
        yield _choosing[-1]
    finally:
        _choosing.pop()


class OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with each of its three products in oneDNN or torch, as `use` says (three
    booleans, in PRODUCTS' order; default all oneDNN): the same arithmetic as F.linear up to
    float rounding (the sums run in another order)."""

    @staticmethod
    def forward(ctx, x, weight, bias, use=(True, True, True)):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        weight = weight.contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias, ctx.x_shape, ctx.use = bias is not None, x.shape, use
        y = _dnn(rows, weight, bias) if use[0] else F.linear(rows, weight, bias)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        grad_x = grad_w = grad_b = None
        # oneDNN reads a transposed (strided) operand as it lies: no copy of W^T (0.33 -> 0.18 ms
        # for 64 x 784 by 784 x 400 on this CPU, the same bits), nor of g^T and x^T
        if ctx.needs_input_grad[0]:
            grad_x = (_dnn(g, weight.t()) if ctx.use[1] else g @ weight).reshape(ctx.x_shape)  # g W
        if ctx.needs_input_grad[1]:
            grad_w = _dnn(g.t(), rows.t()) if ctx.use[2] else g.t() @ rows
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None


class Linear(nn.Linear):
    """nn.Linear (the same parameters, the same state dict) whose large float32 products on the
    CPU each run in torch or oneDNN, whichever is faster for the shape here (see ProductChoices);
    anything else is F.linear."""

    def forward(self, x):
        w = self.weight
        rows = x.numel() // max(x.shape[-1], 1) if x.dim() >= 1 else 0
        if not (ONEDNN and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                and rows * w.shape[0] * w.shape[1] >= ONEDNN_MIN_MACS
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()):
            return F.linear(x, w, self.bias)
        choose = _choosing[-1]
        key = choose.key(rows, w.shape[1], w.shape[0])
        grads = torch.is_grad_enabled()
        use = (choose(key, 0), grads and x.requires_grad and choose(key, 1),
               grads and w.requires_grad and choose(key, 2))
        if not any(use):
            return F.linear(x, w, self.bias)
        return OneDnnLinear.apply(x, w, self.bias, use)


def opaque_onednn_products(graph):
    """The graph (a torch.fx GraphModule, e.g. capture.py's step) with its oneDNN products
    (`mkldnn._linear_pointwise` on plain weights, as `Linear` calls it on the CPU) turned into
    calls of one custom op that runs the same product: Inductor compiles everything around an op
    it cannot see into, while its own lowering of `_linear_pointwise` expects weights it has
    packed itself and fails on these."""
    target = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    nodes = [n for n in graph.graph.nodes if target is not None and n.op == "call_function"
             and n.target is target.default and tuple(n.args[3:]) == PLAIN_PRODUCT]
    if not nodes:
        return graph
    op = onednn_linear_op(target)
    for n in nodes:
        n.target, n.args = op, tuple(n.args[:3])
    graph.recompile()
    return graph


_LIBRARY = []  # the torch.library that defines pyro_vae::onednn_linear, kept alive once made


def onednn_linear_op(target):
    """The op `pyro_vae::onednn_linear(x, weight, bias)`: `target`'s product, defined on first use
    (once per process). Defined with `torch.library.Library` and a CPU kernel, not
    `torch.library.custom_op`, whose Python wrapper costs 8-17 us a call (a training step has 8)."""
    try:
        return torch.ops.pyro_vae.onednn_linear.default
    except (AttributeError, RuntimeError):  # not defined yet
        pass
    library = torch.library.Library("pyro_vae", "DEF")
    library.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
    plain = target.default._op

    def onednn_linear(x, weight, bias):
        return plain(x, weight, bias, *PLAIN_PRODUCT)

    library.impl("onednn_linear", onednn_linear, "CPU")
    torch.library.register_fake("pyro_vae::onednn_linear", lib=library)(
        lambda x, weight, bias: x.new_empty(x.shape[0], weight.shape[0]))  # the shape, for tracing
    _LIBRARY.append(library)
    return torch.ops.pyro_vae.onednn_linear.default


ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU,
               "leaky-relu": nn.LeakyReLU}


def activation(name):
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def widths(hidden):
    """The hidden widths as a tuple: an int is one layer of that width (how runs before 0.2 record it)."""
    layers = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not layers or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in layers):
        raise BadValue(f"hidden must be a positive whole number or a list of them (one per layer), got {hidden!r}")
    return layers


class MLP(nn.Sequential):
    """in_dim -> hidden (activation) -> ... -> out_dim; softplus, as in Pyro's VAE example.

    `hidden` is one width, or one width per layer; `layers` repeats a single width."""

    def __init__(self, in_dim, hidden, out_dim, layers=1, activation_name="softplus"):
        sizes = [in_dim] + list(widths(hidden) * layers if isinstance(hidden, int) else widths(hidden))
        blocks = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            blocks += [Linear(a, b), activation(activation_name)()]
        super().__init__(*blocks, Linear(sizes[-1], out_dim))


def mlp(*, in_dim, out_dim, hidden=(400,), activation="softplus", shape=None, reads_x=False):
    """A fully connected body: one Linear and activation per hidden width, then a Linear."""
    return MLP(in_dim, widths(hidden), out_dim, activation_name=activation)


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): the gated dense layer of Tomczak & Welling's VampPrior
    networks (after Dauphin et al.'s gated linear units)."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.value = Linear(in_dim, out_dim)
        self.gate = Linear(in_dim, out_dim)

    def forward(self, x):
        return self.value(x) * torch.sigmoid(self.gate(x))


class Gated(nn.Module):
    """Gated dense layers of the `hidden` widths, then a Linear: the VampPrior paper's body
    (two gated layers of 300 units)."""

    def __init__(self, *, in_dim, out_dim, hidden=(300, 300), activation="softplus", shape=None, reads_x=False):
        super().__init__()
        sizes = [in_dim] + list(widths(hidden))
        self.layers = nn.Sequential(*(GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])))
        self.out = Linear(sizes[-1], out_dim)

    def forward(self, x):
        return self.out(self.layers(x))


def image_shape(shape):
    """(C, H, W) of an image shape (H, W) or (C, H, W), or a UserError for vectors."""
    shape = tuple(shape or ())
    if len(shape) == 2:
        return (1,) + shape
    if len(shape) == 3 and min(shape[1:]) >= 4:
        return shape
    raise UserError(f"--net conv is for images (H, W) or (C, H, W) of at least 4 x 4 pixels; this data's "
                    f"examples have shape {shape}: use --net mlp or gated")


class Conv(nn.Module):
    """A convolutional body for images of any size and channel count, in the DCGAN-like shape
    of the VAE literature. Its role follows from what it reads and writes:

    - reading an image (`reads_x`: the first C*H*W inputs are the image, the rest, a label or a
      latent, join after the convolutions): two stride-2 4x4 convolutions (32, 64 channels), then
      fully connected layers of the `hidden` widths;
    - writing an image (out_dim == C*H*W): fully connected layers to a 64-channel map of a
      quarter of the size, then two stride-2 transposed convolutions, cropped to H x W;
    - anything else (a prior network reading a label): the fully connected body."""

    def __init__(self, *, in_dim, out_dim, hidden=(400,), activation="softplus", shape=None, reads_x=False):
        super().__init__()
        self.c, self.h, self.w = image_shape(shape)
        pixels = self.c * self.h * self.w
        act = globals()["activation"](activation)
        self.role = "read" if reads_x else "write" if out_dim == pixels else "dense"
        if self.role == "read":
            self.features = nn.Sequential(nn.Conv2d(self.c, 32, 4, 2, 1), act(), nn.Conv2d(32, 64, 4, 2, 1), act(),
                                          nn.Flatten())
            n_features = 64 * (self.h // 4) * (self.w // 4)
            self.head = MLP(n_features + in_dim - pixels, widths(hidden), out_dim, activation_name=activation)
        elif self.role == "write":
            self.h4, self.w4 = math.ceil(self.h / 4), math.ceil(self.w / 4)
            self.head = MLP(in_dim, widths(hidden), 64 * self.h4 * self.w4, activation_name=activation)
            self.act = act()
            self.features = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), act(),
                                          nn.ConvTranspose2d(32, self.c, 4, 2, 1))
        else:
            self.head = MLP(in_dim, widths(hidden), out_dim, activation_name=activation)

    def forward(self, h):
        lead = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])
        if self.role == "read":
            pixels = self.c * self.h * self.w
            image, rest = h[:, :pixels], h[:, pixels:]
            out = self.head(torch.cat([self.features(image.reshape(-1, self.c, self.h, self.w)), rest], -1))
        elif self.role == "write":
            maps = self.act(self.head(h)).reshape(-1, 64, self.h4, self.w4)
            out = self.features(maps)[:, :, :self.h, :self.w].reshape(len(h), -1)
        else:
            out = self.head(h)
        return out.reshape(*lead, out.shape[-1])


NETS = {"mlp": mlp, "gated": Gated, "conv": Conv}


@dataclass(frozen=True)
class Body:
    """How a model's networks are built: `body(in_dim, out_dim)` gives one. `kind` is a net
    constructor (an entry of NETS or one of your own); the rest are its settings."""

    kind: object = mlp
    hidden: tuple = (400,)
    activation: str = "softplus"
    shape: tuple | None = None
    reads_x: bool = False

    def __call__(self, in_dim, out_dim):
        net = self.kind(in_dim=in_dim, out_dim=out_dim, hidden=self.hidden, activation=self.activation,
                        shape=self.shape, reads_x=self.reads_x)
        if not isinstance(net, nn.Module):
            raise UserError(f"net {getattr(self.kind, '__qualname__', self.kind)!r} gave a {type(net).__name__}, "
                            f"not an nn.Module")
        return net

    @property
    def width(self):
        """The first hidden width (what a part that sizes something else by it reads)."""
        return self.hidden[0]


def body(net):
    """A Body from what a part is handed: a Body as it is, or a width (or list of widths) for the
    fully connected body (so a part can be built by hand with net=128)."""
    return net if isinstance(net, Body) else Body(hidden=widths(net))


def cat(*inputs):
    """Concatenate on the last dim after broadcasting the leading ones.

    z may carry extra leading particle dims (K, B, Z) while y is (B, Y): both become (K, B, .)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in inputs], dim=-1)
