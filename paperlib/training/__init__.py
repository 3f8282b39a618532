"""Training: the paper's four methods on one process or many (the profiles of :mod:`paperlib.config`).

>>> from paperlib.training import TrainConfig, train, load_trained
>>> cfg = TrainConfig.from_profile('smoke', method='penalty', penalty='fd', norm='l2', lam=1.0, h=0.01)
>>> run = train(cfg, 'runs')            # runs/smoke/fd-l2-lam1-h0.01/
>>> model, cfg = load_trained(run)

Modules: :mod:`.methods` (one step function per method), :mod:`.engine` (config, epochs, schedule,
evaluation, checkpoint/resume, timing), :mod:`.distributed` (torchrun, DDP, rank-0 I/O), :mod:`.cli`
(``paperlib train``).
"""

from paperlib.training.engine import (
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    learning_rate,
    load_trained,
    run_name,
    train,
    train_epochs,
)
from paperlib.training.methods import METHODS, build_method, pgd_perturbation

__all__ = ["TrainConfig", "TrainingDivergedError", "train", "load_trained", "run_name", "evaluate",
           "learning_rate", "train_epochs", "METHODS", "build_method", "pgd_perturbation"]
