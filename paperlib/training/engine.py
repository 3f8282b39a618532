"""The training engine: a typed config, SGD with the paper's schedules, per-epoch evaluation, exact resume.

:func:`train` runs one :class:`TrainConfig` into a run of the run store (``runs/<profile>/<run_name>/``):

* SGD with momentum and weight decay; the learning rate is multiplied by ``lr_gamma`` at each milestone
  epoch (the profiles of :mod:`paperlib.config`; free AT divides epochs and milestones by ``m``);
* every epoch: training (wall time measured, evaluation excluded), evaluation of the clean test error in eval
  mode, one row of ``train_log.csv``, a line of ``log.txt``, and a checkpoint (model, optimizer, method state,
  log, elapsed training time) written atomically;
* exact resume: data order depends only on ``(seed, epoch)``, every step's randomness on
  ``(seed, epoch, step, rank)``, so training N epochs straight and training k, being killed, and resuming to
  N give the same weights;
* a non-finite loss stops training before it reaches the weights, with a :class:`TrainingDivergedError` naming
  the epoch and step; the last good checkpoint stays;
* torchrun / DDP (see :mod:`paperlib.training.distributed`): ``batch_size`` is global, each rank gets
  ``batch_size / world_size`` examples of every global batch, only rank 0 writes.

Results: ``weights.pt`` (final state_dict), ``train_log.csv`` (per epoch), ``metrics.json`` (clean test error in
percent, total training hours, ...). :func:`load_trained` gives back ``(model in eval mode, TrainConfig)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from paperlib.config import (
    OMIT_AT_DEFAULT,
    ConfigError,
    PROFILES,
    check_choice,
    check_linf_eps,
    check_nonnegative,
    check_positive,
    config_from_dict,
    config_hash,
    get_profile,
    normalize_norm,
)
from paperlib.models import architecture_fingerprint
from paperlib.regularizers import FD_SCHEMES, PENALTY_METHODS, SCALES, penalty_norm
from paperlib.training.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    init_distributed,
    unwrap_model,
    wrap_model,
)
from paperlib.training.methods import METHODS, build_method

__all__ = ["TrainConfig", "TrainingDivergedError", "run_name", "train", "load_trained", "evaluate",
           "learning_rate", "train_epochs", "minibatches_per_pass"]

# Fields that belong to one method only; they are None for the others.
_METHOD_FIELDS = {
    "penalty": ("penalty", "norm", "lam", "h", "scheme", "scale", "bn_guard"),
    "pgd-at": ("norm", "eps", "steps", "step_size", "random_start", "bn_guard"),
    "free-at": ("norm", "eps", "m", "free_schedule"),
    "undefended": (),
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "penalty": {"penalty": "fd", "norm": "l2", "lam": 0.1, "h": 0.01, "scheme": "forward", "scale": "eq8",
                "bn_guard": False},
    "pgd-at": {"norm": "linf", "eps": 8 / 255, "steps": 7, "step_size": None, "random_start": True,
               "bn_guard": False},
    "free-at": {"norm": "linf", "eps": 8 / 255, "m": 8},
    "undefended": {},
}


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model. Build it with :meth:`from_profile`.

    The recipe fields (Args) come from the profile; the method fields (Other Parameters) say what is trained.

    Args:
        profile: run-store profile (``smoke``, ``fmnist``, ``cifar10``, ``imagenet``).
        dataset, model: names for :func:`paperlib.data.load_dataset` / :func:`paperlib.models.build_model`.
        epochs: epochs of standard training (>= 1); free AT runs ``ceil(epochs / m)``.
        batch_size: global minibatch size (split over torchrun ranks).
        lr, momentum, weight_decay: SGD; ``milestones`` (epochs) at which lr is multiplied by ``lr_gamma``.
        eval_batch_size: batch size of the per-epoch evaluation.
        train_subset, test_subset: use this many seeded-random images (seed 0, the same for every model), or all.
        augment: the dataset's training augmentation (CIFAR-10: crop, flip, Cutout; ImageNet: resized crop, flip).
        num_workers: DataLoader workers for file-backed datasets.
        seed: seeds the initialization, the data order and every random step.
        amp: bfloat16 autocast on CUDA (off by default: the FD quotient ``(l(x+hd) - l(x))/h`` loses digits in
            low precision; the loss itself is computed in float32 either way). Ignored on CPU.
        channels_last: ``'auto'`` (on CUDA with amp), ``'on'``, ``'off'``.
        grad_clip: clip the parameter gradient's global l2 norm to this value before every optimizer step
            (``None``: no clipping, the paper's recipe). A stabilisation for the finite-difference penalty at
            small h, where a ReLU switching between x and x + h d makes the parameter gradient jump by O(1/h);
            the fraction of clipped steps is logged per epoch.

    Other Parameters:
        method: ``'undefended'``, ``'penalty'``, ``'pgd-at'`` or ``'free-at'``.
        penalty: ``'fd'`` (finite differences) or ``'dbp'`` (double backprop).             [penalty]
        norm: penalty: the penalty's norm ``'l2'``/``'l1'`` (``'l1'`` is the dual of linf attacks);
            AT: the ball's norm ``'linf'`` (paper) or ``'l2'``. (The paper's row labels: "squared l1 norm",
            "linf 7-step AT".)                                                            [penalty, AT]
        lam: regularization strength (>= 0); h: FD step in [0, 1] pixel units (> 0, FD only);
            scheme: ``'forward'``/``'central'`` (FD only); scale: ``'eq8'``/``'algorithm1'``/``'eq8-literal'``.
        bn_guard: perturbed/attack forwards leave BatchNorm running statistics alone.     [penalty, pgd-at]
        eps: AT ball radius in pixel units (8/255); steps: PGD steps (7); step_size: PGD step (default eps/4);
            random_start: Madry's uniform start (True) or the authors' start at x (False).  [pgd-at]
        m: free-AT replays per minibatch (8).                                             [free-at]
        free_schedule: ``'steps'``: free AT takes as many SGD steps as standard training of ``epochs`` epochs
            (``epochs * steps_per_epoch / m`` minibatches, each replayed m times) with the same learning-rate
            schedule counted in replay-epochs, as Shafahi et al. do, and is evaluated once per replay-epoch
            (``train_log.csv``: ``epoch`` counts replay-epochs, ``pass`` the passes); ``None``: the earlier schedule of
            ``ceil(epochs / m)`` passes of m replays with milestones divided by m (kept so runs stored under it
            keep their config hash).                                                      [free-at]

    Fields of other methods must be left None (an explicit value is an error, so a run name never hides a
    setting). Bad values raise :class:`~paperlib.config.ConfigError` naming the value and what is allowed.
    """

    profile: str
    dataset: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.2
    eval_batch_size: int = 500
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = False
    num_workers: int = 0
    seed: int = 0
    amp: bool = False
    channels_last: str = "auto"
    method: str = "undefended"
    penalty: str | None = None
    norm: str | None = None
    lam: float | None = None
    h: float | None = None
    scheme: str | None = None
    scale: str | None = None
    bn_guard: bool | None = None
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    random_start: bool | None = None
    m: int | None = None
    # Added after runs were stored: left out of the hash while at their default (see config.OMIT_AT_DEFAULT).
    grad_clip: float | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    free_schedule: str | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_profile(cls, profile: str, **overrides: Any) -> "TrainConfig":
        """The profile's recipe with ``overrides`` (any field, taken literally: ``train_subset=None`` means all
        images; a method field left ``None`` gets the method's default).

        >>> TrainConfig.from_profile('fmnist', method='penalty', penalty='fd', norm='l1', lam=1.0, h=0.1)
        """
        prof = get_profile(profile)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; allowed: {sorted(names)}")
        base: dict[str, Any] = {
            "profile": prof.name, "dataset": prof.dataset, "model": prof.model, "epochs": prof.epochs,
            "batch_size": prof.batch_size, "lr": prof.lr, "momentum": prof.momentum,
            "weight_decay": prof.weight_decay, "milestones": tuple(prof.milestones), "lr_gamma": prof.lr_gamma,
            "eval_batch_size": prof.eval_batch_size, "train_subset": prof.train_subset,
            "test_subset": prof.test_subset, "augment": prof.dataset in ("cifar10", "imagenet"),
            "num_workers": prof.num_workers,
        }
        base.update(overrides)
        if "milestones" in base and isinstance(base["milestones"], list):
            base["milestones"] = tuple(base["milestones"])
        return cls(**base)

    def __post_init__(self) -> None:
        from paperlib.data import DATASETS, dataset_info
        from paperlib.models import model_names

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        check_choice("profile", self.profile, PROFILES)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, model_names())
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("eval_batch_size", self.eval_batch_size, 1)
        check_positive("lr", self.lr)
        check_nonnegative("momentum", self.momentum)
        check_nonnegative("weight_decay", self.weight_decay)
        check_positive("lr_gamma", self.lr_gamma)
        if not isinstance(self.milestones, tuple):
            if isinstance(self.milestones, list):
                set_("milestones", tuple(self.milestones))
            else:
                raise ConfigError(f"milestones={self.milestones!r} must be a tuple of epochs")
        for mst in self.milestones:
            _check_int("milestone", mst, 1)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"milestones={self.milestones!r} must be strictly increasing")
        from paperlib.data import check_split_count

        for name, split in (("train_subset", "train"), ("test_subset", "test")):
            if getattr(self, name) is not None:
                check_split_count(name, getattr(self, name), self.dataset, split)
        n_train = self.train_subset if self.train_subset is not None else dataset_info(self.dataset).train_size
        if n_train is not None and self.batch_size > n_train:
            raise ConfigError(f"batch_size={self.batch_size} is larger than the {n_train} training images, so an "
                              "epoch (which drops the last incomplete batch) takes no optimizer step; lower "
                              "--batch-size or raise --train-subset")
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        for name in ("augment", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        check_choice("channels_last", self.channels_last, ("auto", "on", "off"))
        method = check_choice("method", self.method, METHODS)

        # Method fields: others' must be None; own ones get defaults, then are validated.
        own = _METHOD_FIELDS[method]
        for name in sorted({f for fs in _METHOD_FIELDS.values() for f in fs} - set(own)):
            if getattr(self, name) is not None:
                users = [m for m, fs in _METHOD_FIELDS.items() if name in fs]
                raise ConfigError(f"{name}={getattr(self, name)!r} does not apply to method={method!r} "
                                  f"(only to {' and '.join(map(repr, users))})")
        for name, default in _DEFAULTS[method].items():
            if getattr(self, name) is None:
                set_(name, default)
        if method == "penalty":
            set_("norm", penalty_norm(self.norm))
            check_choice("penalty", self.penalty, PENALTY_METHODS)
            set_("lam", float(check_nonnegative("lam", self.lam)))
            check_choice("scale", self.scale, SCALES)
            if self.penalty == "fd":
                set_("h", float(check_positive("h", self.h)))
                check_choice("scheme", self.scheme, FD_SCHEMES)
            else:
                if self.h != _DEFAULTS["penalty"]["h"] or self.scheme != "forward":
                    raise ConfigError("h and scheme apply to the finite-difference penalty only (penalty='fd'); "
                                      f"got penalty='dbp' with h={self.h!r}, scheme={self.scheme!r}")
                set_("h", None)
                set_("scheme", None)
        elif method in ("pgd-at", "free-at"):
            try:
                set_("norm", normalize_norm(self.norm))
            except ConfigError:
                raise ConfigError(f"norm={self.norm!r} is not allowed for {method}; choose 'linf' (the paper) "
                                  "or 'l2'") from None
            set_("eps", float(check_linf_eps("eps", check_positive("eps", self.eps), self.norm)))
        if method == "pgd-at":
            _check_int("steps", self.steps, 1)
            if self.step_size is None:
                set_("step_size", self.eps / 4)
            set_("step_size", float(check_linf_eps("step_size", check_positive("step_size", self.step_size),
                                                   self.norm)))
        if method == "free-at":
            _check_int("m", self.m, 1)
            if self.free_schedule is not None:
                check_choice("free_schedule", self.free_schedule, ("steps",))
        if self.grad_clip is not None:
            set_("grad_clip", float(check_positive("grad_clip", self.grad_clip)))
        for name in ("bn_guard", "random_start"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name}={value!r} must be True or False")

    # -- derived ----------------------------------------------------------------------------------

    @property
    def replays(self) -> int:
        """The number of optimizer steps per minibatch, ``m`` for free AT and 1 otherwise."""
        return self.m if self.method == "free-at" else 1


def train_epochs(cfg: TrainConfig) -> int:
    """Passes over the data actually run: ``epochs``, or ``ceil(epochs / m)`` for free AT (the last pass of
    the ``'steps'`` schedule may stop early, see :func:`minibatches_per_pass`)."""
    return max(1, math.ceil(cfg.epochs / cfg.replays))


def minibatches_per_pass(cfg: TrainConfig, steps_per_epoch: int) -> list[int]:
    """Minibatches of each pass over the data, for ``steps_per_epoch`` minibatches in a full pass.

    Free AT with ``free_schedule='steps'`` processes ``ceil(epochs * steps_per_epoch / m)`` minibatches in all
    (m SGD steps each, so as many SGD steps as standard training, up to m - 1); every other run does full passes.
    """
    passes = train_epochs(cfg)
    if cfg.method != "free-at" or cfg.free_schedule != "steps":
        return [steps_per_epoch] * passes
    total = math.ceil(cfg.epochs * steps_per_epoch / cfg.replays)
    return [min(steps_per_epoch, total - p * steps_per_epoch) for p in range(passes)]


def learning_rate(cfg: TrainConfig, epoch: int, sgd_epoch: float | None = None) -> float:
    """The learning rate of (0-based) pass ``epoch``: ``lr * lr_gamma ** #(milestones <= epoch)``.

    Free AT: with ``free_schedule='steps'`` the milestones count replay-epochs, the SGD steps taken so far
    divided by a standard epoch's steps, passed as ``sgd_epoch``; with the earlier schedule the milestones are
    divided by ``m`` (rounded) like the epochs.
    """
    if cfg.method == "free-at" and cfg.free_schedule == "steps":
        at = epoch * cfg.replays if sgd_epoch is None else sgd_epoch
        return cfg.lr * cfg.lr_gamma ** sum(at >= mst for mst in cfg.milestones)
    r = cfg.replays
    milestones = [max(1, round(mst / r)) for mst in cfg.milestones]
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= mst for mst in milestones)


