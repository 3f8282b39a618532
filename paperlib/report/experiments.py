"""What the book's experiment notebooks (``book/train``, ``attack``, ``bound``, ``certify``) compute and draw.

The notebooks are parameterized (papermill) with the options of one model -- ``profile``, ``method``,
``penalty``, ``norm``, ``lam``, ``h``, ``eps``, ``m``, ``epochs``, ``seed`` -- and of its evaluation
(``n_images``).
This module turns those parameters into exactly the configs and sub-run names that ``paperlib reproduce``
uses (:mod:`paperlib.reproduce`), so that with the parameters of a grid model a notebook *loads* the committed
results from ``runs/<profile>/`` instead of recomputing them; any other parameters compute (and store) new runs.

* parameters and configs: :func:`check_parameters` (every notebook's first check), :func:`train_config`,
  :func:`evaluation_configs`, :func:`evaluation_images`;
* the model and its stages, run or loaded: :func:`prepare` (-> :class:`Experiment`), :func:`run_attacks`,
  :func:`finished_attacks`, :func:`run_bound_stage`, :func:`run_certify_stage`;
* tables: :func:`config_table`, :func:`attack_table`, :func:`attack_wins_table`,
  :func:`attack_passes_table`, :func:`checks_table`, :func:`bounds_table`,
  :func:`bound_attack_pairs`, :func:`smoothing_table`;
* curves and figures: :func:`~paperlib.metrics.error_curves` (the metric, re-exported here),
  :func:`certified_error_curve`, :func:`bound_error_curves`, :func:`plot_training_log`,
  :func:`plot_error_curves`, :func:`plot_certified_error`, :func:`plot_bound_vs_attack`, :func:`plot_smoothing`.

Every number shown comes from the run's files (CSV/JSON), so a computed run and a loaded one print the same.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from paperlib.attacks.suite import attack_model, load_suite, summarize
from paperlib.bounds import Smooth, certified_error, load_bounds, load_certify, run_bounds, run_certify
from paperlib.bounds.audit import present_bounds
from paperlib.config import check_choice, check_int, check_linf_eps, check_number, check_runs_dir, get_profile
from paperlib.data import check_split_count, dataset_info, load_dataset, sample_images
from paperlib.evaluation import resolve_scale, scale_training
from paperlib.metrics import error_curves  # the notebooks call it as ex.error_curves (documented in metrics)
from paperlib.reproduce import evaluation_configs as profile_configs
from paperlib.reproduce import grid, seeded_key, stage_subrun
from paperlib.runs import RunStore, default_runs_dir
from paperlib.training import METHODS, TrainConfig, load_trained, train

__all__ = [
    "PAPER_LINF_EPS",
    "Experiment",
    "check_parameters",
    "prepare",
    "attack_subrun",
    "run_attacks",
    "finished_attacks",
    "run_bound_stage",
    "run_certify_stage",
    "train_config",
    "evaluation_configs",
    "evaluation_images",
    "grid_key",
    "run_id",
    "config_table",
    "attack_table",
    "attack_wins_table",
    "attack_passes_table",
    "ATTACK_BUDGET_RECORD",
    "checks_table",
    "bounds_table",
    "certified_error_curve",
    "bound_error_curves",
    "smoothing_table",
    "plot_training_log",
    "plot_error_curves",
    "plot_certified_error",
    "plot_bound_vs_attack",
    "plot_smoothing",
    "bound_attack_pairs",
]

#: The linf radii of the paper's tables (2/255 and 8/255, in [0, 1] pixel units).
PAPER_LINF_EPS: tuple[float, ...] = (2 / 255, 8 / 255)

_NORM_LABEL = {"l2": r"$\ell_2$", "linf": r"$\ell_\infty$"}


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


def train_config(profile: str = "fmnist", method: str = "penalty", *, penalty: str = "fd", norm: str = "l2",
                 lam: float = 1.0, h: float = 0.01, eps: float | None = None, m: int | None = None,
                 epochs: int | None = None, seed: int = 0, scale: str = "profile"):
    """The :class:`~paperlib.training.TrainConfig` of a notebook's parameters.

    Only the options of ``method`` are used (the others are ignored, not an error, so one parameter cell
    serves every method): ``penalty``, ``norm``, ``lam`` and ``h`` for ``'penalty'`` (``h`` for FD only);
    ``norm`` and ``eps`` for ``'pgd-at'`` and ``'free-at'`` (``eps=None``: 8/255; the paper's AT is ``linf``,
    so pass ``norm='linf'``) and ``m`` for ``'free-at'`` (replays, ``None``: 8); none for ``'undefended'``.
    ``epochs=None`` keeps the scale's (the profile's, or the paper-scale grid's:
    :func:`~paperlib.evaluation.scale_training`, whose recipe and free-AT schedule ``scale='paper'`` applies).

    With the grid's values it equals the config of :func:`paperlib.reproduce.grid` (same run, same hash):
    ``train_config('fmnist') == grid('fmnist')['fd-l2-lam1']``, and at ``scale='paper'`` the paper-scale grid's.
    """
    check_choice("method", method, METHODS)
    recipe, free_schedule = scale_training(profile, scale)
    kw: dict[str, Any] = {**recipe, "method": method, "seed": check_int("seed", seed, 0)}
    if method == "free-at" and free_schedule is not None:
        kw["free_schedule"] = free_schedule
    if epochs is not None:
        kw["epochs"] = check_int("epochs", epochs, 1)
    if method == "penalty":
        kw.update(penalty=penalty, norm=norm, lam=float(check_number("lam", lam)))
        if penalty == "fd":
            kw["h"] = float(check_number("h", h))
    elif method in ("pgd-at", "free-at"):
        kw["norm"] = norm
        if eps is not None:
            kw["eps"] = float(check_linf_eps("eps", check_number("eps", eps), norm))
        if method == "free-at" and m is not None:
            kw["m"] = check_int("m", m, 1)
    return TrainConfig.from_profile(profile, **kw)


def check_parameters(profile: Any = "fmnist", method: Any = "penalty", *, penalty: Any = "fd", norm: Any = "l2",
                     lam: Any = 1.0, h: Any = 0.01, eps: Any = None, m: Any = None, epochs: Any = None,
                     n_images: Any = None, sigma: Any = None, n: Any = None, seed: Any = 0,
                     scale: Any = None, runs_dir: Any = None) -> None:
    """Check an experiment notebook's parameters (its ``parameters`` cell, papermill's ``-p``) before anything
    runs, with the rules of the command line: a :class:`~paperlib.config.ConfigError` naming the first bad value
    and what is allowed (in a notebook: its one-line message is the cell's error).

    Numbers are numbers (``lam``, ``h``, ``eps``; not ``True``, not ``'abc'``), integers are integers
    (``epochs``, ``m``, ``n_images``, ``seed``; not ``2.7``), ``n_images`` is at most the profile's test set, a
    linf ``eps`` is at most 1, ``runs_dir`` is a directory that exists or can be created; then the model's
    config and the evaluation configs are built (:func:`train_config`, :func:`evaluation_configs`), which checks
    the options of ``method`` against the training config's own rules. Options of other methods are checked
    for their type only (one parameter cell serves every method). ``scale`` is one of
    :data:`~paperlib.evaluation.SCALES` or None (:func:`~paperlib.evaluation.resolve_scale`: ``'paper'`` where the
    profile defines it). ``sigma`` (a noise level or a list of them)
    and ``n`` (noise samples) are the certify page's, checked by
    :func:`~paperlib.bounds.smoothing.certify_configs`.
    """
    prof = get_profile(profile)
    scale = resolve_scale(prof.name, scale)
    check_int("seed", seed, 0)
    check_number("lam", lam)
    check_number("h", h)
    if eps is not None:
        check_number("eps", eps)
    if m is not None:
        check_int("m", m, 1)
    if epochs is not None:
        check_int("epochs", epochs, 1)
    if n_images is not None:
        check_split_count("n_images", n_images, prof.dataset, "test")
    if runs_dir is not None:
        check_runs_dir(runs_dir)
    train_config(profile, method, penalty=penalty, norm=norm, lam=lam, h=h, eps=eps, m=m, epochs=epochs, seed=seed,
                 scale=scale)
    evals = evaluation_configs(profile, n_images=n_images, seed=seed, scale=scale)
    if sigma is not None or n is not None:
        from paperlib.bounds.smoothing import certify_configs

        certify_configs(evals["certify"], sigma=sigma, n=n)


def evaluation_configs(profile: str, *, n_images: int | None = None, seed: int | None = None,
                       scale: str = "profile", model: str | None = None) -> dict[str, Any]:
    """The profile's attack, bound and certify configs at ``scale`` (:func:`paperlib.reproduce.evaluation_configs`),
    with ``n_images`` (images evaluated) and ``seed`` (image draw and random draws) replaced when given;
    ``model``, the grid key of the evaluated model (:func:`grid_key`), gives its matched attack budget
    (:data:`~paperlib.evaluation.MATCHED_ESCALATION`) as ``paperlib reproduce`` does.

    Returns ``{'attack', 'bound-l2', 'bound-linf', 'certify'}``; unchanged values give the profile's configs
    exactly (same hashes, so committed runs load).
    """
    configs = profile_configs(profile, scale, model)
    if n_images is not None:
        n_images = check_int("n_images", n_images, 1)
        configs = {k: dataclasses.replace(c, n_images=n_images) for k, c in configs.items()}
    if seed is not None:
        seed = check_int("seed", seed, 0)
        configs = {
            "attack": dataclasses.replace(configs["attack"], seed=seed),
            **{k: dataclasses.replace(configs[k], image_seed=seed, seed=seed) for k in ("bound-l2", "bound-linf",
                                                                                          "certify")},
        }
    return configs


def grid_key(cfg: TrainConfig, scale: str = "profile") -> str | None:
    """The key of ``cfg`` in its profile's grid at ``scale`` (``'fd-l2-lam1'``; a seeded model's
    ``'<key>@seed<k>'``), or None when the grid has no such model."""
    recipe, free_schedule = scale_training(cfg.profile, scale)
    for key, c in grid(cfg.profile, recipe, free_schedule).items():
        if dataclasses.replace(c, seed=cfg.seed) == cfg:
            return seeded_key(key, cfg.seed)
    return None


def evaluation_images(dataset: str, n: int, seed: int):
    """The evaluated test images, as :func:`paperlib.reproduce.reproduce` draws them:
    ``sample_images(load_dataset(dataset, 'test'), n, seed)`` -> ``(x, y, idx)``."""
    return sample_images(load_dataset(dataset, "test"), n, seed)


def run_id(run, runs_dir: str | Path) -> str:
    """A run's directory relative to the run store (``fmnist/fd-l2-lam1-h0.01``), the id the book cites."""
    path, root = Path(run.path if hasattr(run, "path") else run), Path(runs_dir)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def config_table(cfg) -> pd.DataFrame:
    """A config dataclass as a two-column table (``option``, ``value`` as text), fields that are None left
    out; radii that are multiples of 1/255 (``eps``, ``step_size``) also shown as ``k/255``."""
    items = [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None]
    return pd.DataFrame({"option": [k for k, _ in items],
                         "value": [_fmt_value(v, per_255=k in ("eps", "step_size")) for k, v in items]})


