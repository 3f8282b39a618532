"""Command line: ``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...``.

Both load the trained model of a run directory (``paperlib.training.load_trained``), draw the same test
images as the attack suite (``sample_images(load_dataset(dataset, 'test'), n_images, image_seed)``), and
write a sub-run of the model's run: ``bounds-<norm>/`` (bounds.csv, evt.json, certified_error.csv,
metrics.json) or, per sigma, ``certify-sigma<sigma>/`` (``certify-sigma<sigma>-n<n>/`` from n = 10,000 noise
samples on; certify.csv, certified_error.csv, metrics.json). A finished sub-run with the same settings is loaded
and printed instead of recomputed; changed settings need ``--force``. ``bound`` also audits the bounds against
the attack suite's ``best.csv`` when it exists; ``certify`` with several sigmas also prints the envelope (the
minimum over sigma of the certified error at each radius).

An option left out takes the default of the config dataclass (:class:`~paperlib.bounds.lipschitz.BoundConfig`,
:class:`~paperlib.bounds.smoothing.CertifyConfig`), except the image count and batch size of ``bound`` (the
profile's) and, with ``certify --grid``, the profile's certification grid
(:func:`~paperlib.reproduce.certify_grid_configs`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from paperlib.config import ConfigError, parse_number

__all__ = ["add_parser", "cmd_bound", "cmd_certify"]

#: ``paperlib bound`` options that are BoundConfig fields of the same name, taken from the command line when given
BOUND_OPTIONS = ("norm", "image_seed", "top_k", "lipschitz", "omega_samples", "omega_images", "eps_max", "grid_size",
                 "tail_prob", "seed", "omega_ascent_steps", "omega_ascent_starts", "omega_per_image", "evt_maxima",
                 "lipschitz_samples", "omega_extend", "evt_tail")


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _load_model(run_path: str, device: str = "cpu") -> tuple[Any, ...]:
    """Model (on ``device``), its TrainConfig, its profile (or None) and its dataset's name."""
    from paperlib.config import check_device, get_profile
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
    return model, tcfg, profile, dataset


def _images(dataset: str, n: int, image_seed: int, data_root: str | None, device: str = "cpu") -> tuple[Any, ...]:
    """The test images ``(x, y, idx)`` of the attack suite's draw (x and y on ``device``)."""
    from paperlib.data import check_split_count, load_dataset, sample_images

    check_split_count("--n-images", n, dataset, "test")
    x, y, idx = sample_images(load_dataset(dataset, "test", root=data_root), n, image_seed)
    return x.to(device), y.to(device), idx


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(frame: Any) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="beyond n")


def cmd_bound(args: argparse.Namespace) -> int:
    """``paperlib bound <run>``: L-bound, omega-bound and EVT fits of one trained model."""
    from paperlib.bounds.audit import audit_model_run
    from paperlib.bounds.lipschitz import BoundConfig, run_bounds
    from paperlib.reproduce import stage_subrun

    kw = {k: getattr(args, k) for k in BOUND_OPTIONS if getattr(args, k) is not None}
    BoundConfig(**kw)  # validate the options before loading anything
    model, _, profile, dataset = _load_model(args.run, args.device)
    n = args.n_images if args.n_images is not None else (profile.n_images if profile is not None else 1000)
    image_seed = kw.get("image_seed", _defaults(BoundConfig)["image_seed"])
    x, y, idx = _images(dataset, n, image_seed, args.data_root, args.device)
    batch = args.batch_size or (profile.eval_batch_size if profile is not None
                                else _defaults(BoundConfig)["batch_size"])
    cfg = BoundConfig(n_images=int(x.shape[0]), batch_size=batch, **kw)
    run = stage_subrun(args.run, cfg)
    result = run_bounds(model, x, y, idx, cfg, run, force=args.force, progress=not args.no_progress)
    m = result.metrics
    print(f"bounds of {args.run} ({cfg.norm}, {m['n_images']} images) -> {run.path}")
    for key in ("clean_error", "lipschitz_evt", "lipschitz_evt_method", "lipschitz_empirical_max", "mean_l_bound",
                "mean_l_bound_empirical_max", "mean_omega_distance", "grad_norm_mean", "grad_norm_max"):
        print(f"  {key:<28} {_fmt(m[key])}")
    for key in ("mean_omega_distance_adversarial", "omega_distance_adversarial_at_cap_percent",
                "omega_adversarial_fits_rejected", "mean_omega_distance_adversarial_per_image"):
        if key in m:  # with --omega-ascent-steps (and --omega-per-image)
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


