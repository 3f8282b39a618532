"""``paperlib attack <run>``: the attack suite on a trained model, resumable per batch.

Loads the trained model of a finished training run, samples ``--n`` seeded-random test images of its
dataset, runs every attack in every norm, and writes ``attacks.csv``, ``best.csv`` and ``checks.json`` into
the sub-run ``<run>/attack-<config hash>/``. Running the same command again loads the finished result, or
resumes an interrupted one from its last finished batch.

Example::

    paperlib attack runs/fmnist/undefended --norms l2,linf --attacks pgd,cw,boundary,logbarrier --n 1000
"""

from __future__ import annotations

import argparse

from paperlib.config import ConfigError

__all__ = ["add_parser", "run_attack", "config_from_args"]


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
    p.add_argument("--norms", type=_csv, default=("l2", "linf"), help="comma-separated: l2,linf (default both)")
    p.add_argument("--attacks", type=_csv, default=("pgd", "cw", "boundary", "logbarrier"),
                   help="comma-separated subset of pgd,cw,boundary,logbarrier (default all)")
    p.add_argument("--n", type=int, default=None, help="number of test images (default: the profile's, 1000 "
                   "for fmnist/cifar10/imagenet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sample and of the attacks (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the profile's "
                   "eval batch size); also the unit of resumption")
    p.add_argument("--boundary-steps", type=int, default=None, help="Boundary attack steps (default 25000)")
    p.add_argument("--cw-steps", type=int, default=None, help="CW Adam steps per constant (default 1000)")
    p.add_argument("--convergence-n", type=int, default=None,
                   help="images re-attacked with doubled budgets for the convergence check (default 50, 0 = off)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute a finished attack run")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_attack)


def config_from_args(args: argparse.Namespace, profile_name: str):
    """The :class:`~paperlib.attacks.suite.AttackConfig` for these arguments and the run's profile."""
    from paperlib.attacks.suite import AttackConfig
    from paperlib.config import PROFILES

    prof = PROFILES.get(profile_name)
    kw = {"attacks": tuple(args.attacks), "norms": tuple(args.norms), "seed": args.seed}
    kw["n_images"] = args.n if args.n is not None else (prof.n_images if prof else 1000)
    kw["batch_size"] = args.batch_size if args.batch_size is not None else (prof.eval_batch_size if prof else 250)
    if args.boundary_steps is not None:
        kw["boundary_steps"] = args.boundary_steps
    if args.cw_steps is not None:
        kw["cw_steps"] = args.cw_steps
    if args.convergence_n is not None:
        kw["convergence_n"] = args.convergence_n
    return AttackConfig(**kw)


def run_attack(args: argparse.Namespace) -> int:
    """Run or load the suite on ``args.run``; print the summary and the checks."""
    from pathlib import Path

    from paperlib.attacks.suite import attack_model
    from paperlib.config import check_device
    from paperlib.data import check_split_count, load_dataset, sample_images
    from paperlib.reproduce import stage_subrun
    from paperlib.runs import Run
    from paperlib.training import load_trained

    path = Path(args.run)
    if not path.is_dir():
        raise ConfigError(f"run {str(path)!r} is not a directory; pass a training run such as runs/fmnist/undefended")
    check_device(args.device, "--device")
    model, tcfg = load_trained(path, device=args.device)
    cfg = config_from_args(args, getattr(tcfg, "profile", ""))
    check_split_count("--n", cfg.n_images, tcfg.dataset, "test")
    dataset = load_dataset(tcfg.dataset, "test")
    x, y, idx = sample_images(dataset, cfg.n_images, seed=cfg.seed)
    x, y = x.to(args.device), y.to(args.device)
    train_run = Run(path, tcfg)
    run = stage_subrun(train_run, cfg)
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