def _fmt_value(v: Any, per_255: bool = False) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        k = v * 255
        if per_255 and v > 0 and abs(k - round(k)) < 1e-6:
            return f"{v:.6g} ({round(k)}/255)"
        return f"{v:g}"
    if isinstance(v, tuple):
        return ", ".join(_fmt_value(x) for x in v) if v else "(none)"
    return str(v)


# --------------------------------------------------------------------------------------------------
# One model and its stages, run or loaded (the sub-runs of ``paperlib reproduce``)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
    """One trained model and what its evaluation needs (:func:`prepare`).

    Attributes:
        store: the run store.
        cfg: the model's :class:`~paperlib.training.engine.TrainConfig`.
        run: its finished training run.
        model_id: the run's id relative to the store (``fmnist/fd-l2-lam1-h0.01``).
        evals: the evaluation configs (:func:`evaluation_configs`).
        model: the trained model in eval mode (None unless loaded).
        x: the evaluated test images ``[n, C, H, W]`` in [0, 1] (None unless loaded).
        y: their labels ``[n]``.
        idx: their dataset indices ``[n]``.
        scale: the evaluation scale the configs are at (``'profile'`` or ``'paper'``).
    """

    store: Any
    cfg: Any
    run: Any
    model_id: str
    evals: dict
    model: Any = None
    x: Any = None
    y: Any = None
    idx: Any = None
    scale: str = "profile"