def _fmt(x: float) -> str:
    """``x`` short (``0.1``, ``1``, ``1e-05``) when that reads back as exactly ``x``, else at full precision, so
    two different values never share a run name."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def _eps_name(eps: float) -> str:
    k = round(eps * 255)
    if k > 0 and k / 255 == eps:
        return f"{k}_255"
    return _fmt(eps)


def run_name(cfg: TrainConfig) -> str:
    """A readable, unique-per-profile directory name, e.g. ``fd-l1-lam1-h0.1``, ``dbp-l2-lam0.1``,
    ``pgd7-linf-eps8_255``, ``free-m8-linf-eps8_255``, ``undefended``.

    Non-default method options add suffixes (``-central``, ``-alg1``, ``-bnguard``, ``-nostart``, ...);
    a non-zero seed adds ``-seed<k>``; any recipe field changed from the profile adds ``-r<hash>``.
    """
    parts: list[str]
    if cfg.method == "undefended":
        parts = ["undefended"]
    elif cfg.method == "penalty":
        parts = [cfg.penalty, cfg.norm, f"lam{_fmt(cfg.lam)}"]
        if cfg.penalty == "fd":
            parts.append(f"h{_fmt(cfg.h)}")
            if cfg.scheme != "forward":
                parts.append(cfg.scheme)
        if cfg.scale != "eq8":
            parts.append({"algorithm1": "alg1", "eq8-literal": "eq8lit"}[cfg.scale])
    elif cfg.method == "pgd-at":
        parts = [f"pgd{cfg.steps}", cfg.norm, f"eps{_eps_name(cfg.eps)}"]
        if abs(cfg.step_size - cfg.eps / 4) > 1e-12:
            parts.append(f"step{_eps_name(cfg.step_size)}")
        if not cfg.random_start:
            parts.append("nostart")
    else:
        parts = [f"free-m{cfg.m}", cfg.norm, f"eps{_eps_name(cfg.eps)}"]
    if cfg.bn_guard:
        parts.append("bnguard")
    if cfg.free_schedule == "steps":
        parts.append("sgdsteps")
    if cfg.seed:
        parts.append(f"seed{cfg.seed}")
    recipe = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name not in set().union(*_METHOD_FIELDS.values()) | {"method", "seed", "profile"}}
    default = dataclasses.asdict(TrainConfig.from_profile(cfg.profile))
    changed = {k: v for k, v in recipe.items() if default.get(k) != v}
    if changed:
        parts.append("r" + config_hash(changed, length=6))
    return "-".join(parts)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 500, device: torch.device | str = "cpu",
             num_workers: int = 0, channels_last: bool = False) -> dict[str, float]:
    """Clean loss and top-1 error of ``model`` (eval mode) on ``dataset``: ``{'loss', 'error_pct', 'n'}``."""
    from paperlib.data import make_loader

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        wrong += (logits.argmax(1) != y).sum()
        n += y.numel()
    model.train(was_training)
    return {"loss": float(loss_sum) / max(n, 1), "error_pct": 100.0 * float(wrong) / max(n, 1), "n": n}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _step_seed(cfg: TrainConfig, epoch: int, step: int, rank: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 10_007 + step) * 64 + rank


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(cfg: TrainConfig) -> nn.Module:
    from paperlib.data import dataset_info
    from paperlib.models import build_model

    info = dataset_info(cfg.dataset)
    kwargs: dict[str, Any] = {}
    if cfg.model == "linear":
        kwargs["in_shape"] = tuple(info.shape)
    return build_model(cfg.model, num_classes=info.num_classes, **kwargs)


def _resolve_run(cfg: TrainConfig, store_or_run):
    from paperlib.runs import Run, RunStore

    if isinstance(store_or_run, Run):
        if store_or_run.hash != config_hash(cfg):
            raise ConfigError(f"run {store_or_run.path} was made for another config (hash {store_or_run.hash}, "
                              f"this one {config_hash(cfg)}); pass the RunStore instead, or a run of this config")
        return store_or_run
    if isinstance(store_or_run, RunStore):
        return store_or_run.run(cfg.profile, run_name(cfg), cfg)
    if isinstance(store_or_run, (str, os.PathLike)) or store_or_run is None:
        return RunStore(store_or_run).run(cfg.profile, run_name(cfg), cfg)
    raise TypeError(f"expected a RunStore, a Run or a runs directory, got {type(store_or_run).__name__}")


def train(cfg: TrainConfig, store_or_run=None, *, resume: bool = True, progress: bool = True,
          force: bool = False, device: str | torch.device | None = None, wait: bool | float = False):
    """Train ``cfg`` into the run store and return its finished :class:`~paperlib.runs.Run`.

    Args:
        cfg: the :class:`TrainConfig`.
        store_or_run: a :class:`~paperlib.runs.RunStore`, a runs directory (``runs/`` by default), or a
            :class:`~paperlib.runs.Run` to write into.
        resume: continue a partial run from its last checkpoint (otherwise start it from epoch 0).
        progress: show a tqdm bar (rank 0 only).
        force: retrain even if a finished run exists, and move a stale run (another config) aside.
        device: ``'cpu'``/``'cuda'``/...; default CUDA (``LOCAL_RANK``) if available.
        wait: if another process is training this run, wait for it (True, or seconds) instead of raising
            :class:`~paperlib.runs.RunLockedError`.

    A finished run with the same config is returned as is. Under torchrun every rank calls this; only rank
    0 writes. Raises :class:`TrainingDivergedError` on a non-finite loss (epoch and step named; the last
    checkpoint is kept) and :class:`~paperlib.runs.StaleRunError` if the directory holds another config.
    """
    from paperlib.runs import StaleRunError, load_or_run

    env = init_distributed(device)
    run = _resolve_run(cfg, store_or_run)
    status = run.status
    barrier(env)
    if status == "finished" and not force:
        return run
    if status == "stale" and not force:
        stored = run.stored_config() or {}
        raise StaleRunError(run._stale_message(stored))
    if cfg.batch_size % env.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} (global) must be divisible by the number of processes "
                          f"{env.world_size}")

    def work(r) -> dict[str, Any]:
        return _train_loop(cfg, r, env, resume=resume, progress=progress)

    if env.is_main:
        return load_or_run(run, work, force=force, wait=wait)
    work(run)
    return run


def _train_loop(cfg: TrainConfig, run, env: DistEnv, *, resume: bool, progress: bool) -> dict[str, Any]:
    from paperlib.data import load_dataset, make_loader, subset

    barrier(env)  # rank 0 has written config.json (or moved a stale run aside)
    device = env.device
    use_amp = cfg.amp and device.type == "cuda"
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and use_amp)

    torch.manual_seed(cfg.seed)
    model = _build(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    method = build_method(cfg)

    train_ds = subset(load_dataset(cfg.dataset, "train", augment=cfg.augment), cfg.train_subset, seed=0,
                      name="train_subset")
    test_ds = subset(load_dataset(cfg.dataset, "test"), cfg.test_subset, seed=0, name="test_subset")

    per_rank_batch = cfg.batch_size // env.world_size
    steps_per_epoch = len(train_ds) // (per_rank_batch * env.world_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_ds)} training images, so an "
                          "epoch (which drops the last incomplete batch) takes no optimizer step; lower "
                          "--batch-size or raise --train-subset")
    start_epoch, rows, train_seconds = 0, [], 0.0
    ckpt = run.load_checkpoint() if resume else None
    if ckpt is not None:
        if ckpt.get("config_hash") != run.hash:
            from paperlib.runs import StaleRunError

            raise StaleRunError(f"{run.path / 'checkpoint.pt'} is a checkpoint of another configuration (hash "
                                f"{ckpt.get('config_hash')}, this run {run.hash}); retrain with --force (or "
                                "--no-resume)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt.get("method", {}))
        start_epoch = int(ckpt["epoch"])
        rows = list(ckpt["log"])
        train_seconds = float(ckpt["train_seconds"])
        if env.is_main:
            run.log(f"resuming from the checkpoint of epoch {start_epoch}")
    ddp_model = wrap_model(model, env)
    n_epochs = train_epochs(cfg)
    per_pass = minibatches_per_pass(cfg, steps_per_epoch)
    per_step_lr = cfg.method == "free-at" and cfg.free_schedule == "steps"
    stepper = _ClippedOptimizer(optimizer, _trainable_params(model), cfg.grad_clip)

    for epoch in range(start_epoch, n_epochs):
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stepper.reset_counts()
        torch.manual_seed(_step_seed(cfg, epoch, 0, env.rank) + 1)  # augmentation draws (in-process)
        loader = make_loader(train_ds, per_rank_batch, shuffle=True, seed=cfg.seed, epoch=epoch, rank=env.rank,
                             world_size=env.world_size, drop_last=True, num_workers=cfg.num_workers)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        bar = None
        if progress and env.is_main:
            from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

            bar = tqdm(total=per_pass[epoch], desc=f"{run.name} epoch {epoch + 1}/{n_epochs}", leave=False,
                       dynamic_ncols=True)
        _sync(device)
        t0 = time.perf_counter()

        def log_row(label_epoch: int, sums: dict, steps: int) -> None:
            """Evaluate on the test set and append one row of ``train_log.csv`` (the steps since the last row)."""
            nonlocal train_seconds, t0  # evaluation time is not training time: t0 restarts after it
            _sync(device)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            means = {k: float(all_reduce_sum(v, env)) / max(steps * env.world_size, 1) for k, v in sums.items()}
            row: dict[str, Any] = {"epoch": label_epoch, "lr": lr, "steps": steps * cfg.replays}
            if per_step_lr:
                row["pass"] = epoch + 1
            for k in ("loss", "clean_loss", "penalty", "grad_norm"):
                row[f"train_{k}"] = means.get(k, float("nan"))
            if cfg.grad_clip is not None:
                row["clipped_pct"] = 100.0 * stepper.clipped / max(stepper.steps, 1)
                stepper.reset_counts()
            row["train_seconds"] = seconds
            row["train_seconds_total"] = train_seconds
            if env.is_main:
                t1 = time.perf_counter()
                ev = evaluate(model, test_ds, batch_size=cfg.eval_batch_size, device=device,
                              num_workers=cfg.num_workers, channels_last=channels_last)
                model.train()
                row.update(test_loss=ev["loss"], test_error_pct=ev["error_pct"],
                           eval_seconds=time.perf_counter() - t1)
                _check_trained(model, ev["loss"], run.name, f"after epoch {label_epoch}", _num_classes(cfg))
                run.log(f"epoch {label_epoch}/{cfg.epochs if per_step_lr else n_epochs} lr {lr:g} train loss "
                        f"{row['train_loss']:.4f} test error {row['test_error_pct']:.2f}% train time "
                        f"{seconds:.1f}s (total {train_seconds / 3600:.4f} h) eval {row['eval_seconds']:.1f}s")
            rows.append(row)
            _sync(device)
            t0 = time.perf_counter()

        for step, (x, y) in enumerate(loader):
            if step >= per_pass[epoch]:
                break
            if per_step_lr:  # free AT counted in SGD steps: the schedule of replay-epochs
                done = (sum(per_pass[:epoch]) + step) * cfg.replays / steps_per_epoch
                lr = learning_rate(cfg, epoch, sgd_epoch=done)  # the log shows the pass's last one
                for group in optimizer.param_groups:
                    group["lr"] = lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            gen = torch.Generator(device=device).manual_seed(_step_seed(cfg, epoch, step, env.rank))

            def check_loss(loss: torch.Tensor, _epoch=epoch, _step=step) -> None:
                value = all_reduce_sum(loss.detach().float(), env)
                if not torch.isfinite(value):
                    where = f"epoch {_epoch + 1} step {_step + 1} (of {len(loader)})"
                    last = (f"the checkpoint of epoch {_epoch} in {run.path} is kept" if _epoch > 0 else
                            "no epoch had finished, so there is no checkpoint")
                    raise TrainingDivergedError(
                        f"training loss is {float(loss.detach()):g} (not finite) at {where} of run {run.name}; "
                        f"{last}. Lower the learning rate or lam, or check the data.")

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                stats = method.step(ddp_model, stepper, x, y, check_loss=check_loss, generator=gen)
            for k, v in stats.items():
                sums[k] = sums.get(k, torch.zeros((), device=device, dtype=torch.float64)) + v.double()
            steps += 1
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{float(stats['loss']):.3f}")
            if per_step_lr and step + 1 < per_pass[epoch]:
                # Free AT in replay-epochs is evaluated like the others, once per replay-epoch (m of them make
                # a pass), so its plateau is judged on the same scale; the pass's last one is logged below.
                before = math.floor((sum(per_pass[:epoch]) + step) * cfg.replays / steps_per_epoch)
                after = math.floor((sum(per_pass[:epoch]) + step + 1) * cfg.replays / steps_per_epoch)
                if after > before:
                    log_row(after, sums, steps)
                    sums, steps = {}, 0
        if bar is not None:
            bar.close()
        if per_step_lr:
            label = min(cfg.epochs, math.ceil(sum(per_pass[:epoch + 1]) * cfg.replays / steps_per_epoch))
        else:
            label = epoch + 1
        log_row(label, sums, steps)
        if env.is_main:
            import pandas as pd

            run.write_table("train_log.csv", pd.DataFrame(rows))
            run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "method": method.state_dict(), "log": rows, "train_seconds": train_seconds,
                                 "config_hash": run.hash})
        barrier(env)

    if env.is_main:
        _check_trained(model, rows[-1]["test_loss"], run.name, "at the end of training", _num_classes(cfg))
        run.save_weights(model.state_dict(), architecture=architecture_fingerprint(model))
    last = rows[-1]
    return {
        "clean_error_pct": last.get("test_error_pct"),
        "test_loss": last.get("test_loss"),
        "train_loss": last["train_loss"],
        "train_hours": train_seconds / 3600,
        "train_seconds": train_seconds,
        "epochs": n_epochs,
        "world_size": env.world_size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "run_name": run.name,
        "test_images": len(test_ds),
        "train_images": len(train_ds),
    }


#: A test cross-entropy above this many times chance's (ln K) means the model is broken, not trained: even a
#: model with every test image wrong at moderate confidence stays well below it.
DIVERGED_LOSS_FACTOR = 10.0


def _num_classes(cfg: TrainConfig) -> int:
    from paperlib.data import dataset_info

    return dataset_info(cfg.dataset).num_classes


def _check_trained(model: nn.Module, test_loss: float, name: str, when: str, num_classes: int) -> None:
    """Raise :class:`TrainingDivergedError` unless the weights are finite and the test loss finite and below
    :data:`DIVERGED_LOSS_FACTOR` times chance's cross-entropy (a run blown up after its last checked loss)."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingDivergedError(f"run {name}: the weights are not finite {when} ({', '.join(bad[:3])}); "
                                    "lower the learning rate or lam")
    limit = DIVERGED_LOSS_FACTOR * math.log(num_classes)
    if not math.isfinite(test_loss) or test_loss > limit:
        raise TrainingDivergedError(f"run {name}: test loss {test_loss:g} {when} is not finite or above "
                                    f"{limit:.3g} ({DIVERGED_LOSS_FACTOR:g} x chance's ln {num_classes}); the "
                                    "model diverged: lower the learning rate or lam")


