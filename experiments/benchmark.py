"""How much does the PPL cost? pyro_vae.fit against a hand-written PyTorch loop, side by side.

`ours` is fit as it comes (--compile auto: the captured SVI step, pyro_vae/capture.py, with fit's
Adam, fused where torch has it); `eager` is the same fit with --compile off, on a copy of the same
networks, its epochs interleaved with ours.

`hand` is a hand-written PyTorch loop on the same networks (a copy starting from the same weights)
with the Adam such a loop makes, `torch.optim.Adam(params, lr)`; `handF` is the same loop with fit's
Adam (`pyro_vae.svi.adam`: fused), so ours/handF is the cost of the PPL alone, optimizer aside;
`handT` is the loop as a user writes it with torch alone: torch's Adam and torch's own matrix products
(`nets.Linear`'s choices of oneDNN switched off for its epochs), so ours/handT is what moving from
such a loop to fit gains or costs. All
see the same binarized Fashion-MNIST and the same batches; the epochs alternate (one epoch of fit,
then one of each other loop, from a fit callback) so all see the same machine load. A third
copy trains with Pyro's textbook loop (SVI.step, Trace_ELBO, pyro.optim.Adam, validation on), to
show what fit's path saves; --no-plain leaves it out. The
hand-written loss is the ELBO with a one-sample Monte Carlo KL, as Trace_ELBO computes it.
Where NumPyro is installed (`pip install -e '.[bench]'`), the vae and cvae2 rows add NumPyro's jitted
epoch of the same model and networks (experiments/numpyro_vae.py, in its own process, one of its
epochs right after each of fit's, while the torch loops wait); --no-numpyro leaves it out. All
paths run on the same CPUs: this process pins itself, and so NumPyro's, to its last --threads
CPUs (--no-pin: the OS places the torch loops, as before 2026-12-08).

    python experiments/benchmark.py            # full training split, 6 epochs per setting
    python experiments/benchmark.py --quick    # a 4k subset, 3 epochs: a smoke test (minutes, not a measurement)

Prints a table (ratio: of the median epochs to hand's; min r: of the fastest epochs; r 95%: the
95% interval of the geometric mean of the epochs' own ratios, epoch by epoch, as they alternate;
ours/N: fit's median epoch over NumPyro's, min: of their fastest, N 95%: the same interval), then
one JSON line (ratio_b64, ratio_b256 for vae, ours_numpyro_b64, ...; cvae2_ratio_b64, ...; and
epoch_s_b64, ...: each path's seconds per timed epoch, in order).
Peak memory: on CUDA torch's peak allocation during the timed epochs; on the CPU the growth of
peak RSS (VmHWM, reset after loading the data) in a fresh process that runs 30 steps of one path (one process per path, so the two
paths' allocations do not mix).
"""

import argparse
import copy
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.nn import functional as F

import pyro_vae
from pyro_vae.data import batches, binarize
from pyro_vae.nets import cat
from pyro_vae.cli import positive_float, positive_int, threads_setting
from numpyro_vae import MODELS as NUMPYRO_MODELS  # experiments/numpyro_vae.py: the models it writes in NumPyro

LOG_2PI = math.log(2 * math.pi)


def hand_written_loss(model, x, y=None):
    """-ELBO summed over the batch, written by hand on the model's own networks (vae, cvae2)."""
    loc, raw_scale = model.encoder.net(x if y is None else cat(x, y)).chunk(2, dim=-1)
    scale = F.softplus(raw_scale) + 1e-5
    z = loc + scale * torch.randn_like(loc)  # reparameterised sample
    logits = model.decoder.net(z if y is None else cat(z, y))
    log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
    log_p = (-0.5 * z ** 2 - 0.5 * LOG_2PI).sum(-1)
    return -(log_lik + log_p - log_q).sum()


def hand_written_epoch(model, optimizer, data, batch_size, steps=None):
    """One epoch of the reference loop; returns (seconds, train ELBO per example)."""
    x_train, labels = data.splits["train"]
    start = time.perf_counter()
    total = torch.zeros((), device=x_train.device)
    for step, idx in enumerate(batches(len(x_train), batch_size, device=x_train.device)):
        if steps is not None and step == steps:
            break
        x = binarize(x_train[idx])
        y = F.one_hot(labels[idx], data.n_classes).to(x.dtype) if model.conditional else None
        loss = hand_written_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    elbo = -total.item() / len(x_train)  # waits for the device, like fit's one read per epoch
    return time.perf_counter() - start, elbo