def prepare(profile: str = "fmnist", method: str = "penalty", *, penalty: str = "fd", norm: str = "l2",
            lam: float = 1.0, h: float = 0.01, eps: float | None = None, m: int | None = None,
            epochs: int | None = None, n_images: int | None = None, seed: int = 0, scale: str | None = None,
            runs_dir: str | Path | None = None, evaluate: bool = True, progress: bool = False) -> Experiment:
    """Train (or load: a finished run loads at once) the model of the notebook parameters, and with
    ``evaluate`` load it with the evaluated test images (the draw of :func:`paperlib.reproduce.reproduce`).

    ``runs_dir=None`` is :func:`paperlib.runs.default_runs_dir` (the checkout's ``runs/``, whatever the working
    directory). ``scale=None`` is ``'paper'`` where the profile defines it (fmnist: the paper-scale grid's model
    and evaluation), else ``'profile'`` (:func:`~paperlib.evaluation.resolve_scale`). The other arguments are
    those of :func:`train_config` and :func:`evaluation_configs`; they are checked first (:func:`check_parameters`).
    """
    import torch

    check_parameters(profile, method, penalty=penalty, norm=norm, lam=lam, h=h, eps=eps, m=m, epochs=epochs,
                     n_images=n_images, seed=seed, scale=scale, runs_dir=runs_dir)
    scale = resolve_scale(profile, scale)
    torch.manual_seed(seed)
    store = RunStore(default_runs_dir() if runs_dir is None else runs_dir)
    cfg = train_config(profile, method, penalty=penalty, norm=norm, lam=lam, h=h, eps=eps, m=m, epochs=epochs,
                       seed=seed, scale=scale)
    run = train(cfg, store, progress=progress)
    evals = evaluation_configs(profile, n_images=n_images, seed=seed, scale=scale, model=grid_key(cfg, scale))
    exp = Experiment(store=store, cfg=cfg, run=run, model_id=run_id(run, store.root), evals=evals, scale=scale)
    if evaluate:
        exp.model, _ = load_trained(run)
        acfg = exp.evals["attack"]
        exp.x, exp.y, exp.idx = evaluation_images(cfg.dataset, acfg.n_images, acfg.seed)
    return exp