def _trainable_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class _ClippedOptimizer:
    """The optimizer as the training methods see it: ``step`` first clips the gradient's global l2 norm to
    ``max_norm`` (if set) and counts how often that engaged; everything else is the wrapped optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float | None):
        self.optimizer, self.params, self.max_norm = optimizer, params, max_norm
        self.reset_counts()

    def reset_counts(self) -> None:
        self.steps, self.clipped = 0, 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            self.clipped += int(norm > self.max_norm)
        self.steps += 1
        self.optimizer.step()

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


def load_trained(run_or_path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained model of a finished training run, in eval mode, and its :class:`TrainConfig`.

    Args:
        run_or_path: a :class:`~paperlib.runs.Run` or the path of its directory.
        device: where to put the model.
    """
    from paperlib.runs import Run, RunCorruptError

    path = Path(run_or_path.path if isinstance(run_or_path, Run) else run_or_path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ConfigError(f"{path} is not a run directory (no config.json)")
    import json

    try:
        stored = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise RunCorruptError(f"{cfg_file} is not valid JSON ({exc})") from None
    if stored.get("type") not in (None, "TrainConfig"):
        raise ConfigError(f"{path} holds a {stored.get('type')} run, not a training run")
    cfg = config_from_dict(TrainConfig, stored["config"])
    run = Run(path, cfg)
    run.require_finished(f"train it first (paperlib train --profile {cfg.profile} ...)")
    torch.manual_seed(0)
    model = _build(cfg)
    model.load_state_dict(run.load_weights(architecture=architecture_fingerprint(model)))
    return model.to(device).eval(), cfg
