"""pyro-vae: variational autoencoders and conditional VAEs as Pyro model/guide pairs.

    data.py      data sets as tensors on the device, binarization, batches
    nets.py      MLPs
    parts.py     priors, guides, likelihoods (swappable)
    models.py    vae, cvae1..cvae4 as model/guide pairs
    train.py     SVI with an ELBO from pyro.infer
    evaluate.py  importance-sampled log-likelihood, ELBO, active units, cvae3 prediction/accuracy
    classifier.py  the reference classifier and label fidelity of conditional samples
    quadrants.py   Sohn et al.'s quadrant completion: baseline, cvae3, hybrid CVAE+GSNN objective
    runs.py      run directories: config, metrics, checkpoints (exact resume)
    distributed.py  data-parallel training under torchrun (DDP around the ELBO)
    figures.py   samples, reconstructions, curves, latent space
    cli.py       the `pyro-vae` command
"""

from .data import Dataset, download, load_dataset
from .errors import UserError
from .evaluate import (accuracy, elbo_per_example, evaluate_run, importance_sampled, latent_means, log_weights,
                       predict)
from .figures import sample_run
from .models import MODELS, build_model, model_inputs
from .runs import Config, load_run, read_metrics
from .train import fit, make_elbo, train

__all__ = ["accuracy", "predict", "Dataset", "download", "load_dataset", "UserError", "elbo_per_example", "evaluate_run",
           "importance_sampled", "latent_means", "log_weights", "sample_run", "MODELS", "build_model",
           "model_inputs", "Config", "load_run", "read_metrics", "fit", "make_elbo", "train"]
