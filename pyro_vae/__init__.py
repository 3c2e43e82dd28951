"""pyro-vae: variational autoencoders and conditional VAEs as Pyro model/guide pairs.

The package is layered; each file imports only from the ones above it in this list:

    errors.py       the package's exceptions and single-value checks
    files.py        atomic writes and one-line write errors
    data.py         data sets as tensors on the device, binarization, batches
    nets.py         MLPs
    parts.py        priors, guides, likelihoods (swappable, by name or import path)
    models.py       the model contract; vae, cvae1..cvae4, ae, dae as model/guide pairs
    objectives.py   the ELBOs from pyro.infer by name, DeviceTrace_ELBO, the KL-weight handler
    estimators.py   importance-sampled log-likelihood, ELBO, latent means, prediction, label fidelity
    svi.py          Trainer (SVI with an ELBO from pyro.infer) and its callbacks; fit
    distributed.py  data-parallel training under torchrun (DDP around the ELBO)
    plots.py        tensors in, PNG out
    runs/           config, run directories, train/resume, evaluate, sample, the reference classifier, compare
    cli.py          the `pyro-vae` command: one function of runs/ per subcommand

This module is the Python API: the same functions the CLI calls.
"""

import importlib

# The API by name -> the module that defines it. Imported on first use (PEP 562), so `import
# pyro_vae.cli` for `pyro-vae --help` does not import torch; `from pyro_vae import train` works as ever.
_API = {
    "data": ["Dataset", "download", "load_dataset"],
    "errors": ["BadType", "BadValue", "UserError"],
    "estimators": ["accuracy", "active_units", "elbo_per_example", "importance_sampled", "latent_means", "log_weights",
                   "predict"],
    "models": ["MODELS", "ModelContract", "build_model", "model_inputs"],
    "objectives": ["make_elbo"],
    "runs": ["Config", "compare", "evaluate_run", "load_run", "read_metrics", "sample_run", "summarize", "train"],
    "svi": ["Callback", "Trainer", "fit"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
_MODULES = {"errors", "files", "data", "nets", "parts", "models", "objectives", "estimators", "distributed", "svi",
            "plots", "runs", "cli"}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | _MODULES)


__all__ = ["accuracy", "active_units", "predict", "Dataset", "download", "load_dataset", "UserError", "BadValue", "BadType",
           "elbo_per_example", "evaluate_run", "importance_sampled", "latent_means", "log_weights", "sample_run",
           "MODELS", "ModelContract", "build_model", "model_inputs", "Config", "load_run", "read_metrics", "fit",
           "Trainer", "Callback", "make_elbo", "train", "compare", "summarize"]