def _certify_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CertifyConfig fields given on the command line (sigma and n_images excluded)."""
    kw: dict[str, Any] = {}
    for opt, name in (("n0", "n0"), ("n_samples", "n"), ("alpha", "alpha"), ("batch_size", "batch_size"),
                      ("image_seed", "image_seed"), ("seed", "seed")):
        if getattr(args, opt) is not None:
            kw[name] = getattr(args, opt)
    if args.radii:
        kw["radii"] = tuple(args.radii)
    return kw


def cmd_certify(args: argparse.Namespace) -> int:
    """``paperlib certify <run> --sigma S [S ...]``: randomized-smoothing certificates of one trained model, per
    sigma, and their envelope over sigma."""
    from paperlib.bounds.smoothing import CertifyConfig, max_certifiable_radius, run_certify, smoothing_envelope
    from paperlib.reproduce import certify_grid_configs, stage_subrun

    if args.old_n is not None:
        raise ConfigError(f"--n {args.old_n} is not an option of certify: write --n-samples {args.old_n} for noise "
                          "samples per image (what --n meant here), or --n-images for test images (what --n means "
                          "for `paperlib attack`)")
    kw = _certify_options(args)
    sigmas = list(args.sigma) if args.sigma else None
    if sigmas is not None and len(set(sigmas)) != len(sigmas):
        raise ConfigError(f"--sigma {' '.join(f'{s:g}' for s in sigmas)} repeats a sigma; give each once")
    if not args.grid:
        sigmas = sigmas or [_defaults(CertifyConfig)["sigma"]]
        for s in sigmas:
            CertifyConfig(sigma=s, n_images=args.n_images or 1, **kw)  # validate the options before loading anything
    model, _, profile, dataset = _load_model(args.run, args.device)
    if args.grid:
        if profile is None:
            raise ConfigError(f"--grid needs the model's profile, and the model of {args.run} has none; give "
                              "--sigma, --n-samples and --n-images instead")
        grid = certify_grid_configs(profile.name)
        base = dataclasses.replace(next(iter(grid.values())), **kw)
        sigmas = sigmas or list(grid)
        n_images = args.n_images if args.n_images is not None else base.n_images
        configs = [dataclasses.replace(base, sigma=s, n_images=n_images) for s in sigmas]
    else:
        n_images = args.n_images if args.n_images is not None else _defaults(CertifyConfig)["n_images"]
        configs = [CertifyConfig(sigma=s, n_images=n_images, **kw) for s in sigmas]
    image_seed = configs[0].image_seed
    x, y, idx = _images(dataset, n_images, image_seed, args.data_root, args.device)
    from paperlib.data import dataset_info

    num_classes = dataset_info(dataset).num_classes
    results = []
    for cfg in configs:
        run = stage_subrun(args.run, cfg)
        result = run_certify(model, x, y, idx, cfg, run, num_classes=num_classes, force=args.force,
                             progress=not args.no_progress)
        results.append(result)
        m = result.metrics
        print(f"randomized smoothing of {args.run} (sigma {cfg.sigma:g}, n {cfg.n}, alpha {cfg.alpha:g}, "
              f"{m['n_images']} images) -> {run.path}")
        for key in ("smoothed_error", "abstain_rate", "mean_radius", "seconds_per_image"):
            print(f"  {key:<24} {_fmt(m[key])}")
        print(f"  {'max_certifiable_radius':<24} {_fmt(max_certifiable_radius(cfg.n, cfg.alpha, cfg.sigma))}")
        print(_table(result.certified))
    if len(results) > 1:
        print("envelope over sigma (certified % error, abstentions count as errors; the minimum over sigma):")
        print(_table(smoothing_envelope(results)))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``bound`` and ``certify`` on the top-level ``paperlib`` parser's sub-parsers."""
    dflt = "(default: BoundConfig's)"
    p = subparsers.add_parser("bound", help="L-bound, omega-bound and extreme-value estimates of a trained model")
    p.add_argument("run", help="the trained model's run directory, e.g. runs/fmnist/undefended")
    p.add_argument("--norm", default=None, help=f"attack norm: l2 or linf (gradients use the dual norm) {dflt}")
    p.add_argument("--n-images", type=int, default=None, help="test images (default: the profile's n_images)")
    p.add_argument("--image-seed", type=int, default=None, help=f"seed of the image draw (same as the attacks') {dflt}")
    p.add_argument("--top-k", type=int, default=None, help=f"top-k loss (5 for ImageNet top-5) {dflt}")
    p.add_argument("--lipschitz", default=None, choices=["evt", "empirical-max"],
                   help=f"L used by the l_bound column (both are stored) {dflt}")
    p.add_argument("--omega-samples", type=int, default=None, help=f"perturbations per image and radius {dflt}")
    p.add_argument("--omega-images", type=int, default=None, help="images used for omega (default: all)")
    p.add_argument("--eps-max", type=parse_number, default=None,
                   help="largest grid radius, [0, 1] pixel units, e.g. 0.125 or 32/255 (default 2.0 l2, 32/255 linf; "
                   "linf radii are at most 1)")
    p.add_argument("--grid-size", type=int, default=None, help=f"evenly spaced grid radii {dflt}")
    p.add_argument("--tail-prob", type=float, default=None, help=f"EVT tail probability p (quantile 1-p) {dflt}")
    p.add_argument("--batch-size", type=int, default=None, help="images per pass (default: the profile's)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the perturbations and batch shuffles {dflt}")
    a = p.add_argument_group("omega and extreme-value estimators (BoundConfig's Other Parameters)")
    a.add_argument("--omega-ascent-steps", type=int, default=None,
                   help=f"> 0: also the adversarial omega (projected gradient ascent, this many steps) {dflt}")
    a.add_argument("--omega-ascent-starts", type=int, default=None, help=f"ascent starts per image and radius {dflt}")
    a.add_argument("--omega-per-image", action=argparse.BooleanOptionalAction, default=None,
                   help=f"also bound every image with its own adversarial omega {dflt}")
    a.add_argument("--evt-maxima", type=int, default=None,
                   help=f"pool the samples into at least this many batch maxima for the GEV fits {dflt}")
    a.add_argument("--lipschitz-samples", type=int, default=None,
                   help=f"dual gradient norms per image for L (1: at the image only) {dflt}")
    a.add_argument("--omega-extend", type=float, default=None,
                   help=f"factor q > 1: extend the omega-distance search beyond eps_max by powers of q {dflt}")
    a.add_argument("--evt-tail", default=None, help=f"GEV shape: 'any' or 'bounded' (reverse Weibull) {dflt}")
    p.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute even if a finished or different run exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bound)

    dflt = "(default: CertifyConfig's)"
    p = subparsers.add_parser("certify", help="randomized-smoothing certification (Cohen et al. 2019)")
    p.add_argument("run", help="the trained model's run directory")
    p.add_argument("--sigma", type=float, nargs="+", default=None,
                   help=f"noise level(s) in [0,1] pixel units, e.g. --sigma 0.25 0.5 1.0 {dflt}")
    p.add_argument("--grid", action="store_true",
                   help="the profile's certification grid (paperlib.reproduce.certify_grid_configs: sigma 0.25, 0.5, "
                   "1.0; fmnist: n 10000 on 500 images); other options given here override it")
    p.add_argument("--n0", type=int, default=None, help=f"selection samples per image {dflt}")
    p.add_argument("--n-samples", type=int, default=None, help=f"estimation (noise) samples per image {dflt}")
    p.add_argument("--n", dest="old_n", default=None, help=argparse.SUPPRESS)  # renamed: a clear error, not a prefix
    p.add_argument("--alpha", type=float, default=None, help=f"failure probability {dflt}")
    p.add_argument("--batch-size", type=int, default=None, help=f"noisy copies per forward pass {dflt}")
    p.add_argument("--n-images", type=int, default=None, help=f"test images {dflt}")
    p.add_argument("--image-seed", type=int, default=None, help=f"seed of the image draw (same as the attacks') {dflt}")
    p.add_argument("--radii", type=float, nargs="+", default=None, help=f"l2 radii for certified error {dflt}")
    p.add_argument("--seed", type=int, default=None, help=f"noise seed {dflt}")
    p.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--force", action="store_true", help="recompute even if a finished or different run exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_certify)
