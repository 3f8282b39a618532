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
(:mod:`paperlib.attacks.suite`), the bounds in l2 and linf (:mod:`paperlib.bounds.stage`), and randomized
smoothing for ``undefended`` and ``fd-l2-lam1`` (:mod:`paperlib.bounds.smoothing`). Smoothing as Cohen et al. run
it (three sigmas, n >= 10,000 on 500 images: :func:`~paperlib.bounds.smoothing.certify_grid_configs`) is not a stage of
the grid; ``paperlib certify <run> --grid`` runs it for one model.

Every stage is a run of the run store, so the command is resumable: finished runs load at once, a partial run
continues from its checkpoint. Wall time per stage is recorded in ``runs/<profile>/reproduce.json``. A model whose
training loss becomes non-finite is recorded as diverged (``DIVERGED.json`` in its run directory, which later
invocations respect) and the grid goes on with the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

# ``training`` as a module: its ``train`` and ``load_trained`` are looked up when the grid runs (tests replace them).
import paperlib.training as training
from paperlib.attacks.suite import AttackConfig, attack_model
from paperlib.bounds.stage import BoundConfig, run_bounds
from paperlib.bounds.smoothing import CERTIFY_NAME_N, CertifyConfig, certify_grid_configs, run_certify
from paperlib.config import ConfigError, check_choice, check_int, config_hash
from paperlib.data import dataset_info, load_dataset, sample_images
from paperlib.evaluation import _EVAL, CERTIFY_SIGMAS, SCALES, evaluation_budgets, scale_training  # noqa: F401 (re-exported)
from paperlib.runs import RunLockedError, RunStore, atomic_write_text
from paperlib.stages import stage_subrun

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
    recipe = dict(recipe or {})
    for k in recipe:
        check_choice("recipe field", k, RECIPE_FIELDS)

    def make(**kw):
        if kw.get("method") == "free-at" and free_schedule is not None:
            kw["free_schedule"] = free_schedule
        return training.TrainConfig.from_profile(profile, **recipe, **kw)

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


def evaluation_configs(profile: str, scale: str = "profile", model: str | None = None) -> dict[str, Any]:
    """The attack, bound (l2 and linf) and certify configs of a profile: ``{'attack', 'bound-l2',
    'bound-linf', 'certify'}``, built from its budgets (:func:`~paperlib.evaluation.evaluation_budgets`; ``scale``
    'profile' or 'paper'; ``model``, a grid key, for its matched attack budget)."""
    kw = evaluation_budgets(profile, scale, model)
    return {"attack": AttackConfig(**kw["attack"]), "bound-l2": BoundConfig(**kw["bound-l2"]),
            "bound-linf": BoundConfig(**kw["bound-linf"]), "certify": CertifyConfig(**kw["certify"])}


