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

from .data import Dataset, download, load_dataset
from .errors import BadType, BadValue, UserError
from .estimators import (accuracy, active_units, elbo_per_example, importance_sampled, latent_means, log_weights,
                         predict)
from .models import MODELS, ModelContract, build_model, model_inputs
from .objectives import make_elbo
from .runs import Config, compare, evaluate_run, load_run, read_metrics, sample_run, summarize, train
from .svi import Callback, Trainer, fit

__all__ = ["accuracy", "active_units", "predict", "Dataset", "download", "load_dataset", "UserError", "BadValue", "BadType",
           "elbo_per_example", "evaluate_run", "importance_sampled", "latent_means", "log_weights", "sample_run",
           "MODELS", "ModelContract", "build_model", "model_inputs", "Config", "load_run", "read_metrics", "fit",
           "Trainer", "Callback", "make_elbo", "train", "compare", "summarize"]
