"""``paperlib reproduce``: the paper's whole grid for a profile -- train, attack, bound, certify.

The grid (Tables 1, 2, B.3, B.4 of the paper), keyed by the row keys of
:mod:`paperlib.report.paper`:

* ``undefended``;
* ``pgd-at-2``, ``pgd-at-8``: linf 7-step PGD adversarial training at eps 2/255 and 8/255 (step eps/4, Madry's
  random start -- see :mod:`paperlib.training.methods` for why this variant);
* ``free-at-2``, ``free-at-8``: 'free' adversarial training with m = 2 and m = 8 replays (eps 8/255; epochs
  divided by m);
* squared l1 penalty (against linf attacks): ``dbp-l1-lam0.1``, ``dbp-l1-lam1``, ``fd-l1-lam0.1`` (h = 0.01),
  ``fd-l1-lam1-h0.1``;
* squared l2 penalty (against l2 attacks): ``dbp-l2-lam0.1``, ``dbp-l2-lam1``, ``fd-l2-lam0.1``, ``fd-l2-lam1``
  (h = 0.01);
* the h study (Table B.4): squared l1, lam 1, h in {1e-4, 1e-3, 1e-2, 0.1, 1} (``h=0.1`` is ``fd-l1-lam1-h0.1``).

Then, for every model: the attack suite in l2 and linf on the profile's ``n_images`` seeded test images
(:mod:`paperlib.attacks.suite`), the bounds in l2 and linf (:mod:`paperlib.bounds.lipschitz`), and randomized
smoothing for ``undefended`` and ``fd-l2-lam1`` (:mod:`paperlib.bounds.smoothing`). Smoothing as Cohen et al. run
it (three sigmas, n >= 10,000 on 500 images: :func:`~paperlib.reproduce.certify_grid_configs`) is not a stage of
the grid; ``paperlib certify <run> --grid`` runs it for one model.

Every stage is a run of the run store, so the command is resumable: finished runs load at once, a partial run
continues from its checkpoint. Wall time per stage is recorded in ``runs/<profile>/reproduce.json``. A model whose
training loss becomes non-finite is recorded as diverged (``DIVERGED.json`` in its run directory, which later
invocations respect) and the grid goes on with the others.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from paperlib.config import ConfigError, check_choice, get_profile

__all__ = ["grid", "evaluation_configs", "reproduce", "stage_seconds", "stage_subrun", "diverged_note", "DIVERGED", "add_parser", "STAGES", "SMOOTHING_MODELS", "RECIPE_FIELDS", "recipe_tag",
           "CERTIFY_SIGMAS", "CERTIFY_NAME_N", "certify_grid_configs"]

STAGES = ("train", "attack", "bound", "certify")
SMOOTHING_MODELS = ("undefended", "fd-l2-lam1")
H_STUDY = (1e-4, 1e-3, 1e-2, 0.1, 1.0)
#: written into a training run whose loss became non-finite (with the config hash and the error message)
DIVERGED = "DIVERGED.json"


#: Recipe fields of the training config that ``reproduce`` lets a user change for the whole grid.
RECIPE_FIELDS = ("epochs", "milestones", "grad_clip")


def grid(profile: str, recipe: dict[str, Any] | None = None, free_schedule: str | None = None) -> dict[str, Any]:
    """The paper's grid of :class:`~paperlib.training.TrainConfig` for ``profile``, keyed by paper row key.

    Args:
        profile: the profile whose recipe every model follows.
        recipe: fields of :data:`RECIPE_FIELDS` changed for every model (their run names then carry the
            ``-r<hash>`` of the change, so they live beside the profile's own grid).
        free_schedule: the free-AT models' ``free_schedule`` (``'steps'``: as many SGD steps as the others).
    """
    from paperlib.training import TrainConfig

    recipe = dict(recipe or {})
    for k in recipe:
        check_choice("recipe field", k, RECIPE_FIELDS)

    def make(**kw):
        if kw.get("method") == "free-at" and free_schedule is not None:
            kw["free_schedule"] = free_schedule
        return TrainConfig.from_profile(profile, **recipe, **kw)

    g: dict[str, Any] = {"undefended": make(method="undefended")}
    for e in (2, 8):
        g[f"pgd-at-{e}"] = make(method="pgd-at", norm="linf", eps=e / 255, steps=7)
    for m in (2, 8):
        g[f"free-at-{m}"] = make(method="free-at", norm="linf", eps=8 / 255, m=m)
    for norm in ("l1", "l2"):
        for lam, tag in ((0.1, "0.1"), (1.0, "1")):
            g[f"dbp-{norm}-lam{tag}"] = make(method="penalty", penalty="dbp", norm=norm, lam=lam)
            h = 0.1 if (norm == "l1" and lam == 1.0) else 0.01
            key = f"fd-{norm}-lam{tag}" + ("-h0.1" if h == 0.1 else "")
            g[key] = make(method="penalty", penalty="fd", norm=norm, lam=lam, h=h)
    for h, name in zip(H_STUDY, ("h=1e-4", "h=1e-3", "h=1e-2", "h=0.1", "h=1")):  # Table B.4's row labels
        key = "fd-l1-lam1-h0.1" if h == 0.1 else name
        g.setdefault(key, make(method="penalty", penalty="fd", norm="l1", lam=1.0, h=h))
    return g


# Evaluation budgets per profile. The literature's defaults (the attack and bound configs' own defaults) are
# what the cifar10/imagenet profiles use on GPUs; the CPU profiles cut the iteration budgets, and the attack
# suite's convergence check (doubled budgets on a subsample) reports whether the cut budgets still converge.
_EVAL = {
    "smoke": {
        "attack": dict(pgd_steps=10, pgd_search_steps=6, cw_steps=100, cw_binary_search_steps=5, boundary_steps=200,
                       logbarrier_outer=4, logbarrier_inner=30, convergence_n=0),
        "bound": dict(omega_samples=4, grid_size=6),
        "certify": dict(sigma=0.25, n0=20, n=200, batch_size=200),
    },
    # Fashion-MNIST on a 2-core CPU: the profile's 60 images per model (the paper: 1000) and budgets cut so
    # that the 17-model grid fits about two hours; the convergence check (doubled budgets on 10 images) says
    # whether they are enough, and the book reports it model by model.
    "fmnist": {
        "attack": dict(batch_size=30, pgd_steps=40, pgd_search_steps=12, cw_steps=200, cw_binary_search_steps=6,
                       boundary_steps=1500, logbarrier_outer=10, logbarrier_inner=60, convergence_n=10),
        "bound": dict(),
        "certify": dict(sigma=0.25, n0=100, n=2000, batch_size=1000),
    },
    "cifar10": {"attack": dict(), "bound": dict(), "certify": dict(sigma=0.25, n_images=500)},
    "imagenet": {"attack": dict(), "bound": dict(top_k=5), "certify": dict(sigma=0.25, n_images=500)},
}


#: Noise levels of the certification grid (Cohen et al. 2019 also use 0.12 on CIFAR-10).
CERTIFY_SIGMAS = (0.25, 0.5, 1.0)

#: Randomized smoothing as Cohen et al. run it, per profile: one CertifyConfig per sigma of
#: :data:`~paperlib.reproduce.CERTIFY_SIGMAS` (:func:`~paperlib.reproduce.certify_grid_configs`), abstentions
#: counted as errors. The profile's own ``certify`` budget above (n = 2000 on fmnist, whose committed runs keep
#: their hashes) certifies no l2 radius above 0.68 at sigma 0.25; n = 10,000 reaches 0.80 / 1.60 / 3.20 at
#: sigma 0.25 / 0.5 / 1.0 (alpha 0.001), so every radius of Table B.5 (up to 2.0) is within reach of some sigma.
#: The other fields (n0, alpha, batch size, radii, seeds) are the profile's certify config's, so the grid is what
#: the certify page computes with
#: ``-y "{sigma: [0.25, 0.5, 1.0], n: 10000, n_images: 500}"``.
_CERTIFY_GRID: dict[str, dict[str, Any]] = {
    "smoke": dict(),  # the smoke profile's own certify budget, at three sigmas
    "fmnist": dict(n=10_000, n_images=500),
    "cifar10": dict(n=100_000, n_images=500),
    "imagenet": dict(n=100_000, n_images=500),
}

#: A certify sub-run with at least this many noise samples is named ``certify-sigma<s>-n<n>``, so the
#: certification grid sits beside the profile's quick ``certify-sigma<s>`` runs instead of replacing them.
CERTIFY_NAME_N = 10_000


def certify_grid_configs(profile: str) -> dict[float, Any]:
    """The certification grid of a profile: ``{sigma: CertifyConfig}`` for each sigma of
    :data:`~paperlib.reproduce.CERTIFY_SIGMAS`, the profile's certify config
    (:func:`~paperlib.reproduce.evaluation_configs`) with the grid's ``n`` and ``n_images``."""
    import dataclasses

    prof = get_profile(profile)
    base = evaluation_configs(prof.name)["certify"]
    return {s: dataclasses.replace(base, sigma=s, **_CERTIFY_GRID[prof.name]) for s in CERTIFY_SIGMAS}


def evaluation_configs(profile: str) -> dict[str, Any]:
    """The attack, bound (l2 and linf) and certify configs of a profile: ``{'attack', 'bound-l2',
    'bound-linf', 'certify'}``."""
    from paperlib.attacks.suite import AttackConfig
    from paperlib.bounds import BoundConfig, CertifyConfig

    prof = get_profile(profile)
    budgets = _EVAL[prof.name]
    n, bs = prof.n_images, prof.eval_batch_size
    certify = {"n_images": n, "batch_size": bs, **budgets["certify"]}
    return {
        "attack": AttackConfig(**{"n_images": n, "batch_size": min(bs, n), **budgets["attack"]}),
        "bound-l2": BoundConfig(norm="l2", n_images=n, batch_size=bs, **budgets["bound"]),
        "bound-linf": BoundConfig(norm="linf", n_images=n, batch_size=bs, **budgets["bound"]),
        "certify": CertifyConfig(**certify),
    }


def _timed(times: dict[str, float], stage: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0


def reproduce(profile: str, runs_dir: str | Path | None = None, *, stages: Sequence[str] = STAGES,
              only: Sequence[str] | None = None, progress: bool = True, log=print,
              recipe: dict[str, Any] | None = None, free_schedule: str | None = None) -> dict[str, Any]:
    """Run (or load) the grid of ``profile`` through ``stages``; return per-stage wall times and the runs.

    Args:
        profile: ``smoke``, ``fmnist``, ``cifar10`` or ``imagenet``.
        runs_dir: root of the run store (default ``$PAPERLIB_RUNS``, else ``./runs``).
        stages: subset of :data:`STAGES`, run in that order for every model.
        only: restrict to these grid keys (default: the whole grid).
        progress: tqdm bars in each stage.
        log: where to print one line per finished step.
        recipe, free_schedule: see :func:`grid`.

    Several processes may work on one grid at once (e.g. two with one thread each on a 2-core machine): a
    model another process is training is skipped and taken up at the end, once that process has finished it.
    """
    from paperlib.attacks.suite import attack_model
    from paperlib.bounds import run_bounds, run_certify
    from paperlib.data import dataset_info, load_dataset, sample_images
    from paperlib.runs import RunLockedError, RunStore, atomic_write_text
    from paperlib.training import TrainingDivergedError, load_trained, train

    for s in stages:
        check_choice("stage", s, STAGES)
    configs = grid(profile, recipe, free_schedule)
    keys = list(configs)
    if only:
        for k in only:
            check_choice("model", k, keys)
        keys = [k for k in keys if k in only]
    store = RunStore(runs_dir)
    tag = recipe_tag(recipe, free_schedule)
    evals = evaluation_configs(profile)
    times: dict[str, float] = {}
    runs: dict[str, str] = {}
    diverged: dict[str, str] = {}
    images = None
    start = time.perf_counter()
    queue = [(i, key, False) for i, key in enumerate(keys, 1)]
    while queue:
        i, key, wait = queue.pop(0)
        cfg = configs[key]
        computed: dict[str, float] = {}  # seconds of the stages that did work now (not loaded)
        if "train" in stages:
            pre = store.run(cfg.profile, _run_name(cfg), cfg)
            note = diverged_note(pre)
            if note is not None:
                diverged[key] = note
                log(f"[{i}/{len(keys)}] {key}: diverged when it was trained ({note}); skipped -- delete "
                    f"{pre.path / DIVERGED} to try again")
                continue
            was = pre.is_finished()
            t0 = time.perf_counter()
            try:
                run = _timed(times, "train", train, cfg, store, progress=progress, wait=wait)
            except RunLockedError as exc:
                log(f"[{i}/{len(keys)}] {key}: {exc}; coming back to it at the end")
                queue.append((i, key, True))
                continue
            except TrainingDivergedError as exc:
                # One model's divergence is a result (the paper's h = 1e-4 row is the case in point), not a
                # reason to stop the grid: record it where the table pages find it, and go on.
                pre.path.mkdir(parents=True, exist_ok=True)
                pre.write_json(DIVERGED, {"hash": pre.hash, "message": str(exc)})
                diverged[key] = str(exc)
                log(f"[{i}/{len(keys)}] {key}: DIVERGED ({exc}); recorded in {pre.path / DIVERGED}")
                continue
            if not was:
                computed["train"] = time.perf_counter() - t0
        else:
            run = store.run(cfg.profile, _run_name(cfg), cfg)
        runs[key] = str(run.path)
        if run.status != "finished":
            log(f"[{i}/{len(keys)}] {key}: not trained (run the 'train' stage); skipped")
            continue
        log(f"[{i}/{len(keys)}] {key}: trained ({run.path})")
        if not set(stages) & {"attack", "bound", "certify"}:
            _record_timing(store.root / profile, key, computed, tag)
            continue
        model, tcfg = load_trained(run)
        if images is None:
            images = sample_images(load_dataset(tcfg.dataset, "test"), evals["attack"].n_images,
                                   evals["attack"].seed)
        x, y, idx = images

        def timed_stage(stage, sub, fn, *args, **kwargs):
            was = sub.is_finished()
            t0 = time.perf_counter()
            out = _timed(times, stage, fn, *args, sub, **kwargs)
            if not was:
                computed[stage] = computed.get(stage, 0.0) + time.perf_counter() - t0
            return out

        if "attack" in stages:
            acfg = evals["attack"]
            suite = timed_stage("attack", stage_subrun(run, acfg), attack_model, model, x, y, idx,
                                acfg, progress=progress)
            failed = [c[0] for c in suite.checks if not c[1]]
            log(f"    attacks done; checks {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
        if "bound" in stages:
            for norm in ("l2", "linf"):
                bcfg = evals[f"bound-{norm}"]
                timed_stage("bound", stage_subrun(run, bcfg), run_bounds, model, x[:bcfg.n_images],
                            y[:bcfg.n_images], idx[:bcfg.n_images], bcfg, progress=progress)
            log("    bounds done (l2, linf)")
        if "certify" in stages and key in SMOOTHING_MODELS:
            ccfg = evals["certify"]
            n = ccfg.n_images
            timed_stage("certify", stage_subrun(run, ccfg), run_certify, model, x[:n],
                        y[:n], idx[:n], ccfg, num_classes=dataset_info(tcfg.dataset).num_classes,
                        progress=progress)
            log(f"    smoothing certificates done (sigma {ccfg.sigma:g})")
        _record_timing(store.root / profile, key, computed, tag)
    times["total"] = time.perf_counter() - start
    report = {"profile": profile, "stages": list(stages), "models": keys, "seconds": times, "runs": runs,
              "diverged": diverged}
    import json

    report["recipe"] = {k: list(v) if isinstance(v, tuple) else v for k, v in (recipe or {}).items()}
    report["free_schedule"] = free_schedule
    path = store.root / profile / f"reproduce{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    log("wall time per stage (this invocation; finished runs load in seconds): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    return report


def stage_subrun(run, cfg):
    """The sub-run of a trained model's run (a :class:`~paperlib.runs.Run` or its directory) that holds an
    evaluation stage with config ``cfg``: ``attack-<config hash>``
    (:class:`~paperlib.attacks.suite.AttackConfig`), ``bounds-<norm>``
    (:class:`~paperlib.bounds.lipschitz.BoundConfig`) or ``certify-sigma<sigma>``
    (:class:`~paperlib.bounds.smoothing.CertifyConfig`; ``certify-sigma<sigma>-n<n>`` when ``n`` is at least
    :data:`~paperlib.reproduce.CERTIFY_NAME_N`). The one place these names are made, so the grid, the command
    line, the table pages and the experiment notebooks agree."""
    from paperlib.attacks.suite import AttackConfig, attack_run_name
    from paperlib.bounds import BoundConfig, CertifyConfig
    from paperlib.runs import Run

    if isinstance(cfg, AttackConfig):
        name = attack_run_name(cfg)
    elif isinstance(cfg, BoundConfig):
        name = f"bounds-{cfg.norm}"
    elif isinstance(cfg, CertifyConfig):
        name = f"certify-sigma{cfg.sigma:g}" + (f"-n{cfg.n}" if cfg.n >= CERTIFY_NAME_N else "")
    else:
        raise ConfigError(f"no evaluation stage has a config of type {type(cfg).__name__}; "
                          "expected AttackConfig, BoundConfig or CertifyConfig")
    return Run(Path(getattr(run, "path", run)) / name, cfg)


def diverged_note(run) -> str | None:
    """The message recorded when ``run``'s training diverged under its current config, else None."""
    if not run.exists(DIVERGED):
        return None
    rec = run.read_json(DIVERGED)
    return rec.get("message", "diverged") if rec.get("hash") == run.hash else None


def recipe_tag(recipe: dict[str, Any] | None = None, free_schedule: str | None = None) -> str:
    """``''`` for the profile's own grid, else ``-r<hash>`` of the recipe change: the suffix of the grid's
    records (``reproduce<tag>.json``, ``timings<tag>/``), so a changed grid never overwrites the profile's."""
    from paperlib.config import config_hash

    change = {k: list(v) if isinstance(v, tuple) else v for k, v in (recipe or {}).items()}
    if free_schedule is not None:
        change["free_schedule"] = free_schedule
    return "-r" + config_hash(change, length=6) if change else ""


def _record_timing(root: Path, key: str, computed: dict[str, float], tag: str = "") -> None:
    """Add the seconds of the stages computed now to ``<root>/timings<tag>/<key>.json`` (loaded stages keep the
    seconds of the invocation that computed them)."""
    import json

    from paperlib.runs import atomic_write_text

    if not computed:
        return
    path = root / f"timings{tag}" / f"{key}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: round(v, 1) for k, v in computed.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(old, indent=2, sort_keys=True) + "\n")


def stage_seconds(profile_dir: str | Path, tag: str = "") -> dict[str, dict[str, float]]:
    """Per-model seconds of each stage as :func:`reproduce` measured them when it computed them:
    ``{key: {'train': s, 'attack': s, ...}}`` from ``<profile_dir>/timings<tag>/`` (see :func:`recipe_tag`)."""
    import json

    d = Path(profile_dir) / f"timings{tag}"
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


def _run_name(cfg) -> str:
    from paperlib.training import run_name

    return run_name(cfg)


def _cmd(args: argparse.Namespace) -> int:
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else None
    if not stages:
        raise ConfigError(f"--stages {args.stages!r} is empty; choose from {', '.join(STAGES)}")
    recipe: dict[str, Any] = {}
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    if args.milestones is not None:
        try:
            recipe["milestones"] = tuple(int(v) for v in args.milestones.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--milestones {args.milestones!r} must be comma-separated integers, e.g. 8,12,14") from None
    if args.grad_clip is not None:
        recipe["grad_clip"] = args.grad_clip
    reproduce(args.profile, args.runs_dir, stages=stages, only=only, progress=args.progress, recipe=recipe,
              free_schedule=args.free_schedule)
    return 0


def add_parser(subparsers) -> None:
    """Register ``paperlib reproduce``."""
    p = subparsers.add_parser("reproduce", help="the paper's whole grid for a profile (train, attack, bound, certify)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="fmnist", help="smoke | fmnist | cifar10 | imagenet (default fmnist)")
    p.add_argument("--runs-dir", default=None, help="run store root (default: $PAPERLIB_RUNS or ./runs)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--only", default=None, help="comma-separated grid keys (e.g. undefended,fd-l2-lam1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    r = p.add_argument_group("recipe changes for every model (defaults from the profile)")
    r.add_argument("--epochs", type=int, default=None, help="training epochs")
    r.add_argument("--milestones", default=None, help="learning-rate drop epochs, e.g. 8,12,14")
    r.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm at this value")
    r.add_argument("--free-schedule", default=None, help="free AT: 'steps' = as many SGD steps as the others")
    p.set_defaults(func=_cmd)
