"""The runs layer: what turns the library into runs a person keeps (imports every layer below).

    config.py      Config: every setting of a run, checked once; model defaults read off the classes
    store.py       run directories: atomic files, metrics, checkpoints, load_run
    training.py    train / --resume: a Trainer with checkpoint, progress and Ctrl-C callbacks
    evaluation.py  evaluate_run -> eval.json
    figures.py     the figures of a trained model (computed with estimators, drawn with plots)
    classifier.py  the reference classifier behind label fidelity, cached per data set
    quadrants.py   Sohn et al.'s quadrant completion task
    compare.py     pyro-vae compare: a grid of runs over variants and seeds, summarized with intervals

Inside the layer the imports run one way too: config, store, classifier and figures, then
training, evaluation and quadrants, then compare (which composes them).
"""

from .classifier import labels_alone
from .compare import compare, summarize, t_interval
from .config import ARCHITECTURE, DATASET_DEFAULTS, RESUMABLE, Config, resolve_device
from .evaluation import evaluate_run
from .figures import conditional_panels, latent_space_comparison, redraw_run, run_figures, sample_run
from .store import (check_checkpoint_config, load_checkpoint, load_run, load_weights, make_run_dir,
                    model_for, read_config, read_metrics, save_checkpoint, write_metrics)
from .training import train

__all__ = ["ARCHITECTURE", "DATASET_DEFAULTS", "RESUMABLE", "Config", "resolve_device", "evaluate_run",
           "conditional_panels", "latent_space_comparison", "run_figures", "sample_run", "redraw_run",
           "check_checkpoint_config", "load_checkpoint", "load_run", "load_weights", "make_run_dir", "model_for",
           "read_config", "read_metrics", "save_checkpoint", "write_metrics", "train", "labels_alone", "compare",
           "summarize", "t_interval"]
