"""Training: stochastic variational inference with an ELBO from `pyro.infer` (layer 7: imports
data, models, objectives, estimators and distributed).

`Trainer` keeps the state of training in one place: the model, the objective, one
`torch.optim.Adam` over all the model's parameters, gradient clipping and the KL-weight
schedule. `Trainer.run(data, epochs, batch_size, callbacks)` steps over the batches of each
epoch; what a run adds around it (checkpoints, metrics files, progress, a stop on Ctrl-C) is a
`Callback`. `fit` is the one-call form for the simple case.

The loss is the ELBO object's `differentiable_loss` of the model/guide pair (the PPL computes
it: Pyro traces the guide, replays the model and scores every site; no loss is written by hand
for a model). The epoch's loss is summed on the device and read once per epoch, and so is the
record of the first step whose loss was not finite: a divergence is found from the loss (and,
where a step raises, from the parameters), never from the wording of an exception.

Speed (see experiments/benchmark.py): Pyro's validation (argument checks on every distribution,
model/guide site matching, shape checks) costs up to ~10% of a small VAE's step on the CPU. It
runs on the first step only, where it catches a malformed model/guide with Pyro's own message, and
is off for the rest of training, the validation ELBO included.
"""

import math
import sys
import time

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch.optim import optimizer as torch_optimizer  # its registries of hooks on every optimizer (adam_step)
from tqdm import tqdm

from . import distributed
from .capture import CapturedStep, CaptureFailed
from .data import BINARIZATIONS, Dataset, batch_count, batches, batches_apart
from .errors import BadType, BadValue, Diverged, UserError, count, non_negative_number, one_of, positive_int, positive_number
from .estimators import elbo_per_example, importance_sampled
from .models import as_condition, model_inputs
from .nets import choosing_products, flush_denormals, new_choices
from .objectives import ELBOS, IWAE_ELBO, ScaleLatents, make_elbo


class Callback:
    """What a run adds to training. Every hook does nothing unless a subclass overrides it."""

    def on_train_start(self, trainer, epochs, steps):
        """Before the first epoch of this call: `steps` batches per epoch, up to epoch `epochs`."""

    def on_step_end(self, trainer, epoch, step, steps):
        """After each optimizer step (keep it cheap: `trainer.epoch_loss`, the sum of the epoch's
        losses so far, is a tensor on the device, summed when read: read it now and then)."""

    def on_epoch_end(self, trainer, metrics):
        """After each epoch's validation; `metrics` is the entry just added to `trainer.history`.
        Setting `trainer.stop_reason` (a sentence) ends training after this epoch."""

    def on_train_end(self, trainer):
        """After the last epoch, or when training stops with an exception."""