def attack_subrun(exp: Experiment):
    """The attack suite's sub-run of the model (``<model>/attack-<hash>``, as ``paperlib reproduce`` names it)."""
    return stage_subrun(exp.run, exp.evals["attack"])


def run_attacks(exp: Experiment, *, progress: bool = False):
    """The attack suite on the evaluated images, run or loaded (:func:`paperlib.attacks.suite.attack_model`);
    returns the stored :class:`~paperlib.attacks.suite.SuiteResult`."""
    return attack_model(exp.model, exp.x, exp.y, exp.idx, exp.evals["attack"], attack_subrun(exp),
                        progress=progress)


def finished_attacks(exp: Experiment):
    """The attack suite's stored result if its sub-run is finished, else None (nothing is computed)."""
    sub = attack_subrun(exp)
    return load_suite(sub) if sub.is_finished() else None


def run_bound_stage(exp: Experiment, norms: Sequence[str] = ("l2", "linf"), *, progress: bool = False
                    ) -> dict[str, Any]:
    """The bounds per norm (sub-runs ``bounds-l2``, ``bounds-linf``), run or loaded
    (:func:`paperlib.bounds.stage.run_bounds`); returns ``{norm: BoundsResult}`` as stored on disk."""
    out = {}
    for norm in norms:
        bcfg = exp.evals[f"bound-{norm}"]
        k = bcfg.n_images
        sub = stage_subrun(exp.run, bcfg)
        run_bounds(exp.model, exp.x[:k], exp.y[:k], exp.idx[:k], bcfg, sub, progress=progress)
        out[norm] = load_bounds(sub)
    return out


