"""How long does the K = 5000 importance-sampled log-likelihood take, and in how much memory?

Trains a VAE (784-400-50) for a couple of epochs on binarized Fashion-MNIST with pyro_vae.fit,
then times pyro_vae.importance_sampled on the first `--examples` test images for each
`--max-batch` (the chunk: (particle, example) pairs through the networks at once), with the peak
RSS growth of each (peak RSS during the call minus RSS before it; on CUDA, torch's peak allocation)
and the minor page faults during the call. With fewer than the 10k test images it also prints the time scaled to 10k,
labelled as an extrapolation (the work is linear in the number of examples).

    python experiments/eval_speed.py --examples 200 --max-batch 4096,16384,65536
"""

import argparse
import ctypes
import json
import resource
import time

import pyro
import torch

import pyro_vae
from pyro_vae.cli import positive_int, threads_setting


def proc_status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=positive_int, default=10000, help="test images scored (of 10k)")
    p.add_argument("--samples", type=positive_int, default=5000, help="K")
    p.add_argument("--max-batch", default="65536", help="comma-separated chunk sizes to time")
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--threads", type=threads_setting, default=1)
    p.add_argument("--glibc-default", action="store_true",
                   help="leave glibc's mmap and trim thresholds alone (pyro_vae.estimators.keep_freed_memory off), "
                        "to see the page faults it saves")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.glibc_default:
        pyro_vae.estimators.keep_freed_memory = lambda: None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pyro.set_rng_seed(0)
    data = pyro_vae.load_dataset("fashion-mnist", device=device)
    model = pyro_vae.build_model("vae", data.x_dim).to(device)
    pyro_vae.fit(model, data, args.epochs, batch_size=128, progress=False)
    x = data.splits["test"][0][:args.examples]
    model.eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; "
          f"vae trained {args.epochs} epochs; K={args.samples}, {len(x)} test images")
    for max_batch in map(int, args.max_batch.split(",")):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS growth is this run's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS
        before = proc_status("VmRSS")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        pyro.set_rng_seed(1)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        log_lik, elbo = pyro_vae.importance_sampled(model.model, model.guide, x, samples=args.samples,
                                                    max_batch=max_batch)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        peak = (torch.cuda.max_memory_allocated() if device == "cuda" else proc_status("VmHWM") - before) / 2**20
        result = {"max_batch": max_batch, "rss_before_mb": round(before / 2**20, 1), "examples": len(x), "samples": args.samples, "seconds": round(seconds, 2),
                  "peak_mb": round(peak, 1), "minor_page_faults": faults, "log_likelihood": round(log_lik.mean().item(), 3),
                  "elbo": round(elbo.mean().item(), 3)}
        if len(x) < 10000:
            result["extrapolated_seconds_10k"] = round(seconds * 10000 / len(x), 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