class Progress(Callback):
    """A tqdm bar over the steps, with the running ELBO, and one line per epoch."""

    def __init__(self):
        self.bar = None

    def on_train_start(self, trainer, epochs, steps):
        self.bar = tqdm(total=(epochs - trainer.epoch) * steps, desc="training", unit="step", leave=False,
                        disable=None)  # None: off where the output is not a terminal

    def on_step_end(self, trainer, epoch, step, steps):
        self.bar.update()
        if step % max(1, steps // 4) == 0:  # a few host reads per epoch, not one per step
            elbo = -trainer.epoch_loss.item() * distributed.world_size() / ((step + 1) * trainer.batch_size)
            self.bar.set_postfix_str(f"epoch {epoch} elbo {elbo:.2f}")

    def on_epoch_end(self, trainer, metrics):
        bound = f"  val IWAE bound {metrics['val_bound']:9.3f}" if "val_bound" in metrics else ""
        self.bar.write(f"epoch {metrics['epoch']:4d}  train ELBO {metrics['train_elbo']:9.3f}  "
                       f"val ELBO {metrics['val_elbo']:9.3f}{bound} nats/example  {metrics['seconds']:6.2f} s")

    def on_train_end(self, trainer):
        if self.bar is not None:
            self.bar.close()


# --compile: off (eager), on (the step captured once per shape and replayed), inductor (and compiled),
# auto (eager until the captured step measures faster on the benchmark).
COMPILE_MODES = ("auto", "on", "inductor", "off")
LABELLED_BATCHES = ("mixed", "separate")  # m2's schedules of labelled examples: see Trainer


def adam(params, lr):
    """Adam at `lr`: torch's fused kernel (one pass over all the parameters per step, where the
    default loops over them tensor by tensor, several passes each) where this torch and device have
    it, else torch's default. It is the same update rule; a checkpoint keeps which one a run uses
    and a resumed run goes on with it."""
    params = list(params)
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # torch < 2.4 has no fused Adam on the CPU
            pass
    return torch.optim.Adam(params, lr=lr)


def adam_step(optimizer):
    """`optimizer.step()`. For the fused Adam that `adam` builds, once every parameter has its state
    and a gradient, torch's fused kernel is called here directly: the same kernel on the same tensors
    with the group's own hyper-parameters, so the same bits, without the 0.1-0.2 ms of Python that
    `Optimizer.step` spends around it on every step (1-2% of a batch-64 VAE step on a CPU). Anything
    else (another optimizer, hooks, AMSGrad, a parameter without a gradient) takes `optimizer.step()`."""
    groups = optimizer.param_groups
    group = groups[0]
    if (len(groups) != 1 or not group.get("fused") or group["amsgrad"] or group["maximize"]
            or group["capturable"] or group["differentiable"] or group.get("decoupled_weight_decay")
            or not isinstance(group["lr"], float) or optimizer._optimizer_step_pre_hooks
            or optimizer._optimizer_step_post_hooks or getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
            or getattr(torch_optimizer, "_global_optimizer_post_hooks", None)):
        return optimizer.step()
    params = group["params"]
    states = [optimizer.state.get(p) for p in params]
    grads = [p.grad for p in params]
    first = params[0]
    if (any(not s for s in states) or any(g is None for g in grads)  # the first step creates the state
            or any(p.dtype != first.dtype or p.device != first.device for p in params)):
        return optimizer.step()
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                       steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                       grad_scale=None, found_inf=None)


MAX_CONDITION_VALUES = 1 << 24  # one-hot labels made once for a whole training split up to 64 MB of float32


