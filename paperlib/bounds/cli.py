"""Command line: ``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...``.

Both load the trained model of a run directory (``paperlib.training.load_trained``), draw the same test
images as the attack suite (``sample_images(load_dataset(dataset, 'test'), n_images, image_seed)``), and
write a sub-run of the model's run: ``bounds-<norm>/`` (bounds.csv, evt.json, certified_error.csv,
metrics.json) or ``certify-sigma<sigma>/`` (certify.csv, certified_error.csv, metrics.json). A finished
sub-run with the same settings is loaded and printed instead of recomputed; changed settings need ``--force``.
``bound`` also audits the bounds against the attack suite's ``best.csv`` when it exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from paperlib.config import ConfigError, parse_number

__all__ = ["add_parser", "cmd_bound", "cmd_certify"]


def _load(run_path: str, n_images: int | None, image_seed: int, data_root: str | None,
          device: str = "cpu") -> tuple[Any, ...]:
    """Model (on ``device``), its TrainConfig, the profile's defaults, and the test images ``(x, y, idx)``
    (on ``device``)."""
    from paperlib.config import check_device, get_profile
    from paperlib.data import check_split_count, dataset_info, load_dataset, sample_images
    from paperlib.training import load_trained  # the training area's loader; imported lazily

    path = Path(run_path)
    if not path.is_dir():
        raise ConfigError(f"run directory {run_path!r} does not exist")
    check_device(device, "--device")
    model, tcfg = load_trained(path, device=device)
    profile = None
    if isinstance(getattr(tcfg, "profile", None), str):
        try:
            profile = get_profile(tcfg.profile)
        except ConfigError:
            profile = None
    dataset = getattr(tcfg, "dataset", None) or (profile.dataset if profile is not None else None)
    if dataset is None:
        raise ConfigError(f"cannot tell which dataset the model of {run_path} was trained on")
    n = n_images if n_images is not None else (profile.n_images if profile is not None else 1000)
    check_split_count("--n-images", n, dataset, "test")
    x, y, idx = sample_images(load_dataset(dataset, "test", root=data_root), n, image_seed)
    return model, tcfg, profile, dataset_info(dataset).num_classes, x.to(device), y.to(device), idx


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_bound(args: argparse.Namespace) -> int:
    """``paperlib bound <run>``: L-bound, omega-bound and EVT fits of one trained model."""
    from paperlib.bounds.audit import audit_model_run
    from paperlib.bounds.lipschitz import BoundConfig, run_bounds
    from paperlib.reproduce import stage_subrun

    model, _, profile, _, x, y, idx = _load(args.run, args.n_images, args.image_seed, args.data_root, args.device)
    batch = args.batch_size or (profile.eval_batch_size if profile is not None else 250)
    cfg = BoundConfig(
        norm=args.norm, n_images=int(x.shape[0]), image_seed=args.image_seed, top_k=args.top_k,
        lipschitz=args.lipschitz, omega_samples=args.omega_samples, omega_images=args.omega_images,
        eps_max=args.eps_max, grid_size=args.grid_size, tail_prob=args.tail_prob, batch_size=batch, seed=args.seed,
    )
    run = stage_subrun(args.run, cfg)
    result = run_bounds(model, x, y, idx, cfg, run, force=args.force, progress=not args.no_progress)
    m = result.metrics
    print(f"bounds of {args.run} ({cfg.norm}, {m['n_images']} images) -> {run.path}")
    for key in ("clean_error", "lipschitz_evt", "lipschitz_evt_method", "lipschitz_empirical_max", "mean_l_bound",
                "mean_l_bound_empirical_max", "mean_omega_distance", "grad_norm_mean", "grad_norm_max"):
        print(f"  {key:<28} {_fmt(m[key])}")
    print(result.certified.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    audit = audit_model_run(args.run)
    if audit.empty:
        print("audit: no attack results (best.csv) under this run yet; run `paperlib attack` to audit the bounds")
    else:
        cols = ["bounds_run", "bound", "norm", "n_compared", "n_violations", "violation_rate", "mean_bound",
                "mean_best"]
        print("audit against the attack suite (violation = bound > best attack distance):")
        print(audit[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    """``paperlib certify <run> --sigma S``: randomized-smoothing certificates of one trained model."""
    from paperlib.bounds.smoothing import CertifyConfig, run_certify
    from paperlib.reproduce import stage_subrun

    cfg_kw = dict(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                  image_seed=args.image_seed, seed=args.seed)
    if args.radii:
        cfg_kw["radii"] = tuple(args.radii)
    CertifyConfig(n_images=1, **cfg_kw)  # validate the options before loading anything
    n_images = args.n_images if args.n_images is not None else 500
    model, _, _, num_classes, x, y, idx = _load(args.run, n_images, args.image_seed, args.data_root, args.device)
    cfg = CertifyConfig(n_images=int(x.shape[0]), **cfg_kw)
    run = stage_subrun(args.run, cfg)
    result = run_certify(model, x, y, idx, cfg, run, num_classes=num_classes, force=args.force,
                         progress=not args.no_progress)
    m = result.metrics
    print(f"randomized smoothing of {args.run} (sigma {cfg.sigma:g}, n {cfg.n}, {m['n_images']} images) -> {run.path}")
    for key in ("smoothed_error", "abstain_rate", "mean_radius", "seconds_per_image"):
        print(f"  {key:<20} {_fmt(m[key])}")
    print(result.certified.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``bound`` and ``certify`` on the top-level ``paperlib`` parser's sub-parsers."""
    p = subparsers.add_parser("bound", help="L-bound, omega-bound and extreme-value estimates of a trained model")
    p.add_argument("run", help="the trained model's run directory, e.g. runs/fmnist/undefended")
    p.add_argument("--norm", default="l2", help="attack norm: l2 or linf (gradients use the dual norm)")
    p.add_argument("--n-images", type=int, default=None, help="test images (default: the profile's n_images)")
    p.add_argument("--image-seed", type=int, default=0, help="seed of the image draw (same as the attacks')")
    p.add_argument("--top-k", type=int, default=1, help="top-k loss (5 for ImageNet top-5)")
    p.add_argument("--lipschitz", default="evt", choices=["evt", "empirical-max"],
                   help="L used by the l_bound column (both are stored)")
    p.add_argument("--omega-samples", type=int, default=16, help="perturbations per image and radius")
    p.add_argument("--omega-images", type=int, default=None, help="images used for omega (default: all)")
    p.add_argument("--eps-max", type=parse_number, default=None,
                   help="largest grid radius, [0, 1] pixel units, e.g. 0.125 or 32/255 (default 2.0 l2, 32/255 linf; "
                   "linf radii are at most 1)")
    p.add_argument("--grid-size", type=int, default=20, help="evenly spaced grid radii")
    p.add_argument("--tail-prob", type=float, default=1e-3, help="EVT tail probability p (quantile 1-p)")
    p.add_argument("--batch-size", type=int, default=None, help="images per pass (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations and batch shuffles")
    p.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute even if a finished or different run exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bound)

    p = subparsers.add_parser("certify", help="randomized-smoothing certification (Cohen et al. 2019)")
    p.add_argument("run", help="the trained model's run directory")
    p.add_argument("--sigma", type=float, required=True, help="noise level in [0,1] pixel units (e.g. 0.25)")
    p.add_argument("--n0", type=int, default=100, help="selection samples per image")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples per image")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy copies per forward pass")
    p.add_argument("--n-images", type=int, default=None, help="test images (default 500)")
    p.add_argument("--image-seed", type=int, default=0, help="seed of the image draw (same as the attacks')")
    p.add_argument("--radii", type=float, nargs="+", default=None, help="l2 radii for certified error")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute even if a finished or different run exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_certify)
