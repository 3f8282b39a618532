"""``paperlib attack <run>``: the attack suite on a trained model, resumable per batch.

Loads the trained model of a finished training run, samples ``--n-images`` seeded-random test images of its
dataset, runs every attack in every norm, and writes ``attacks.csv``, ``best.csv`` and ``checks.json`` into
the sub-run ``<run>/attack-<config hash>/``. Running the same command again loads the finished result, or
resumes an interrupted one from its last finished batch. An option left out takes the default of
:class:`~paperlib.attacks.suite.AttackConfig`, except the image count and batch size (the profile's).

Example::

    paperlib attack runs/fmnist/undefended --norms l2,linf --attacks pgd,cw,boundary,logbarrier --n-images 1000
"""

from __future__ import annotations

import argparse

# the training area as a module: its load_trained is looked up when a command runs (tests replace it)
import paperlib.training as training
from paperlib.attacks.suite import AttackConfig, attack_model
from paperlib.config import PROFILES, ConfigError
from paperlib.options import (add_config_option, add_stage_options, config_overrides, draw_images, resolve_device,
                              trained_model)
from paperlib.stages import stage_subrun

__all__ = ["add_parser", "run_attack", "config_from_args"]

#: ``paperlib attack`` options that are AttackConfig fields of the same name
ATTACK_OPTIONS = ("norms", "attacks", "seed", "batch_size", "boundary_steps", "cw_steps", "convergence_n")


def _csv(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list")
    return parts


def add_parser(subparsers) -> None:
    """Register the ``attack`` sub-command."""
    p = subparsers.add_parser("attack", help="attack a trained model with the suite (PGD, CW, Boundary, LogBarrier)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="directory of a finished training run (e.g. runs/fmnist/undefended)")
    g = p.add_argument_group("the suite (AttackConfig's fields)")
    add_config_option(g, AttackConfig, "norms", type=_csv, help="comma-separated subset of l2,linf",
                      default_text="l2,linf")
    add_config_option(g, AttackConfig, "attacks", type=_csv, help="comma-separated subset of pgd,cw,boundary,"
                      "logbarrier", default_text="all")
    add_config_option(g, AttackConfig, "seed")
    add_config_option(g, AttackConfig, "batch_size", default_text="the profile's eval batch size")
    for name in ATTACK_OPTIONS[4:]:
        add_config_option(g, AttackConfig, name)
    x = add_stage_options(p, n_images="seeded-random test images (default: the profile's; 1000 without one, "
                                      "the paper's count)", force="recompute a finished attack run")
    x.add_argument("--n", dest="old_n", type=int, default=None, help=argparse.SUPPRESS)  # the old name still works
    x.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.set_defaults(func=run_attack)


def config_from_args(args: argparse.Namespace, profile_name: str) -> AttackConfig:
    """The :class:`~paperlib.attacks.suite.AttackConfig` for these arguments and the run's profile."""
    prof = PROFILES.get(profile_name)
    kw = config_overrides(args, ATTACK_OPTIONS)
    n = _n_images(args)[0]
    kw["n_images"] = n if n is not None else (prof.n_images if prof else AttackConfig.n_images)
    if "batch_size" not in kw and prof is not None:
        kw["batch_size"] = prof.eval_batch_size
    return AttackConfig(**kw)


def _n_images(args: argparse.Namespace) -> tuple[int | None, str]:
    """The image count and the option that gave it: ``--n-images``, or ``--n`` (its earlier name)."""
    new, old = getattr(args, "n_images", None), getattr(args, "old_n", None)
    if new is not None and old is not None and new != old:
        raise ConfigError(f"--n {old} and --n-images {new} disagree; --n is the earlier name of --n-images, "
                          "give one of them")
    return (old, "--n") if old is not None else (new, "--n-images")


def run_attack(args: argparse.Namespace) -> int:
    """Run or load the suite on ``args.run``; print the summary and the checks."""
    device = resolve_device(args.device)
    model, tcfg, _, dataset = trained_model(args.run, device, training.load_trained)
    cfg = config_from_args(args, getattr(tcfg, "profile", ""))
    x, y, idx = draw_images(dataset, cfg.n_images, cfg.seed, args.data_root, device, flag=_n_images(args)[1])
    run = stage_subrun(args.run, cfg)
    result = attack_model(model, x, y, idx, cfg, run, progress=args.progress, force=args.force)
    s = result.summary
    print(f"{run.path}: {s.get('n_images')} images, clean error {s.get('clean_error_pct', float('nan')):.2f}%")
    for job, v in s.get("jobs", {}).items():
        secs = v.get("seconds_per_image")
        print(f"  {job:<16} success {v['success_pct']:6.2f}%  median l2 {v['median_l2']:.4g}  "
              f"median linf {v['median_linf']:.4g}" + (f"  {secs:.3g} s/image" if secs is not None else ""))
    for norm in cfg.norms:
        if f"median_best_{norm}" in s:
            print(f"  best {norm:<4}: median {s[f'median_best_{norm}']:.4g}, mean {s[f'mean_best_{norm}']:.4g}, "
                  f"unbroken {s[f'unbroken_{norm}']}")
    for c in result.checks:
        print(f"  [{'ok' if c[1] else 'WARNING'}] {c[0]}: {c[2]}")
    return 0