class Trainer:
    """SVI on one model: the objective (an ELBO from `pyro.infer`, or its name as --elbo takes it:
    trace (the default), meanfield, iwae, enum), Adam at
    `lr` over all parameters, the KL weight `beta` ramped up linearly over the first
    `warmup_epochs`, and the gradient's global norm clipped to `clip_grad` when given.
    `inputs(images, labels)` gives the model's arguments for a batch (default: `model_inputs`;
    the quadrant task splits images instead). `compile` chooses the step: "auto" (the default)
    and "on" capture it once per batch shape (capture.py), "inductor" also compiles it, "off" runs
    Pyro's eager step; see `choose_capture`. `labelled_batches` is m2's schedule for a data set
    with hidden labels: "mixed" shuffles the labelled examples in among the rest, "separate" gives
    them batches (and so Adam steps) of their own, spread evenly over the epoch, as Pyro's example does.
    `binarization` names how training batches of pixels are drawn (data.BINARIZATIONS; "bernoulli"
    only to continue runs made before the faster "uniform" draw).

    `epoch` (epochs done), `history` (one metrics dict per epoch) and `products` (which library
    runs each large CPU product: nets.ProductChoices) are the state a checkpoint keeps with `model`
    and `optimizer`; set them, and load the optimizer's state, to continue."""

    def __init__(self, model, elbo=None, lr=1e-3, beta=1.0, warmup_epochs=0, clip_grad=None, inputs=None,
                 compile="auto", labelled_batches="mixed", binarization="uniform"):
        positive_number("lr", lr)
        non_negative_number("beta", beta)
        count("warmup_epochs", warmup_epochs)
        if clip_grad is not None:
            positive_number("clip_grad", clip_grad)
        # pyro.module registers parameters by name in Pyro's global store; a store still holding an
        # earlier model's tensors under the same names would shadow this model's (JIT tracing and
        # pyro.optim read the store), so start from an empty one.
        pyro.clear_param_store()
        self.model = model
        if isinstance(elbo, str):  # by name, as --elbo takes it
            elbo = make_elbo(elbo)
        elif elbo is not None and not (hasattr(elbo, "differentiable_loss") or hasattr(elbo, "loss_and_grads")):
            raise BadType(f"elbo must be an objective's name ({', '.join(ELBOS)}) or a pyro.infer ELBO, "
                          f"got {type(elbo).__name__}")
        self.elbo = elbo or make_elbo(getattr(model, "defaults", {}).get("elbo", "trace"))  # m2: enum
        self.optimizer = adam(model.parameters(), lr)
        self.beta, self.warmup_epochs, self.clip_grad = beta, warmup_epochs, clip_grad
        self.inputs = inputs
        # a ramped KL weight is a tensor on the parameters' device, written in place every step: the
        # captured step's graph holds that tensor, so it reads the current weight (no constant baked in).
        # (Adam above has refused a model without parameters.)
        first = next(iter(model.parameters()))
        self.kl_weight = ScaleLatents(torch.tensor(0.0, dtype=first.dtype, device=first.device)
                                      if warmup_epochs else beta)
        scaled = beta != 1 or warmup_epochs
        self.model_fn = self.kl_weight(model.model) if scaled else model.model
        self.guide_fn = self.kl_weight(model.guide) if scaled else model.guide
        self.differentiable = hasattr(self.elbo, "differentiable_loss")  # e.g. Pyro's RenyiELBO has loss_and_grads only
        if distributed.world_size() > 1 and not self.differentiable:
            raise UserError(f"{type(self.elbo).__name__} cannot run under torchrun: it has no differentiable loss")
        # DDP around the module that computes the ELBO, under torchrun
        self.loss_fn = distributed.loss_module(model, self.elbo, self.model_fn, self.guide_fn)
        self.epoch, self.history = 0, []
        self.compile = compile
        self.labelled_batches = one_of("labelled_batches", labelled_batches, LABELLED_BATCHES)
        self.binarize = BINARIZATIONS[one_of("binarization", binarization, BINARIZATIONS)]
        self.captured, self.capture_note = self.choose_capture(compile)
        self.stop_reason = None  # a callback sets it (e.g. early stopping) to end training after this epoch
        self.step_losses = []  # this epoch's losses, one device tensor per step, summed at its end
        self.batch_size = None
        # which library runs each large CPU product, timed on first use (nets.ProductChoices): the
        # run's own, so a checkpoint records them and a resumed run orders its sums as before. Under
        # torchrun every process must order them alike without asking the others: oneDNN for all.
        self.products = new_choices("onednn" if distributed.world_size() > 1 else None)

    def choose_capture(self, compile):
        """(a CapturedStep or None, a line saying which step runs and why). "auto" (the default) and
        "on" capture the loss where it can be captured (the same numbers as the eager step, bit for
        bit, without Pyro's Python per step), "auto" on the CPU only, where it is measured faster;
        "inductor" also compiles it; "off" keeps the eager step.
        A loss that cannot be captured runs eagerly: "on" says so when it is asked for, "auto" in
        the run log only."""
        if compile not in COMPILE_MODES:
            raise UserError(f"compile is {', '.join(COMPILE_MODES)}, got {compile!r}")
        why = None
        if compile == "off":
            why = "--compile off"
        elif not self.differentiable:
            why = f"{type(self.elbo).__name__} has no differentiable loss to capture"
        elif distributed.world_size() > 1:
            why = "DDP synchronises gradients in its own backward hooks"
        elif type(self.elbo).__name__.startswith("Jit"):
            why = "--jit compiles the loss its own way"
        elif "Enum" in type(self.elbo).__name__ and compile == "auto":
            why = "the enumerated ELBO reads its label mask on the host"
        elif compile == "auto" and any(p.device.type != "cpu" for p in self.model.parameters()):
            why = ("--compile auto captures where the benchmark measures it faster, so far the CPU only "
                   "(experiments/results/benchmark.md); --compile on captures here too")
        if why:
            return None, f"eager SVI step: {why}"
        if compile == "inductor":
            return (CapturedStep(self.model, self.loss_fn, compiler="inductor"),
                    "captured SVI step, compiled by Inductor (once, for the training batch's shape; the first steps wait for it)")
        return (CapturedStep(self.model, self.loss_fn),
                "captured SVI step (the loss traced once per batch shape, on its second step)")

    def set_lr(self, lr):
        """A new learning rate (a resumed optimizer state carries the old one)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def run(self, data, epochs, batch_size, callbacks=()):
        """Train on `data` (a `Dataset`) from epoch `self.epoch + 1` to `epochs`; returns the history.

        Each metric is a dict with `epoch`, `train_elbo` (the training objective: the ELBO, or its
        beta-weighted or IWAE form), `val_elbo` (the plain ELBO, one Monte Carlo draw per example on
        the fixed binarization), for the IWAE objective `val_bound` (the IWAE bound with its K, on
        the same images), all in nats per example, and `seconds` (training time of the
        epoch). A NaN or infinite loss raises `Diverged` at the end of its epoch. Under torchrun each
        process takes its shard of every batch (distributed.py). Denormal floats are flushed to zero
        while it runs (nets.flush_denormals), and large CPU products run as `self.products` chooses."""
        count("epochs", epochs)
        positive_int("batch_size", batch_size)
        self._check_data(data)
        x_train, y_train = data.splits["train"]
        n = len(x_train)
        if n == 0:
            raise BadValue("the training split is empty: nothing to train on")
        self.batch_size = batch_size
        inputs = self.inputs or (lambda images, labels: model_inputs(self.model, images, labels, data.n_classes))
        default_inputs = self.inputs is None and not hasattr(self.model, "inputs")  # the arguments model_inputs gives
        # the model reads the images alone (the default inputs of an unconditional model): no labels gathered
        images_only = default_inputs and not getattr(self.model, "conditional", True)
        # a conditional model's default inputs: every training example's condition made once (the
        # one-hot vectors of the labels: gathering a batch's labels, one_hot's range check and its
        # scatter cost some 50 us a step), a batch's rows gathered from it; the same values
        self._conditions = None
        if (default_inputs and getattr(self.model, "conditional", False) and torch.is_tensor(y_train)
                and (y_train.is_floating_point() or n * data.n_classes <= MAX_CONDITION_VALUES)):
            self._conditions = as_condition(y_train, data.n_classes, x_train.dtype)
        self._apart = None  # the examples that get batches of their own
        if self.labelled_batches == "separate" and getattr(data, "labelled", None) is not None:
            self._apart = torch.zeros(n, dtype=torch.bool, device=x_train.device)
            self._apart[torch.as_tensor(data.labelled, device=x_train.device)] = True
        steps = batch_count(n, batch_size, None if self._apart is None else len(data.labelled))
        self._first_step = True
        for c in callbacks:
            c.on_train_start(self, epochs, steps)
        try:
            self.stop_reason = None
            # denormals: the VampPrior's first epochs ran 3x slower on them (nets.py)
            with flush_denormals(), choosing_products(self.products):
                while self.epoch < epochs and self.stop_reason is None:
                    metrics = self._epoch(data, inputs, steps, callbacks, images_only)
                    self.epoch += 1
                    self.history.append(metrics)
                    for c in callbacks:
                        c.on_epoch_end(self, metrics)
        finally:
            for c in callbacks:
                c.on_train_end(self)
        return self.history

    def _check_data(self, data):
        """Refuse, in one line, data that is not a Dataset, or whose sizes are not the ones the model
        was built for (where the model says them and reads the default inputs): torch's shape error
        from inside Pyro's trace said neither."""
        if not isinstance(data, Dataset):
            raise BadType(f"data must be a pyro_vae.Dataset (pyro_vae.load_dataset(...), or Dataset.from_arrays(...)), "
                          f"got {type(data).__name__} {str(data)[:40]!r}")
        dims = getattr(self.model, "dims", None)
        if self.inputs is not None or not isinstance(dims, dict):
            return
        read = {"x": data.x_dim, **({"y": data.y_dim} if getattr(self.model, "conditional", False) else {})}
        for what, size in read.items():
            if size != dims.get(what, size):
                raise BadValue(f"the model was built for {what} of {dims[what]} values, and {data.name} gives {what} of "
                               f"{size}: build it with build_model(name, data.x_dim, data.y_dim, ...)")

    @property
    def epoch_loss(self):
        """The sum of this epoch's training losses so far (nats, over the examples seen), a tensor on
        the device, or None before the first step."""
        return torch.stack(self.step_losses).sum() if self.step_losses else None

    def _epoch(self, data, inputs, steps, callbacks, images_only=False):
        epoch = self.epoch + 1
        x_train, y_train = data.splits["train"]
        n, device = len(x_train), x_train.device
        self.model.train()
        start = time.perf_counter()
        # each step's loss (and clipped gradient norm) stays on the device, kept in a list: whether
        # they were finite, and their sum, are read once, at the epoch's end (no host read, and no
        # operator, per step)
        self.step_losses, norms, broke_at = [], [], None
        order = (batches(n, self.batch_size, device=device) if self._apart is None else
                 batches_apart(self._apart, self.batch_size, device=device))
        sharded = distributed.world_size() > 1
        for step, idx in enumerate(order):
            x = x_train.index_select(0, idx)  # the rows (x_train[idx] gathers them 3x slower on the CPU)
            if data.binarized:
                x = self.binarize(x)
            y = (None if images_only else self._conditions.index_select(0, idx) if self._conditions is not None
                 else y_train[idx])
            if sharded:  # binarized as a whole first: the bits do not depend on the processes
                part = distributed.shard(len(idx))
                x, y = x[part], None if y is None else y[part]
            if self.warmup_epochs:
                self.kl_weight.weight.fill_(self.beta * min(1.0, ((epoch - 1) * steps + step + 1)
                                                            / (self.warmup_epochs * steps)))
            args = (x,) if images_only else inputs(x, y)
            # Pyro's argument and support checks cost time on every step: run them on the first step
            # of the run (unless they are switched off), which is enough to catch a malformed model or guide.
            validate, self._first_step = self._first_step and is_validation_enabled(), False
            try:
                loss, norm = self._step(args, validate)
            except (ValueError, RuntimeError):
                if not self._numerically_broken(args):
                    raise  # a malformed model or guide: Pyro's or torch's own message stands
                broke_at = step
                break
            self.step_losses.append(loss)
            if norm is not None:
                norms.append(norm)
            for c in callbacks:
                c.on_step_end(self, epoch, step, steps)
        # (an ELBO with no differentiable loss gives its losses as host numbers)
        losses = torch.stack(self.step_losses).to(device) if self.step_losses else torch.zeros(0, device=device)
        finite = torch.isfinite(losses)
        if norms:
            finite &= torch.isfinite(torch.stack(norms).to(device))
        # the first step whose loss (or gradient norm) was not finite, or that raised; `steps`: none
        first_bad = torch.tensor(steps, device=device)
        if len(finite):
            first_bad = torch.where(finite, first_bad, torch.arange(len(finite), device=device)).amin()
        if broke_at is not None:
            first_bad.clamp_(max=broke_at)
        epoch_loss = losses.sum()
        distributed.all_sum(epoch_loss)
        train_elbo = -epoch_loss.item() / n  # the epoch's host read; on a GPU it waits for the last step
        seconds = time.perf_counter() - start
        bad = distributed.all_min(first_bad).item()
        if bad < steps:
            raise Diverged(f"training diverged: the loss became NaN or infinite at epoch {epoch}, "
                           f"step {bad + 1} of {steps}", epoch, bad + 1)
        self.model.eval()
        metrics = {"epoch": epoch, "train_elbo": train_elbo}
        with pyro.validation_enabled(False):
            val_inputs = inputs(*data.splits["val"])
            metrics["val_elbo"] = elbo_per_example(self.model.model, self.model.guide, *val_inputs).mean().item()
            if isinstance(self.elbo, IWAE_ELBO):  # the bound it trains on, for --select-on bound
                metrics["val_bound"] = importance_sampled(self.model.model, self.model.guide, *val_inputs,
                                                          samples=self.elbo.num_particles)[0].mean().item()
        if not all(map(math.isfinite, metrics.values())):  # the epoch's last step broke the weights
            raise Diverged(f"training diverged: the weights became NaN or infinite at epoch {epoch}, "
                           f"step {steps} of {steps}", epoch, steps)
        return {**metrics, "seconds": seconds}

    def _step(self, args, validate):
        """One optimizer step: (the detached loss, the gradient's norm before clipping or None where
        not clipped), on the device."""
        loss = None
        if self.captured is not None and not validate:  # the first, checked step runs eagerly
            try:
                loss = self.captured(*args)  # sets every gradient; None: a shape's first step, which runs eagerly
            except CaptureFailed as e:
                self.captured = None
                self.capture_note = f"eager SVI step: the loss could not be captured ({e})"
                if self.compile != "auto":  # asked for: said now (auto says it in the run log)
                    print(f"pyro-vae: {self.capture_note}", file=sys.stderr, flush=True)
                return self._step(args, validate)
        if loss is None:  # the eager step, Pyro's checks on as asked (the captured graph runs no Pyro)
            with pyro.validation_enabled(validate):
                self.optimizer.zero_grad(set_to_none=True)
                if self.differentiable:
                    loss = self.loss_fn(*args)
                    distributed.backward(loss)  # loss.backward(); under DDP the whole batch's gradient
                else:
                    loss = torch.tensor(self.elbo.loss_and_grads(self.model_fn, self.guide_fn, *args))
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad) if self.clip_grad else None
        adam_step(self.optimizer)
        return loss.detach(), norm

    @torch.no_grad()
    def _numerically_broken(self, args):
        """After a step raised: whether the cause is numbers, not code. True when a parameter is
        NaN or infinite, or when the loss of the same batch, computed without Pyro's argument
        checks, is (a NaN in the data or the weights, which validation reports as an error)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            return True
        try:
            with pyro.validation_enabled(False):
                loss = (self.elbo.differentiable_loss(self.model_fn, self.guide_fn, *args) if self.differentiable
                        else torch.tensor(self.elbo.loss(self.model_fn, self.guide_fn, *args)))
        except (ValueError, RuntimeError):
            return False
        return not bool(torch.isfinite(loss))


def fit(model, data, epochs, batch_size=128, lr=1e-3, progress=True, callbacks=(), **options):
    """Train `model` on `data` (a `Dataset`) with SVI for `epochs` epochs; returns the per-epoch
    metrics (see `Trainer.run`). `options` are the `Trainer`'s: `elbo`, `beta`, `warmup_epochs`,
    `clip_grad`, `inputs`."""
    positive_int("epochs", epochs)
    trainer = Trainer(model, lr=lr, **options)
    return trainer.run(data, epochs, batch_size, [Progress()] * bool(progress) + list(callbacks))
