"""``paperlib train``: train one model of the paper's grid into the run store.

Examples::

    paperlib train --profile fmnist --method penalty --penalty fd --norm l1 --lam 1 --h 0.1
    paperlib train --profile fmnist --method fd --norm l2 --lam 0.1        # --method fd|dbp: the penalty, shortly
    paperlib train --profile cifar10 --method pgd-at --eps 8/255
    paperlib train --profile cifar10 --method free-at --m 8
    torchrun --nproc_per_node 4 -m paperlib train --profile imagenet --method fd --norm l2 --lam 1

``--norm`` is the norm in the paper's row label: for the penalty, the norm of the squared-norm penalty
(``l2``, or ``l1`` against linf attacks; ``--attack-norm linf`` says the same thing from the attack's side);
for adversarial training, the ball's norm (``linf``). Rerunning a command resumes a partial run from its last
checkpoint and returns a finished one at once; ``--force`` retrains.
"""

from __future__ import annotations

import argparse
import sys

from paperlib.config import ConfigError, check_device, check_runs_dir, parse_number
from paperlib.options import add_config_option, add_stage_options
from paperlib.regularizers import dual_norm, penalty_norm
from paperlib.training.distributed import destroy_distributed, init_distributed
from paperlib.training.engine import TrainConfig, TrainingDivergedError, train

__all__ = ["add_parser", "parse_number", "config_from_args", "check_args"]


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs") from None


def add_parser(subparsers) -> None:
    """Register the ``train`` sub-command."""
    p = subparsers.add_parser("train", help="train one model (undefended, gradient penalty, PGD-AT, free-AT)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--profile", default="smoke", help="smoke | fmnist | cifar10 | imagenet (default: smoke)")
    g.add_argument("--method", default="undefended",
                   help="undefended | penalty | pgd-at | free-at, or fd | dbp for the penalty (default: undefended)")
    g.add_argument("--penalty", default=None, help="fd (finite differences, default) | dbp (double backprop)")
    g.add_argument("--norm", default=None,
                   help="penalty: l2 (default) | l1 (dual of linf); adversarial training: linf (default) | l2")
    g.add_argument("--attack-norm", default=None, help="penalty only: the attack norm to defend, l2 | linf")
    g.add_argument("--lam", type=parse_number, default=None, help="penalty strength lambda (default 0.1)")
    g.add_argument("--h", type=parse_number, default=None, help="finite-difference step, pixel units (default 0.01)")
    g.add_argument("--scheme", default=None, help="forward (default) | central finite differences")
    g.add_argument("--scale", default=None, help="eq8 (lam/2, default) | algorithm1 (lam) | eq8-literal")
    g.add_argument("--bn-guard", action="store_true", default=None,
                   help="perturbed/attack forwards leave BatchNorm running statistics alone")
    g.add_argument("--eps", type=parse_number, default=None, help="AT ball radius, pixel units (default 8/255)")
    g.add_argument("--steps", type=int, default=None, help="PGD-AT steps (default 7)")
    g.add_argument("--step-size", type=parse_number, default=None, help="PGD-AT step (default eps/4)")
    g.add_argument("--no-random-start", dest="random_start", action="store_false", default=None,
                   help="PGD-AT: start at x, as the authors' code (default: Madry's random start)")
    g.add_argument("--m", type=int, default=None, help="free-AT replays per minibatch (default 8)")
    r = p.add_argument_group("recipe (TrainConfig's fields; defaults from the profile)")
    for name in RECIPE_OPTIONS:
        add_config_option(r, TrainConfig, name, default_text="the profile's",
                          type=_milestones if name == "milestones" else None)
    x = add_stage_options(p, n_images="test images of the per-epoch clean error, the same as --test-subset "
                                      "(default: the profile's test_subset)",
                          force="retrain a finished run; move a stale one aside")
    x.add_argument("--runs-dir", default=None, help="run store root (default: $PAPERLIB_RUNS or ./runs)")
    x.add_argument("--no-resume", dest="resume", action="store_false", help="ignore a partial run's checkpoint")
    p.set_defaults(func=run_train)


#: the recipe fields of TrainConfig, one option each (made from the field)
RECIPE_OPTIONS = ("dataset", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones",
                  "lr_gamma", "train_subset", "test_subset", "num_workers", "seed", "amp", "channels_last")
_CONFIG_ARGS = ("penalty", "norm", "lam", "h", "scheme", "scale", "bn_guard", "eps", "steps", "step_size",
                "random_start", "m") + RECIPE_OPTIONS


def config_from_args(args: argparse.Namespace):
    """The :class:`~paperlib.training.TrainConfig` an argument namespace describes."""
    overrides = {k: getattr(args, k) for k in _CONFIG_ARGS if getattr(args, k, None) is not None}
    n_images = getattr(args, "n_images", None)
    if n_images is not None:
        if overrides.get("test_subset", n_images) != n_images:
            raise ConfigError(f"--n-images {n_images} and --test-subset {overrides['test_subset']} disagree; "
                              "they are the same option, give one of them")
        overrides["test_subset"] = n_images
    method = args.method
    if method in ("fd", "dbp"):
        if overrides.get("penalty", method) != method:
            raise ConfigError(f"--method {method} contradicts --penalty {overrides['penalty']}")
        method, overrides["penalty"] = "penalty", method
    if args.attack_norm is not None:
        if method != "penalty":
            raise ConfigError("--attack-norm applies to the penalty only; adversarial training takes --norm linf|l2")
        dual = dual_norm(args.attack_norm)
        if "norm" in overrides and penalty_norm(overrides["norm"]) != dual:
            raise ConfigError(f"--norm {overrides['norm']} contradicts --attack-norm {args.attack_norm} "
                              f"(whose dual is {dual})")
        overrides["norm"] = dual
    try:
        return TrainConfig.from_profile(args.profile, method=method, **overrides)
    except ConfigError as exc:  # name the option as it was typed: 'train_subset=...' -> '--train-subset=...'
        field, sep, rest = str(exc).partition("=")
        if sep and field.isidentifier() and field in TrainConfig.__dataclass_fields__:
            raise ConfigError(f"--{field.replace('_', '-')}={rest}") from None
        raise


def check_args(args: argparse.Namespace, cfg) -> None:
    """What the command line checks beyond the config itself (which checks subsets against the dataset's
    splits and linf radii <= 1), before anything runs: a ``--device`` this machine has and a usable
    ``--runs-dir`` (the rules of :mod:`paperlib.config`)."""
    if args.device is not None:
        check_device(args.device, "--device")
    if args.runs_dir is not None:
        check_runs_dir(args.runs_dir, "--runs-dir")


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_args(args, cfg)
    env = init_distributed(args.device)
    try:
        run = train(cfg, args.runs_dir, resume=args.resume, progress=args.progress, force=args.force,
                    device=args.device)
    except TrainingDivergedError as exc:
        if env.is_main:
            print(f"paperlib: error: {exc}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    if env.is_main:
        m = run.read_json("metrics.json")
        print(f"{run.path}: clean test error {m['clean_error_pct']:.2f}% after {m['epochs']} epochs, "
              f"training time {m['train_hours']:.4f} h ({m['world_size']} process(es), {m['device']})")
    return 0
