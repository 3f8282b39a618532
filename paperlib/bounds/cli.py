"""Command line: ``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...``.

Both load the trained model of a run directory (``paperlib.training.load_trained``), draw the same test
images as the attack suite (``sample_images(load_dataset(dataset, 'test'), n_images, image_seed)``), and
write a sub-run of the model's run: ``bounds-<norm>/`` (bounds.csv, evt.json, certified_error.csv,
metrics.json) or, per sigma, ``certify-sigma<sigma>/`` (``certify-sigma<sigma>-n<n>/`` from n = 10,000 noise
samples on; certify.csv, certified_error.csv, metrics.json). A finished sub-run with the same settings is loaded
and printed instead of recomputed; changed settings need ``--force``. ``bound`` also audits the bounds against
the attack suite's ``best.csv`` when it exists; ``certify`` with several sigmas also prints the envelope (the
minimum over sigma of the certified error at each radius).

Every option that sets a config field is made from the field (:mod:`paperlib.options`); one left out takes the
default of the config dataclass (:class:`~paperlib.bounds.stage.BoundConfig`,
:class:`~paperlib.bounds.smoothing.CertifyConfig`), except the image count and batch size of ``bound`` (the
profile's) and, with ``certify --grid``, the profile's certification grid
(:func:`~paperlib.bounds.smoothing.certify_grid_configs`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

# the training area as a module: its load_trained is looked up when a command runs (tests replace it)
import paperlib.training as training
from paperlib.bounds.audit import audit_model_run
from paperlib.bounds.stage import BoundConfig, run_bounds
from paperlib.bounds.smoothing import (CertifyConfig, certify_grid_configs, max_certifiable_radius, run_certify,
                                      smoothing_envelope)
from paperlib.config import ConfigError
from paperlib.data import dataset_info
from paperlib.options import (add_config_option, add_stage_options, config_overrides, draw_images, field_default,
                              renamed_option, resolve_device, trained_model)
from paperlib.stages import stage_subrun

__all__ = ["add_parser", "cmd_bound", "cmd_certify"]

#: ``paperlib bound`` options that are BoundConfig fields of the same name, taken from the command line when given
BOUND_OPTIONS = ("norm", "image_seed", "top_k", "lipschitz", "omega_samples", "omega_images", "eps_max", "grid_size",
                 "tail_prob", "seed", "omega_ascent_steps", "omega_ascent_starts", "omega_per_image", "omega_ascent_warm",
                 "omega_refine_steps", "evt_maxima", "lipschitz_samples", "omega_extend", "evt_tail")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(frame: Any) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="beyond n")


def cmd_bound(args: argparse.Namespace) -> int:
    """``paperlib bound <run>``: L-bound, omega-bound and EVT fits of one trained model."""
    kw = config_overrides(args, BOUND_OPTIONS)
    BoundConfig(**kw)  # validate the options before loading anything
    device = resolve_device(args.device)
    model, _, profile, dataset = trained_model(args.run, device, training.load_trained)
    n = args.n_images if args.n_images is not None else (profile.n_images if profile is not None
                                                         else field_default(BoundConfig, "n_images"))
    image_seed = kw.get("image_seed", field_default(BoundConfig, "image_seed"))
    x, y, idx = draw_images(dataset, n, image_seed, args.data_root, device)
    batch = args.batch_size or (profile.eval_batch_size if profile is not None
                                else field_default(BoundConfig, "batch_size"))
    cfg = BoundConfig(n_images=int(x.shape[0]), batch_size=batch, **kw)
    run = stage_subrun(args.run, cfg)
    result = run_bounds(model, x, y, idx, cfg, run, force=args.force, progress=args.progress)
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


#: ``paperlib certify`` options that are CertifyConfig fields (``--n-samples`` sets ``n``; sigma and n_images apart)
CERTIFY_OPTIONS = ("n0", "n", "alpha", "batch_size", "image_seed", "radii", "seed")


def _certify_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CertifyConfig fields given on the command line (sigma and n_images excluded)."""
    return config_overrides(args, CERTIFY_OPTIONS)