def run_certify_stage(exp: Experiment, ccfg=None, *, progress: bool = False):
    """Randomized smoothing (sub-run ``certify-sigma<sigma>``), run or loaded
    (:func:`paperlib.bounds.smoothing.run_certify`) with ``ccfg`` (default: ``exp.evals['certify']``); returns
    ``(sub-run, CertifyResult as stored on disk)``."""
    ccfg = exp.evals["certify"] if ccfg is None else ccfg
    k = ccfg.n_images
    sub = stage_subrun(exp.run, ccfg)
    run_certify(exp.model, exp.x[:k], exp.y[:k], exp.idx[:k], ccfg, sub,
                num_classes=dataset_info(exp.cfg.dataset).num_classes, progress=progress)
    return sub, load_certify(sub)


# --------------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------------


def attack_table(suite) -> pd.DataFrame:
    """One row per attack job (``pgd-l2``, ``cw-l2``, ...): success rate (% of the clean-correct images) and
    the median l2 and linf distances of its adversarials, from a :class:`~paperlib.attacks.suite.SuiteResult`
    (recomputed from ``attacks.csv``, without the machine-dependent seconds)."""
    jobs = summarize(suite.attacks, suite.best)["jobs"]
    rows = [{"attack": k, "success (%)": v["success_pct"], "median l2": v["median_l2"],
             "median linf": v["median_linf"]} for k, v in jobs.items()]
    return pd.DataFrame(rows).set_index("attack")


def attack_wins_table(suite) -> pd.DataFrame:
    """Per norm and attack job, how often the job gave the best adversarial (the paper's claim that the other
    attacks win "on a significant portion of inputs"), as % of the images some attack broke (clean-misclassified
    ones left out): ``best (%)`` counts a tie for each tied job (equal distances up to
    :data:`~paperlib.metrics.TIE_RTOL`), so a column may sum above 100; ``within 1% (%)``: the job's own
    adversarial is at most 1.01 times the best. Computed from ``attacks.csv`` and ``best.csv``
    (:func:`~paperlib.attacks.suite.summarize`), so runs stored before the summary counted wins show them too.
    An l2 attack's adversarial also counts in linf."""
    summary = summarize(suite.attacks, suite.best)
    rows = []
    for key in sorted(k for k in summary if k.startswith("wins_")):
        wins = summary[key]
        n = wins["n_broken"]
        for job, w in wins.items():
            if job == "n_broken":
                continue
            rows.append({"norm": key[len("wins_"):], "attack": job, "broken images": n,
                         "best (%)": 100.0 * w["tied_best"] / n if n else math.nan,
                         "within 1% (%)": 100.0 * w["within_1pct"] / n if n else math.nan})
    return pd.DataFrame(rows).set_index(["norm", "attack"])