def _timed(times: dict[str, float], stage: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0


def reproduce(profile: str, runs_dir: str | Path | None = None, *, stages: Sequence[str] = STAGES,
              only: Sequence[str] | None = None, progress: bool = True, log=print,
              recipe: dict[str, Any] | None = None, free_schedule: str | None = None,
              scale: str = "profile", seeds: Sequence[int] = (0,)) -> dict[str, Any]:
    """Run (or load) the grid of ``profile`` through ``stages``; return per-stage wall times and the runs.

    Args:
        profile: ``smoke``, ``fmnist``, ``cifar10`` or ``imagenet``.
        runs_dir: root of the run store (default ``$PAPERLIB_RUNS``, else ``./runs``).
        stages: subset of :data:`STAGES`, run in that order for every model.
        only: restrict to these grid keys (default: the whole grid).
        progress: tqdm bars in each stage.
        log: where to print one line per finished step.
        recipe, free_schedule: see :func:`grid`. Both None (the default) at ``scale='paper'``: the paper-scale
            grid's training (:data:`~paperlib.evaluation.PAPER_SCALE_TRAINING`); give either to evaluate another
            grid at paper scale (``recipe={}``: the profile's own).
        seeds: training seeds of every selected model (default ``(0,)``, the grid itself). A seed ``k > 0`` is
            the same model trained again with ``seed=k`` (run name suffix ``-seed<k>``, key ``<key>@seed<k>``),
            evaluated on the same images, so that training variance can be shown beside a comparison.
        scale: the evaluation, ``'profile'`` (the profile's own budgets) or ``'paper'`` (1000 images, the cheap
            early-stopping attack budgets, the recommended bound estimators, smoothing at every sigma of the
            certification grid; :func:`~paperlib.evaluation.evaluation_budgets`). Their sub-runs differ by hash,
            so both evaluations sit side by side in each model's run.

    Several processes may work on one grid at once (e.g. two with one thread each on a 2-core machine): a
    model another process is training is skipped and taken up at the end, once that process has finished it.
    """
    for s in stages:
        check_choice("stage", s, STAGES)
    check_choice("scale", scale, SCALES)
    if recipe is None and free_schedule is None:
        recipe, free_schedule = scale_training(profile, scale)
    configs = grid(profile, recipe, free_schedule)
    keys = list(configs)
    if only:
        for k in only:
            check_choice("model", k, keys)
        keys = [k for k in keys if k in only]
    seeds = tuple(dict.fromkeys(check_int("seed", s, 0) for s in seeds))
    if not seeds:
        raise ConfigError("seeds=() is empty; give at least one training seed, e.g. (0,)")
    configs = {seeded_key(k, s): dataclasses.replace(configs[k], seed=s) if s else configs[k]
               for k in keys for s in seeds}
    keys = list(configs)
    store = RunStore(runs_dir)
    tag = recipe_tag(recipe, free_schedule) + ("-paper" if scale == "paper" else "")  # records apart per scale
    evals = evaluation_configs(profile, scale)
    certify_configs = (list(certify_grid_configs(profile).values()) if scale == "paper" else [evals["certify"]])
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
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                run = _timed(times, "train", training.train, cfg, store, progress=progress, wait=wait)
            except RunLockedError as exc:
                log(f"[{i}/{len(keys)}] {key}: {exc}; coming back to it at the end")
                queue.append((i, key, True))
                continue
            except training.TrainingDivergedError as exc:
                # One model's divergence is a result (the paper's h = 1e-4 row is the case in point), not a
                # reason to stop the grid: record it where the table pages find it, and go on.
                pre.path.mkdir(parents=True, exist_ok=True)
                pre.write_json(DIVERGED, {"hash": pre.hash, "message": str(exc)})
                diverged[key] = str(exc)
                log(f"[{i}/{len(keys)}] {key}: DIVERGED ({exc}); recorded in {pre.path / DIVERGED}")
                continue
            if not was:
                computed["train"] = time.perf_counter() - t0
                computed["train_cpu"] = time.process_time() - c0
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
        model, tcfg = training.load_trained(run)
        if images is None:
            images = sample_images(load_dataset(tcfg.dataset, "test"), evals["attack"].n_images,
                                   evals["attack"].seed)
        x, y, idx = images

        # A stage of several sub-runs (the bounds' two norms, the smoothing sigmas) may finish over several
        # invocations: the seconds recorded for its sub-runs finished before this one stay counted.
        prior = stage_seconds(store.root / profile, tag).get(key, {})
        kept: set[str] = set()

        def record() -> None:
            _record_timing(store.root / profile, key,
                           {s: v + (prior.get(s, 0.0) if s.removesuffix("_cpu") in kept else 0.0)
                            for s, v in computed.items()}, tag)

        def timed_stage(stage, sub, fn, *args, **kwargs):
            was = sub.is_finished()
            if was:
                kept.add(stage)
            t0, c0 = time.perf_counter(), time.process_time()
            out = _timed(times, stage, fn, *args, sub, **kwargs)
            if not was:
                computed[stage] = computed.get(stage, 0.0) + time.perf_counter() - t0
                # CPU seconds of this process (all its threads): what the stage cost whatever else ran beside it
                computed[f"{stage}_cpu"] = computed.get(f"{stage}_cpu", 0.0) + time.process_time() - c0
                record()  # at once, so a process stopped in a later stage keeps this one's seconds
            return out

        if "attack" in stages:
            acfg = evaluation_configs(profile, scale, key)["attack"]  # the model's matched budget, if any
            asub = stage_subrun(run, acfg)
            fresh = not asub.is_finished()
            suite = timed_stage("attack", asub, attack_model, model, x, y, idx, acfg, progress=progress)
            if fresh and suite.summary.get("reused_first_phase"):
                # an escalating suite reused the finished first phase (AttackConfig.escalate), a sub-run finished
                # before: its recorded seconds stay counted, as for the stages above
                kept.add("attack")
                record()
            failed = [c[0] for c in suite.checks if not c[1]]
            log(f"    attacks done; checks {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
        if "bound" in stages:
            for norm in ("l2", "linf"):
                bcfg = evals[f"bound-{norm}"]
                timed_stage("bound", stage_subrun(run, bcfg), run_bounds, model, x[:bcfg.n_images],
                            y[:bcfg.n_images], idx[:bcfg.n_images], bcfg, progress=progress)
            log("    bounds done (l2, linf)")
        if "certify" in stages and key in SMOOTHING_MODELS:
            for ccfg in certify_configs:
                n = ccfg.n_images
                timed_stage("certify", stage_subrun(run, ccfg), run_certify, model, x[:n],
                            y[:n], idx[:n], ccfg, num_classes=dataset_info(tcfg.dataset).num_classes,
                            progress=progress)
                log(f"    smoothing certificates done (sigma {ccfg.sigma:g}, n {ccfg.n}, {n} images)")
        record()
    times["total"] = time.perf_counter() - start
    report = {"profile": profile, "stages": list(stages), "models": keys, "seconds": times, "runs": runs,
              "diverged": diverged}
    report["recipe"] = {k: list(v) if isinstance(v, tuple) else v for k, v in (recipe or {}).items()}
    report["free_schedule"] = free_schedule
    report["scale"] = scale
    path = store.root / profile / f"reproduce{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    log("wall time per stage (this invocation; finished runs load in seconds): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    return report


def diverged_note(run) -> str | None:
    """The message recorded when ``run``'s training diverged under its current config, else None."""
    if not run.exists(DIVERGED):
        return None
    rec = run.read_json(DIVERGED)
    return rec.get("message", "diverged") if rec.get("hash") == run.hash else None


def recipe_tag(recipe: dict[str, Any] | None = None, free_schedule: str | None = None) -> str:
    """``''`` for the profile's own grid, else ``-r<hash>`` of the recipe change: the suffix of the grid's
    records (``reproduce<tag>.json``, ``timings<tag>/``), so a changed grid never overwrites the profile's."""
    change = {k: list(v) if isinstance(v, tuple) else v for k, v in (recipe or {}).items()}
    if free_schedule is not None:
        change["free_schedule"] = free_schedule
    return "-r" + config_hash(change, length=6) if change else ""


def _record_timing(root: Path, key: str, computed: dict[str, float], tag: str = "") -> None:
    """Add the seconds of the stages computed now to ``<root>/timings<tag>/<key>.json`` (loaded stages keep the
    seconds of the invocation that computed them)."""
    if not computed:
        return
    path = root / f"timings{tag}" / f"{key}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: round(v, 1) for k, v in computed.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(old, indent=2, sort_keys=True) + "\n")


def stage_seconds(profile_dir: str | Path, tag: str = "") -> dict[str, dict[str, float]]:
    """Per-model seconds of each stage as :func:`reproduce` measured them when it computed them:
    ``{key: {'train': s, 'attack': s, ...}}`` from ``<profile_dir>/timings<tag>/`` (see :func:`recipe_tag`): wall
    seconds, and, for stages computed since they were recorded, the process's CPU seconds as ``'<stage>_cpu'``
    (with one thread per process, the compute the stage used whatever ran beside it)."""
    d = Path(profile_dir) / f"timings{tag}"
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


def _run_name(cfg) -> str:
    return training.run_name(cfg)


def seeded_key(key: str, seed: int) -> str:
    """The grid key of ``key`` trained with ``seed``: ``key`` itself for seed 0, else ``'<key>@seed<k>'``."""
    return key if seed == 0 else f"{key}@seed{seed}"


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
    try:
        seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r} must be comma-separated integers >= 0, e.g. 0,1,2") from None
    given = bool(recipe) or args.free_schedule is not None  # none given: the scale's own training
    reproduce(args.profile, args.runs_dir, stages=stages, only=only, progress=args.progress,
              recipe=recipe if given else None, free_schedule=args.free_schedule, scale=args.scale, seeds=seeds)
    return 0


def add_parser(subparsers) -> None:
    """Register ``paperlib reproduce``."""
    p = subparsers.add_parser("reproduce", help="the paper's whole grid for a profile (train, attack, bound, certify)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="fmnist", help="smoke | fmnist | cifar10 | imagenet (default fmnist)")
    p.add_argument("--runs-dir", default=None, help="run store root (default: $PAPERLIB_RUNS or ./runs)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--only", default=None, help="comma-separated grid keys (e.g. undefended,fd-l2-lam1)")
    p.add_argument("--seeds", default="0", help="training seeds of each model, e.g. 1,2 (default 0, the grid); "
                                                  "seed k > 0 trains '<key>@seed<k>' (run suffix -seed<k>)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--scale", default="profile", choices=SCALES,
                   help="'profile' (its own training and budgets, default) or 'paper' (fmnist: the grid trained "
                        "to a plateau, 16 epochs, clipping at 5, free AT by SGD steps; 1000 images, early-stopping "
                        "attack budgets, the recommended bound estimators, smoothing at three sigmas)")
    r = p.add_argument_group("recipe changes for every model (defaults: the scale's training; any of them "
                             "replaces it with the profile's recipe plus these changes)")
    r.add_argument("--epochs", type=int, default=None, help="training epochs")
    r.add_argument("--milestones", default=None, help="learning-rate drop epochs, e.g. 8,12,14")
    r.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm at this value")
    r.add_argument("--free-schedule", default=None, help="free AT: 'steps' = as many SGD steps as the others")
    p.set_defaults(func=_cmd)
