"""selfsup-lab: clustering-based self-supervised representation learning, small enough to read.

    import selfsup_lab
    run = selfsup_lab.train("simclr", "digits", epochs=20)
    run.metrics["knn_top1"]
"""
from .api import Run, evaluate, load_run, train
from .errors import UserError
from .train import Callback, Trainer, TrainConfig

__version__ = "0.1.0"
__all__ = ["train", "load_run", "evaluate", "Run", "Trainer", "TrainConfig", "Callback", "UserError"]