#: The record of ``benchmarks/bench_attack_budget.py`` (model passes per image per attack job, measured).
#: The attack-budget benchmark's record, relative to the repository root (a relative ``record`` is read from there).
ATTACK_BUDGET_RECORD = "benchmarks/records/attack_budget.json"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def attack_passes_table(suite, cfg=None, model_id: str | None = None,
                        record: str | Path | None = ATTACK_BUDGET_RECORD) -> pd.DataFrame:
    """Model forward and backward passes per image (averaged over all attacked images) per attack job, and their
    sum, with where the numbers come from (``source``).

    The suite's summary has them when the run counted passes (:class:`~paperlib.attacks.suite.PassCounter`);
    runs stored before that lack them, and then they are taken from ``record`` (the attack-budget benchmark's
    JSON) when it measured the same model (``model_id``, e.g. ``'fmnist/undefended'``) with the same attack
    config (``cfg``, an :class:`~paperlib.attacks.suite.AttackConfig`; the image count may differ: passes are
    per image; a field the record predates must be at its default). Where neither has them the table is empty. Passes do not follow from the result tables, so they
    are never recomputed here."""
    import json

    jobs = (suite.summary or {}).get("jobs", {})
    rows = [{"attack": k, "forward per image": v["forward_passes_per_image"],
             "backward per image": v["backward_passes_per_image"], "source": "this run's summary"}
            for k, v in jobs.items() if "forward_passes_per_image" in v]
    if record is not None and not Path(record).is_absolute():
        record = _REPO_ROOT / record
    if not rows and cfg is not None and model_id is not None and record is not None and Path(record).exists():
        rec = json.loads(Path(record).read_text())
        mine = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "n_images"}
        # a field added after the record was written matches when it is at its default (as the config hash)
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for label in ("today", "cheap"):
            theirs = {k: v for k, v in rec.get(label, {}).items() if k != "n_images"}
            measured = rec.get("models", {}).get(f"runs/{model_id}", {}).get(f"jobs_{label}")
            if measured and all(_same(theirs[k], v) if k in theirs else _same(defaults[k], v)
                                for k, v in mine.items()):
                rows = [{"attack": k, "forward per image": v["forward"], "backward per image": v["backward"],
                         "source": f"{Path(record).name} ({label}, {rec.get('n_images')} images)"}
                        for k, v in measured.items()]
                break
    if not rows:
        return pd.DataFrame(columns=["forward per image", "backward per image", "passes per image", "source"],
                            index=pd.Index([], name="attack"))
    out = pd.DataFrame(rows).set_index("attack")
    out.insert(2, "passes per image", out["forward per image"] + out["backward per image"])
    return out


def _same(a: Any, b: Any) -> bool:
    """Config values equal after a JSON round trip (tuples as lists)."""
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)
    return norm(a) == norm(b)


def checks_table(checks: Sequence) -> pd.DataFrame:
    """The suite's evaluation checks as a table: check, verdict (``pass``/``FAIL``), message."""
    return pd.DataFrame({"check": [c[0] for c in checks], "verdict": ["pass" if c[1] else "FAIL" for c in checks],
                         "message": [c[2] for c in checks]}).set_index("check")


# --------------------------------------------------------------------------------------------------
# Bounds and certificates
# --------------------------------------------------------------------------------------------------


def bounds_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """Per norm: images, clean error, the Lipschitz constant L (EVT), the mean distance of each bound the run has
    (:func:`~paperlib.bounds.audit.present_bounds`: the L-bound and the omega-bound, and the adversarial
    omega-bounds where they ran) (:class:`~paperlib.bounds.stage.BoundsResult` per norm, ``{'l2': ..., 'linf': ...}``)."""
    rows = []
    for norm, res in results.items():
        t = res.table
        rows.append({
            "norm": norm,
            "images": len(t),
            "clean error (%)": 100.0 * (1.0 - t["correct"].astype(bool).mean()),
            "L (EVT)": float(res.evt["lipschitz"]["evt"]["value"]),
            "L (empirical max)": float(res.evt["lipschitz"]["empirical-max"]["value"]),
            **{f"mean {label}": float(t[c].mean()) for c, label in present_bounds(t).items()},
            "omega fits rejected": sum(1 for e in res.evt["omega"] if e["fit"]["method"] != "gev"),
        })
    return pd.DataFrame(rows).set_index("norm")


