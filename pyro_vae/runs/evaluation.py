"""`pyro-vae evaluate`: score a saved run on its test split and write RUN_DIR/eval.json (runs layer)."""

import sys
import time
from pathlib import Path

from ..errors import positive_int
from ..files import check_writable, write_json
from ..data import is_builtin
from ..estimators import (MAX_BATCH, accuracy, active_units, classifier_accuracy, condition_agreement, elbo_per_example,
                          importance_sampled, rate_distortion,
                          importance_sampled_over_labels, label_fidelity, latent_means)
from ..models import model_inputs
from .classifier import reference_classifier, reference_predictor
from .training import collapse_note
from .store import load_run, untrained_note


def evaluate_run(run_dir, iw_samples=5000, device="auto", max_batch=MAX_BATCH, progress=True, examples=None,
                 mc_particles=100, fidelity_samples=100, classifier=None, checkpoint="best"):
    """Score a saved run on its test split (or its first `examples` images) and write
    RUN_DIR/eval.json; returns the dict. Every number is in nats per example (natural log,
    higher is better): log p(x) for vae and m2 (y summed out), log p(x|y) for cvae1/2/4, log p(y|x)
    for cvae3. m2 runs also get `test_accuracy` of q(y|x).

    cvae3 runs on labels also get `test_accuracy` (at z* = mean of p(z|x)) and `test_accuracy_mc`
    (p(y|x,z) averaged over `mc_particles` draws z ~ p(z|x)); cvae1/2/4 runs get `label_fidelity`
    from `fidelity_samples` draws per class, scored by the reference classifier (`classifier`
    path, or the data set's cached one; see runs/classifier.py).

    The weights scored are the run's best epoch by validation ELBO where it kept them (best.pt,
    trained with --patience), else its last; `checkpoint="last"` scores the last. eval.json names
    the file and its epoch."""
    positive_int("iw_samples", iw_samples)
    if examples is not None:
        positive_int("examples", examples)
    model, config, data = load_run(run_dir, device, checkpoint)
    check_writable(run_dir)  # before the scoring, which can take minutes: nothing is computed for nothing
    untrained = untrained_note(run_dir, model)
    if progress:
        print(f"pyro-vae: evaluating {config.model} of {run_dir} ({model.checkpoint['file']}, epoch "
              f"{model.checkpoint['epoch']}) on {min(len(data.splits['test'][0]), examples or len(data.splits['test'][0]))} "
              f"test examples of {data.name}, K = {iw_samples}, {next(model.parameters()).device}; writing "
              f"{run_dir}/eval.json", flush=True)
        if untrained:
            print(f"pyro-vae: warning: {untrained}", file=sys.stderr, flush=True)
    x, labels = (t[:examples] for t in data.splits["test"])
    args = model_inputs(model, x, labels, data.n_classes)
    start = time.perf_counter()
    result = {"model": config.model, "prior": config.prior, "guide": config.guide, "dataset": config.dataset,
              "split": "test", "examples": len(x), "iw_samples": iw_samples,
              "checkpoint": model.checkpoint["file"], "checkpoint_epoch": model.checkpoint["epoch"]}
    if hasattr(model, "classify") and getattr(model.encoder, "has_density", True):  # m2: y summed out exactly
        log_lik, elbo = importance_sampled_over_labels(model, x, data.n_classes, samples=iw_samples,
                                                       max_batch=max_batch, progress=progress)
        result.update(test_elbo=elbo.mean().item(), test_log_likelihood=log_lik.mean().item(),
                      test_accuracy=classifier_accuracy(model, x, labels), labels=config.labels,
                      note="log p(x) with y summed over the classes, K draws of z per class; "
                           "test_accuracy: argmax q(y|x)")
    elif getattr(model.encoder, "has_density", True):
        log_lik, elbo = importance_sampled(model.model, model.guide, *args, samples=iw_samples,
                                           max_batch=max_batch, progress=progress)
        result.update(test_elbo=elbo.mean().item(), test_log_likelihood=log_lik.mean().item())
    else:  # a point-mass guide: log p(x, z*) at the code, and no likelihood estimate
        result.update(test_elbo=elbo_per_example(model.model, model.guide, *args).mean().item(),
                      test_log_likelihood=None, iw_samples=0,
                      note="delta guide: test_elbo is log p(x, z*) at the code z* = f(x); "
                           "a point mass has no density, so there is no importance-sampled estimate")
    result.update(active_units=active_units(latent_means(model, *args)))
    if not hasattr(model, "classify"):  # (m2's y is summed out: its rate has no one-draw form here)
        rate, distortion = rate_distortion(model.model, model.guide, *args)
        result.update(rate=rate.mean().item(), distortion=distortion.mean().item())
    # (initial weights are not a collapsed posterior: the warning above says what they are)
    collapse = None if result.get("iw_samples") == 0 or untrained else collapse_note(result["active_units"],
                                                                                      result.get("rate"))
    if collapse:
        result["collapse"] = collapse
        if progress:
            print(f"pyro-vae: warning: {collapse}", file=sys.stderr, flush=True)
    if model.observed == "y" and data.condition == "label":  # cvae3 as a classifier
        result["test_accuracy"] = accuracy(model, x, labels)
        result["test_accuracy_mc"] = accuracy(model, x, labels, particles=mc_particles)
        result["mc_particles"] = mc_particles
    if model.conditional and model.observed == "x" and data.condition in ("attributes", "covariates"):
        result.update(condition_agreement(model, data, reference_predictor(data, progress=progress)))
    elif model.conditional and model.observed == "x" and fidelity_samples and not is_builtin(config.dataset):
        result.update(label_fidelity(model, data, reference_predictor(data, progress=progress),
                                     per_class=fidelity_samples))
    elif model.conditional and model.observed == "x" and fidelity_samples:
        reference = reference_classifier(config.dataset, config.data_dir, device=x.device, path=classifier,
                                         progress=progress)
        result.update(label_fidelity(model, data, reference, per_class=fidelity_samples))
    result["seconds"] = time.perf_counter() - start
    write_json(Path(run_dir) / "eval.json", result)
    return result

