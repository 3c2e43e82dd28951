"""Compare vae, cvae1..cvae4 and m2 (fully labelled) with one architecture and budget per data set.

Trains each variant on `digits` and on binarized Fashion-MNIST, scores it with `evaluate_run`
(test ELBO, importance-sampled log-likelihood, cvae3 accuracy, label fidelity), and writes
experiments/results/cvae_comparison.md plus one PNG per data set of class-conditional samples
(cvae1, cvae2, cvae4 side by side). A finished run (eval.json present) is reused, not retrained.

    OMP_NUM_THREADS=1 python experiments/cvae_comparison.py
    OMP_NUM_THREADS=1 python experiments/cvae_comparison.py --datasets digits --epochs 5   # quick
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pyro_vae import Config, evaluate_run, load_run, train
from pyro_vae.runs.figures import conditional_panels
from pyro_vae.runs import read_metrics

MODELS = ["vae", "cvae1", "cvae2", "cvae3", "cvae4", "m2"]
# One architecture and budget per data set, the same for every variant. The Fashion-MNIST budget
# is what finishes on one shared CPU thread in minutes, not a converged result.
BUDGETS = {
    "digits": dict(epochs=100, z_dim=8, hidden=128, batch_size=64, iw_samples=5000, examples=None),
    "fashion-mnist": dict(epochs=10, z_dim=20, hidden=200, batch_size=128, iw_samples=1000, examples=2000),
}
BOUND_OF = {"vae": "log p(x)", "cvae1": r"log p(x\|y)", "cvae2": r"log p(x\|y)", "cvae3": r"log p(y\|x)",
            "cvae4": r"log p(x\|y)", "m2": "log p(x)"}  # \| : a bar inside a markdown table cell
HERE = Path(__file__).resolve().parent


def run_variant(model, dataset, budget, runs):
    run_dir = runs / dataset / model
    if (run_dir / "eval.json").is_file():
        return run_dir, json.loads((run_dir / "eval.json").read_text())
    config = Config(model=model, dataset=dataset, epochs=budget["epochs"], z_dim=budget["z_dim"],
                    hidden=budget["hidden"], batch_size=budget["batch_size"], device="cpu", seed=0)
    train(config, out=run_dir, progress=False)
    result = evaluate_run(run_dir, iw_samples=budget["iw_samples"], device="cpu", progress=False,
                          examples=budget["examples"])
    return run_dir, result


def fmt(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def table(dataset, budget, rows):
    k = budget["iw_samples"]
    lines = [f"### {dataset}", "",
             f"Budget: {budget['epochs']} epochs, batch {budget['batch_size']}, z {budget['z_dim']}, "
             f"hidden {budget['hidden']} (one softplus layer per network), Adam lr 1e-3, Trace_ELBO, 1 particle, "
             f"seed 0. Scored on the fixed binarization of the first "
             f"{rows[0][1]['examples']} test examples; log-likelihood with K = {k} importance samples from "
             f"q(z|x,y). Nats per example, higher is better.", "",
             "| variant | bound of | test ELBO | test log-lik (IS, K=%d) | label fidelity | accuracy (cvae3 at z*; m2 q(y\\|x)) "
             "| cvae3 accuracy (MC, S=100) | active units | s / epoch |" % k,
             "|---|---|---|---|---|---|---|---|---|"]
    for model, r, seconds in rows:
        lines.append(f"| {model} | {BOUND_OF[model]} | {fmt(r['test_elbo'])} | {fmt(r['test_log_likelihood'])} "
                     f"| {fmt(r.get('label_fidelity'), 3)} | {fmt(r.get('test_accuracy'), 4)} "
                     f"| {fmt(r.get('test_accuracy_mc'), 4)} | {r['active_units']} | {fmt(seconds, 1)} |")
    fidelity = [r for _, r, _ in rows if "classifier_test_accuracy" in r]
    if fidelity:
        lines += ["", f"Reference classifier (MLP, 256 softplus units, trained on the grey {dataset} training "
                      f"split): test accuracy {fidelity[0]['classifier_test_accuracy']:.4f} on grey test images. "
                      f"Label fidelity = share of {fidelity[0]['fidelity_samples_per_class']} mean images of "
                      f"p(x|z,y), z ~ p(z|y), per class that it assigns to the class asked for (chance 0.1)."]
        lines += ["", "Per-class label fidelity:", "",
                  "| variant | " + " | ".join(str(c) for c in range(10)) + " |", "|---" * 11 + "|"]
        for model, r, _ in rows:
            if "label_fidelity_per_class" in r:
                lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in r["label_fidelity_per_class"]) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--epochs", type=int, default=None, help="override every budget's epochs (quick runs)")
    p.add_argument("--runs", default="runs/cvae_comparison", help="where the run directories go")
    p.add_argument("--out", default=str(HERE / "results"), help="where the table and figures go")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    started = time.time()
    for dataset in args.datasets:
        budget = dict(BUDGETS[dataset], **({"epochs": args.epochs} if args.epochs else {}))
        rows, generators = [], {}
        for model in MODELS:
            run_dir, result = run_variant(model, dataset, budget, runs / (f"e{args.epochs}" if args.epochs else ""))
            metrics = read_metrics(run_dir)
            rows.append((model, result, sum(m["seconds"] for m in metrics) / len(metrics)))
            print(f"{dataset} {model}: {json.dumps({k: v for k, v in result.items() if 'per_class' not in k})}",
                  flush=True)
            if model in ("cvae1", "cvae2", "cvae4", "m2"):
                generators[model], _, data = load_run(run_dir, "cpu")
        figure = out / f"cvae_comparison_{dataset}{f'_e{args.epochs}' if args.epochs else ''}.png"
        conditional_panels(generators, data, figure)
        sections.append(table(dataset, budget, rows) + f"\n\n![class-conditional samples]({figure.name})\n\n"
                        f"`{figure.name}`: mean images of p(x|z,y) for z ~ p(z|y), 8 draws per class "
                        f"(rows), per variant (m2: z ~ p(z)). vae is not conditional and cvae3 generates labels, not images.")
    command = "OMP_NUM_THREADS=1 python experiments/cvae_comparison.py " + " ".join(sys.argv[1:])
    machine = (f"{platform.machine()} CPU ({os.cpu_count()} cores shared with other jobs, torch on "
               f"{torch.get_num_threads()} thread, load average {os.getloadavg()[1]:.1f} over the last 5 min: other "
               f"work slows the timings), Python {platform.python_version()}, torch {torch.__version__}")
    text = (f"# CVAE variants compared\n\nMade by `{command.strip()}` on {machine}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.time() - started) / 60:.0f} min "
            f"(reused runs not counted).\n\nThe bounds are of different quantities: cvae1/2/4 bound log p(x|y), vae "
            f"log p(x), cvae3 log p(y|x); compare cvae1/2/4 with each other; against vae, note that for the "
            f"true distribution log p(x|y) <= log p(x) + log 10 (10 equally likely classes). Seconds per epoch are wall "
            f"time of the training loop on a shared machine: noisy.\n\n" + "\n\n".join(sections) + "\n")
    name = "cvae_comparison.md" if not args.epochs else f"cvae_comparison_e{args.epochs}.md"
    (out / name).write_text(text)
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