def certified_error_curve(radius: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                          radii: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """Certified % error at each radius of a (dense) grid: ``100 * mean(not (correct and radius >= r))``
    (:func:`paperlib.metrics.certified_error`). Returns ``DataFrame(radius, error_pct)``."""
    errs = certified_error(np.asarray(radius, dtype=float), np.asarray(correct, dtype=bool), list(radii))
    return pd.DataFrame({"radius": list(errs), "error_pct": list(errs.values())})


def bound_error_curves(bounds: Mapping[str, Any], n_points: int = 201) -> dict[str, dict[str, pd.DataFrame]]:
    """Certified-error curves of each bound the run has per norm (:func:`~paperlib.bounds.audit.present_bounds`),
    on an even radius grid from 0 to 1.1 x the largest bound: ``{norm: {'L-bound': curve, 'omega-bound': curve,
    ...}}`` (``DataFrame(radius, error_pct)``, :func:`certified_error_curve`), from ``{norm: BoundsResult}``."""
    out = {}
    for norm, res in bounds.items():
        t = res.table
        cols = present_bounds(t)
        top = 1.1 * max(float(t[list(cols)].to_numpy(dtype=float).max()), 1e-3)
        radii = np.linspace(0.0, top, n_points)
        out[norm] = {label: certified_error_curve(t[c], t["correct"], radii) for c, label in cols.items()}
    return out


def smoothing_table(result, base_error_pct: float | None = None) -> pd.Series:
    """Randomized smoothing in a few numbers, from a :class:`~paperlib.bounds.smoothing.CertifyResult`: sigma, n, images,
    the smoothed classifier's clean error (%, abstentions count as errors), the abstention rate (%), the mean
    certified l2 radius (0 for wrong or abstained images) and, if given, the base classifier's clean error (%).
    Floats are rounded to 4 decimals."""
    t = result.table
    correct = t["correct"].astype(bool)
    row: dict[str, Any] = {
        "sigma": float(result.metrics.get("sigma", math.nan)),
        "n (noise samples per image)": int(result.metrics.get("n", 0)),
        "images": int(len(t)),
        "smoothed classifier clean error (%)": 100.0 * (1.0 - float(correct.mean())),
        "abstained (%)": 100.0 * float((t["prediction"] == Smooth.ABSTAIN).mean()),
        "mean certified radius (l2)": float(t["radius"].where(correct, 0.0).mean()),
    }
    if base_error_pct is not None:
        row["base classifier clean error (%, full test set)"] = float(base_error_pct)
    return pd.Series({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, dtype=object)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_training_log(log: pd.DataFrame, title: str):
    """Two panels from ``train_log.csv``: training loss (total and clean cross-entropy) and clean test error
    (%) per epoch. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(log["epoch"], log["train_loss"], marker="o", label="training objective (CE + penalty)")
    if "train_clean_loss" in log and log["train_clean_loss"].notna().any():
        a1.plot(log["epoch"], log["train_clean_loss"], marker="s", ls="--", label="clean cross-entropy")
    a1.set(xlabel="epoch", ylabel="training loss (nats per example)", title="training loss")
    a2.plot(log["epoch"], log["test_error_pct"], marker="o", color="C3", label="clean test error")
    a2.set(xlabel="epoch", ylabel="% test error", title="clean test error")
    for ax in (a1, a2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_xticks(list(log["epoch"]))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_error_curves(curves: Mapping[str, pd.DataFrame], title: str, *, bounds: Mapping[str, Mapping[str,
                      pd.DataFrame]] | None = None):
    """Empirical % error vs perturbation size, one panel per norm (``curves`` from
    :func:`~paperlib.metrics.error_curves`); the paper's linf radii 2/255 and 8/255 are marked. ``bounds``
    (optional): ``{norm: {label: curve}}`` certified-error curves (``DataFrame(radius, error_pct)``) drawn in the
    same panels."""
    import matplotlib.pyplot as plt

    norms = [n for n in ("l2", "linf") if n in curves or (bounds and n in bounds)]
    fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        if norm in curves:
            c = curves[norm]
            ax.step(c["eps"], c["error_pct"], where="post", label="empirical (best attack)", color="C0")
        for k, (label, bc) in enumerate(((bounds or {}).get(norm) or {}).items()):
            ax.step(bc["radius"], bc["error_pct"], where="post", ls="--", color=f"C{k + 1}",
                    label=f"certified ({label})")
        if norm == "linf":
            for e, ls in zip(PAPER_LINF_EPS, (":", "-.")):
                ax.axvline(e, color="gray", ls=ls, lw=1, label=f"paper's eps = {round(e * 255)}/255")
        ax.set(xlabel=f"perturbation size ({norm}, [0, 1] pixel units)", ylabel="% test error",
               title=f"{_NORM_LABEL[norm]} error vs perturbation size", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_certified_error(curves: Mapping[str, Mapping[str, pd.DataFrame]], title: str):
    """Certified % error vs radius, one panel per norm: ``curves = {norm: {label: DataFrame(radius,
    error_pct)}}`` (:func:`certified_error_curve`)."""
    return plot_error_curves({}, title, bounds=curves)


def plot_bound_vs_attack(pairs: Mapping[str, pd.DataFrame], title: str):
    """Per norm, each image's lower bounds (L-bound, omega-bound, and the adversarial omega-bounds where they ran)
    against the best adversarial distance the attacks found, with the line y = x: a valid lower bound lies on or
    below it. ``pairs[norm]`` has columns ``best`` and the bounds' (:func:`bound_attack_pairs`; images no attack
    broke left out)."""
    import matplotlib.pyplot as plt

    norms = list(pairs)
    fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms), 4.0), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        p = pairs[norm]
        cols = present_bounds(p)
        for k, (c, label) in enumerate(cols.items()):
            ax.scatter(p["best"], p[c], s=10, alpha=0.6, marker="o^sv"[k % 4], label=label, color=f"C{k + 1}")
        top = float(np.nanmax([p["best"].max(), *(p[c].max() for c in cols), 1e-3]))
        ax.plot([0, top], [0, top], color="k", lw=1, label="y = x (bound = attack distance)")
        ax.set(xlabel=f"best attack distance ({norm}, pixel units)", ylabel=f"lower bound ({norm}, pixel units)",
               title=f"{_NORM_LABEL[norm]}: bound vs attack")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_smoothing(curve: pd.DataFrame, title: str, *, sigma: float, empirical: pd.DataFrame | None = None):
    """Randomized smoothing: certified % error vs l2 radius (:func:`certified_error_curve` of ``certify.csv``);
    ``empirical`` (optional, ``DataFrame(eps, error_pct)``): the attack suite's l2 curve of the base model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.step(curve["radius"], curve["error_pct"], where="post", color="C2",
            label=f"smoothed classifier, certified (sigma = {sigma:g})")
    if empirical is not None:
        ax.step(empirical["eps"], empirical["error_pct"], where="post", color="C0",
                label="base classifier, empirical (best attack)")
    ax.set(xlabel="l2 radius ([0, 1] pixel units)", ylabel="% test error", title=title, ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def bound_attack_pairs(bounds_table_: pd.DataFrame, best: pd.DataFrame, norm: str) -> pd.DataFrame:
    """Per image: the best attack distance in ``norm`` beside the bounds (``bounds.csv`` joined to ``best.csv``
    on ``image``: every bound of :func:`~paperlib.bounds.audit.present_bounds`); images no attack broke
    (``best = inf``) are left out."""
    b = best.loc[best["norm"] == norm, ["image", "best"]]
    merged = bounds_table_[["image", *present_bounds(bounds_table_)]].merge(b, on="image", how="inner")
    return merged[np.isfinite(merged["best"].to_numpy(dtype=float))].reset_index(drop=True)