def cmd_certify(args: argparse.Namespace) -> int:
    """``paperlib certify <run> --sigma S [S ...]``: randomized-smoothing certificates of one trained model, per
    sigma, and their envelope over sigma."""
    kw = _certify_options(args)
    sigmas = list(args.sigma) if args.sigma else None
    if sigmas is not None and len(set(sigmas)) != len(sigmas):
        raise ConfigError(f"--sigma {' '.join(f'{s:g}' for s in sigmas)} repeats a sigma; give each once")
    if not args.grid:
        sigmas = sigmas or [field_default(CertifyConfig, "sigma")]
        for s in sigmas:
            CertifyConfig(sigma=s, n_images=args.n_images or 1, **kw)  # validate the options before loading anything
    device = resolve_device(args.device)
    model, _, profile, dataset = trained_model(args.run, device, training.load_trained)
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
        n_images = args.n_images if args.n_images is not None else field_default(CertifyConfig, "n_images")
        configs = [CertifyConfig(sigma=s, n_images=n_images, **kw) for s in sigmas]
    image_seed = configs[0].image_seed
    x, y, idx = draw_images(dataset, n_images, image_seed, args.data_root, device)
    num_classes = dataset_info(dataset).num_classes
    results = []
    for cfg in configs:
        run = stage_subrun(args.run, cfg)
        result = run_certify(model, x, y, idx, cfg, run, num_classes=num_classes, force=args.force,
                             progress=args.progress)
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
    p = subparsers.add_parser("bound", help="L-bound, omega-bound and extreme-value estimates of a trained model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the trained model's run directory, e.g. runs/fmnist/undefended")
    g = p.add_argument_group("the bounds (BoundConfig's fields)")
    add_config_option(g, BoundConfig, "norm", help="attack norm: l2 or linf (gradients use the dual norm)")
    add_config_option(g, BoundConfig, "image_seed", help="seed of the image draw (the attack suite's)")
    add_config_option(g, BoundConfig, "top_k")
    add_config_option(g, BoundConfig, "lipschitz", help="L used by the l_bound column, evt or empirical-max "
                      "(both are stored)")
    add_config_option(g, BoundConfig, "omega_samples")
    add_config_option(g, BoundConfig, "omega_images", default_text="all")
    add_config_option(g, BoundConfig, "eps_max", help="largest grid radius, [0, 1] pixel units, e.g. 0.125 or "
                      "32/255 (linf radii are at most 1)", default_text="2.0 l2, 32/255 linf")
    for name in ("grid_size", "tail_prob"):
        add_config_option(g, BoundConfig, name)
    add_config_option(g, BoundConfig, "batch_size", help="images per pass", default_text="the profile's")
    add_config_option(g, BoundConfig, "seed")
    a = p.add_argument_group("omega and extreme-value estimators (BoundConfig's Other Parameters)")
    add_config_option(a, BoundConfig, "omega_ascent_steps", help="> 0: also the adversarial omega (projected "
                      "gradient ascent, this many steps)")
    for name in ("omega_ascent_starts", "omega_per_image"):
        add_config_option(a, BoundConfig, name)
    add_config_option(a, BoundConfig, "omega_ascent_warm", help="start each radius's ascent from the best point of "
                      "the previous one")
    add_config_option(a, BoundConfig, "omega_refine_steps", help="> 0: refine each image's own bound from above, "
                      "this many ascent steps per radius (needs --omega-per-image)")
    add_config_option(a, BoundConfig, "evt_maxima", help="pool the samples into at least this many batch maxima "
                      "for the GEV fits", default_text="none: per-batch maxima")
    add_config_option(a, BoundConfig, "lipschitz_samples")
    add_config_option(a, BoundConfig, "omega_extend", help="factor q > 1: extend the omega-distance search beyond "
                      "eps_max by powers of q", default_text="none: stop at eps_max")
    add_config_option(a, BoundConfig, "evt_tail", help="GEV shape: 'any' or 'bounded' (reverse Weibull)")
    x = add_stage_options(p, n_images="test images (default: the profile's n_images)",
                          force="recompute even if a finished or different run exists")
    x.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.set_defaults(func=cmd_bound)

    p = subparsers.add_parser("certify", help="randomized-smoothing certification (Cohen et al. 2019)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the trained model's run directory")
    g = p.add_argument_group("the certificates (CertifyConfig's fields)")
    add_config_option(g, CertifyConfig, "sigma", help="noise level(s) in [0,1] pixel units, e.g. --sigma 0.25 0.5 "
                      "1.0", type=float, nargs="+")
    g.add_argument("--grid", action="store_true",
                   help="the profile's certification grid (paperlib.bounds.smoothing.certify_grid_configs: sigma 0.25, 0.5, "
                   "1.0; fmnist: n 10000 on 500 images); other options given here override it")
    add_config_option(g, CertifyConfig, "n0")
    add_config_option(g, CertifyConfig, "n", flag="--n-samples")
    renamed_option(g, "--n", "--n {value} is not an option of certify: write --n-samples {value} for noise samples "
                   "per image (what --n meant here), or --n-images for test images (what --n means for "
                   "`paperlib attack`)")
    for name in ("alpha", "batch_size", "image_seed", "radii", "seed"):
        add_config_option(g, CertifyConfig, name)
    x = add_stage_options(p, n_images=f"test images (default: CertifyConfig's, "
                          f"{field_default(CertifyConfig, 'n_images')}; with --grid the grid's)",
                          force="recompute even if a finished or different run exists")
    x.add_argument("--data-root", default=None, help="dataset directory (default: the usual places)")
    p.set_defaults(func=cmd_certify)