@functools.cache
def fashion_mnist(device, train_size):
    return pyro_vae.load_dataset("fashion-mnist", device=device, train_size=train_size)


def plain_svi_epoch(model, svi, data, batch_size):
    """One epoch of Pyro's textbook loop: SVI.step with Trace_ELBO and pyro.optim.Adam, validation on."""
    x_train, labels = data.splits["train"]
    start = time.perf_counter()
    total = 0.0
    for idx in batches(len(x_train), batch_size, device=x_train.device):
        total += svi.step(*pyro_vae.model_inputs(model, binarize(x_train[idx]), labels[idx], data.n_classes))
    return time.perf_counter() - start, -total / len(x_train)


class NumPyroEpochs:
    """NumPyro's jitted epoch of the same model (experiments/numpyro_vae.py --serve) in a process of its
    own, pinned to --threads CPUs, compiled before the torch epochs start; `epoch()` runs one of its
    epochs while this process waits, so its epochs take turns with the torch loops' as theirs do
    with each other. Seconds are scaled to all n examples (its epoch drops the last partial batch)."""

    def __init__(self, args, name, batch_size):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "numpyro_vae.py")
        cmd = [sys.executable, script, "--serve", "--model", name, "--batch-size", str(batch_size),
               "--threads", str(args.threads)]
        cmd += ["--train-size", str(args.train_size)] if args.train_size else []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._answer()
        self.scale = ready["train_size"] / (ready["train_size"] - ready["dropped_examples"])
        self.times, self.elbo = [], math.nan

    def _answer(self):
        for line in self.proc.stdout:  # its JSON line, after any line it prints for a person
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"numpyro_vae.py --serve stopped (exit status {self.proc.wait()})")

    def epoch(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        r = self._answer()
        self.times.append(r["seconds"] * self.scale)
        self.elbo = r["train_elbo"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def setup(args, name, batch_size):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = fashion_mnist(device, args.train_size)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    ours = pyro_vae.build_model(name, data.x_dim, data.n_classes, z_dim=50, hidden=400).to(device)
    ref = copy.deepcopy(ours)  # the same initial weights
    return device, data, ours, ref


def run_setting(args, name, batch_size):
    device, data, ours, ref = setup(args, name, batch_size)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=args.lr)  # the Adam a hand-written loop makes: torch's default
    fused = copy.deepcopy(ref)  # the hand-written loop with the Adam fit makes (fused where torch has it)
    fused_opt = pyro_vae.svi.adam(fused.parameters(), args.lr)
    plain_torch = copy.deepcopy(ref)  # the hand-written loop as a user writes it: torch's Linear products, torch's Adam
    plain_torch_opt = torch.optim.Adam(plain_torch.parameters(), lr=args.lr)
    ref_times, ref_elbos, fused_times, torch_times, peaks = [], [], [], [], {"ours": 0, "hand": 0}
    cuda = device == "cuda"
    plain = copy.deepcopy(ref)
    svi = SVI(plain.model, plain.guide, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO(max_plate_nesting=1))
    plain_times = []
    eager = copy.deepcopy(ref)  # fit's eager step (--compile off) on a third copy, epoch by epoch beside ours
    eager_trainer = pyro_vae.Trainer(eager, lr=args.lr, compile="off")
    eager_times = []
    numpyro = NumPyroEpochs(args, name, batch_size) if args.numpyro and name in NUMPYRO_MODELS else None

    class ReferenceEpoch(pyro_vae.Callback):
        def on_epoch_end(self, trainer, metrics):  # after each epoch of fit, one epoch of the reference loop
            if numpyro:  # right after fit's epoch: the pair behind ours/N shares the machine's moment
                numpyro.epoch()
            if cuda:
                peaks["ours"] = max(peaks["ours"], torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            seconds, elbo = hand_written_epoch(ref, ref_opt, data, batch_size)
            ref_times.append(seconds)
            ref_elbos.append(elbo)
            fused_times.append(hand_written_epoch(fused, fused_opt, data, batch_size)[0])
            with pyro_vae.nets.choosing_products("torch"):
                torch_times.append(hand_written_epoch(plain_torch, plain_torch_opt, data, batch_size)[0])
            if cuda:
                peaks["hand"] = max(peaks["hand"], torch.cuda.max_memory_allocated())
            pyro.clear_param_store()  # the eager copy registers its modules under ours' names
            eager_trainer.run(data, eager_trainer.epoch + 1, batch_size)
            eager_times.append(eager_trainer.history[-1]["seconds"])
            pyro.clear_param_store()
            if args.plain:
                # ours and the plain copy register modules under the same names; fit steps its modules'
                # own tensors, SVI steps the param store's, so each copy gets a fresh store in turn
                pyro.clear_param_store()
                plain_times.append(plain_svi_epoch(plain, svi, data, batch_size)[0])
                pyro.clear_param_store()
            if cuda:
                torch.cuda.reset_peak_memory_stats()

    try:
        history = pyro_vae.fit(ours, data, args.epochs, batch_size, args.lr, progress=False,
                               callbacks=[ReferenceEpoch()], compile=args.compile)
    finally:
        if numpyro:
            numpyro.close()
    x_val, y_val = data.splits["val"]
    ref.eval()
    ref_val = pyro_vae.elbo_per_example(ref.model, ref.guide,
                                        *pyro_vae.model_inputs(ref, x_val, y_val, data.n_classes)).mean().item()
    if not cuda:
        peaks = {path: memory_probe(args, name, batch_size, path) for path in ("ours", "hand")}
    ours_s = statistics.median(h["seconds"] for h in history[1:])  # epoch 1 is the warm-up
    eager_s = statistics.median(eager_times[1:])
    hand_s = statistics.median(ref_times[1:])
    fused_s = statistics.median(fused_times[1:])
    torch_s = statistics.median(torch_times[1:])
    plain_s = statistics.median(plain_times[1:]) if args.plain else float("nan")
    numpyro_s, numpyro_elbo = (statistics.median(numpyro.times[1:]), numpyro.elbo) if numpyro else (math.nan, math.nan)
    # on a shared machine the fastest epoch is the least disturbed one: its ratio is a check on the median's
    ours_times = [h["seconds"] for h in history[1:]]
    ours_min = min(ours_times)
    min_ratio = ours_min / min(ref_times[1:])
    ratio_ci = paired_interval(ours_times, ref_times[1:])
    numpyro_ci = paired_interval(ours_times, numpyro.times[1:]) if numpyro else (math.nan, math.nan)
    return {"model": name, "batch": batch_size, "ours_s": ours_s, "hand_s": hand_s, "ratio": ours_s / hand_s,
            "eager_s": eager_s, "eager_ratio": eager_s / hand_s, "capture_s": history[0]["seconds"] - eager_times[0],
            "fused_s": fused_s, "fused_ratio": ours_s / fused_s, "torch_s": torch_s, "torch_ratio": ours_s / torch_s,
            "min_ratio": min_ratio, "ratio_ci": ratio_ci, "ours_numpyro_ci": numpyro_ci,
            "plain_s": plain_s, "plain_ratio": plain_s / hand_s,
            "numpyro_s": numpyro_s, "numpyro_ratio": numpyro_s / hand_s, "numpyro_elbo": numpyro_elbo,
            "ours_numpyro": ours_s / numpyro_s,
            "min_ours_numpyro": ours_min / min(numpyro.times[1:]) if numpyro else math.nan,
            "ours_elbo": history[-1]["train_elbo"], "hand_elbo": ref_elbos[-1],
            "ours_val_elbo": history[-1]["val_elbo"], "hand_val_elbo": ref_val,
            "ours_peak_mb": peaks["ours"] / 2**20, "hand_peak_mb": peaks["hand"] / 2**20,
            "steps_per_epoch": -(-len(data.splits["train"][0]) // batch_size),
            "epoch_s": {"ours": ours_times, "hand": ref_times[1:], "numpyro": numpyro.times[1:] if numpyro else []}}


T975 = [math.nan, 12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04]
# Student's t, 97.5% quantile, by degrees of freedom; beyond 30, that of the next tabled df below
T975_BEYOND = [(40, 2.04), (60, 2.02), (120, 2.00), (math.inf, 1.98)]


def t975(df):
    if df < len(T975):
        return T975[df]
    return next(t for limit, t in T975_BEYOND if df <= limit)


def paired_interval(a, b):
    """The 95% interval of the geometric mean of a[i] / b[i] (epochs run in turn, so each pair shares
    the machine's moment), from Student's t on the logs: (low, high), NaN for fewer than 2 pairs."""
    logs = [math.log(x / y) for x, y in zip(a, b)]
    if len(logs) < 2:
        return math.nan, math.nan
    mean, half = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    half *= t975(len(logs) - 1)
    return math.exp(mean - half), math.exp(mean + half)


def paired_summary(a, b, label):
    """One line on the epochs' ratios a[i] / b[i]: median, quartiles, and the geometric mean with
    its 95% interval (`paired_interval`), headed `label` (e.g. "now / before")."""
    ratios = sorted(x / y for x, y in zip(a, b))
    n = len(ratios)
    low, high = paired_interval(a, b)
    geometric = math.exp(statistics.mean(math.log(r) for r in ratios))
    return (f"{label} per epoch: median {statistics.median(ratios):.3f}, quartiles "
            f"{ratios[n // 4]:.3f}-{ratios[3 * n // 4]:.3f}; geometric mean {geometric:.3f} "
            f"(95% interval {low:.3f}-{high:.3f}), {n} epochs")


def memory_probe(args, name, batch_size, path):
    """Peak-RSS growth (bytes) of 30 training steps of one path, in a fresh process."""
    cmd = [sys.executable, __file__, "--probe", path, name, str(batch_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def probe(args):
    path, name, batch_size = args.probe[0], args.probe[1], int(args.probe[2])
    args.train_size = 30 * batch_size  # 30 steps
    device, data, ours, ref = setup(args, name, batch_size)
    data.splits["val"] = tuple(t[:batch_size] for t in data.splits["val"])  # fit's validation pass: not training memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) left by loading the data set
    before = proc_status("VmRSS")
    if path == "ours":
        pyro_vae.fit(ours, data, 1, batch_size, args.lr, progress=False)
    else:
        hand_written_epoch(ref, torch.optim.Adam(ref.parameters(), lr=args.lr), data, batch_size)
    print(proc_status("VmHWM") - before)


def proc_status(field):
    """A memory field of /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def machine():
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    pinned = ""
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):
        pinned = f" (pinned to CPU {','.join(map(str, sorted(os.sched_getaffinity(0))))})"
    return (f"cpu: {cpu}, {os.cpu_count()} cores{pinned}; gpu: {gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); pyro {pyro.__version__}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4k training examples, 3 epochs")
    p.add_argument("--models", default="vae,cvae2")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--epochs", type=positive_int, default=6, help="per setting; the first is the warm-up")
    p.add_argument("--train-size", type=positive_int, default=None, help="training examples (default: all 54k)")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--threads", type=threads_setting, default=1, help="torch CPU threads")
    p.add_argument("--no-plain", dest="plain", action="store_false",
                   help="leave out the textbook SVI loop (Trace_ELBO, pyro.optim.Adam, validation on)")
    p.add_argument("--no-numpyro", dest="numpyro", action="store_false",
                   help="leave out NumPyro's jitted epoch (run only where numpyro is installed)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "inductor"],
                   help="ours: fit's default (auto), the captured step (on), or captured and compiled by Inductor")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the OS place the torch loops (by default all paths, NumPyro's included, are pinned "
                        "to the last --threads CPUs)")
    p.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first one warms up and is left out of the medians)")
    torch.set_num_threads(args.threads)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.pin and args.threads < len(cpus):
        # every path on the same CPUs: NumPyro's process pins itself to the first --threads CPUs it
        # may use, which are then these; the OS no longer moves the torch loops between CPUs
        os.sched_setaffinity(0, cpus[-args.threads:])
    if args.probe:
        return probe(args)
    if args.quick:
        args.train_size, args.epochs = args.train_size or 4000, 3
    args.numpyro = args.numpyro and importlib.util.find_spec("numpyro") is not None
    print(machine())
    print(f"ours: --compile {args.compile}; eager: --compile off")
    print(f"fashion-mnist binarized, 784-400-50 softplus, Adam {args.lr}, {args.epochs} epochs "
          f"(median of epochs 2..{args.epochs}), train_size {args.train_size or 'all'}")
    header = (f"{'model':6} {'batch':>5} {'ours s/ep':>10} {'hand s/ep':>10} {'ratio':>6} {'min r':>6} {'r 95%':>11} {'eager s/ep':>10} "
              f"{'ratio':>6} {'capture s':>9} {'handF s/ep':>10} {'ours/F':>6} {'handT s/ep':>10} {'ours/T':>6} "
              f"{'plain s/ep':>10} {'ratio':>6} "
              f"{'numpyro s/ep':>12} {'ratio':>6} {'ours/N':>6} {'min':>6} {'N 95%':>11} {'ours ELBO':>10} {'hand ELBO':>10} {'ours val':>9} {'hand val':>9} {'ours MB':>8} {'hand MB':>8}")
    print(header)
    summary = {}
    for name in args.models.split(","):
        for batch_size in map(int, args.batches.split(",")):
            r = run_setting(args, name, batch_size)
            print(f"{name:6} {batch_size:5d} {r['ours_s']:10.3f} {r['hand_s']:10.3f} {r['ratio']:6.3f} {r['min_ratio']:6.3f} "
                  f"{r['ratio_ci'][0]:5.3f}-{r['ratio_ci'][1]:5.3f} "
                  f"{r['eager_s']:10.3f} {r['eager_ratio']:6.3f} {r['capture_s']:9.2f} "
                  f"{r['fused_s']:10.3f} {r['fused_ratio']:6.3f} {r['torch_s']:10.3f} {r['torch_ratio']:6.3f} "
                  f"{r['plain_s']:10.3f} {r['plain_ratio']:6.3f} {r['numpyro_s']:12.3f} {r['numpyro_ratio']:6.3f} "
                  f"{r['ours_numpyro']:6.3f} {r['min_ours_numpyro']:6.3f} "
                  f"{r['ours_numpyro_ci'][0]:5.3f}-{r['ours_numpyro_ci'][1]:5.3f} "
                  f"{r['ours_elbo']:10.2f} {r['hand_elbo']:10.2f} {r['ours_val_elbo']:9.2f} {r['hand_val_elbo']:9.2f} "
                  f"{r['ours_peak_mb']:8.1f} {r['hand_peak_mb']:8.1f}", flush=True)
            prefix = "" if name == "vae" else f"{name}_"
            summary[f"{prefix}ratio_b{batch_size}"] = round(r["ratio"], 4)
            summary[f"{prefix}eager_ratio_b{batch_size}"] = round(r["eager_ratio"], 4)
            summary[f"{prefix}capture_s_b{batch_size}"] = round(r["capture_s"], 3)
            summary[f"{prefix}min_ratio_b{batch_size}"] = round(r["min_ratio"], 4)
            summary[f"{prefix}ratio_ci_b{batch_size}"] = [round(x, 4) for x in r["ratio_ci"]]
            summary[f"{prefix}ours_s_b{batch_size}"] = round(r["ours_s"], 4)
            summary[f"{prefix}hand_s_b{batch_size}"] = round(r["hand_s"], 4)
            summary[f"{prefix}handF_ratio_b{batch_size}"] = round(r["fused_ratio"], 4)
            summary[f"{prefix}handT_ratio_b{batch_size}"] = round(r["torch_ratio"], 4)
            if args.plain:
                summary[f"{prefix}plain_ratio_b{batch_size}"] = round(r["plain_ratio"], 4)
            if not math.isnan(r["numpyro_s"]):
                summary[f"{prefix}numpyro_ratio_b{batch_size}"] = round(r["numpyro_ratio"], 4)
                summary[f"{prefix}numpyro_s_b{batch_size}"] = round(r["numpyro_s"], 4)
                summary[f"{prefix}numpyro_elbo_b{batch_size}"] = r["numpyro_elbo"]
                summary[f"{prefix}ours_numpyro_b{batch_size}"] = round(r["ours_numpyro"], 4)
                summary[f"{prefix}min_ours_numpyro_b{batch_size}"] = round(r["min_ours_numpyro"], 4)
                summary[f"{prefix}ours_numpyro_ci_b{batch_size}"] = [round(x, 4) for x in r["ours_numpyro_ci"]]
            summary[f"{prefix}epoch_s_b{batch_size}"] = {k: [round(t, 4) for t in v] for k, v in r["epoch_s"].items()}
    summary["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    summary["threads"] = torch.get_num_threads()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
