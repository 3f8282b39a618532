"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019), used for Table B.5.

The smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)`` with noise in [0, 1]
pixel units (not clipped, as in Cohen et al.), is robust in l2: if the top class has probability ``pA >= 1/2``
then ``g`` is constant within radius ``sigma * Phi^-1(pA)`` of ``x``.

:class:`Smooth` follows the paper's pseudocode and names (``n0``, ``n``, ``alpha``, ``sigma``, ``pABar``):

* ``certify``: draw ``n0`` noisy samples to guess the top class ``cAHat``, draw ``n`` more to count ``nA``;
  ``pABar`` is the one-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on ``pA``; abstain if
  ``pABar < 1/2``, else return ``(cAHat, sigma * Phi^-1(pABar))``. With probability at least ``1 - alpha``
  over the noise, a non-abstained answer is ``g(x)`` and ``g`` is constant within the radius.
* ``predict``: draw ``n`` samples and return the top class unless a two-sided binomial test of the top two
  counts (``scipy.stats.binomtest``) has p-value above ``alpha`` (then abstain). With probability at least
  ``1 - alpha`` a non-abstained answer equals ``g(x)``.

Noise is drawn in batches of ``batch_size`` from an explicit ``torch.Generator``; :func:`run_certify` seeds one
per image from ``(seed, image index)``, so an image's certificate does not depend on which other images are
certified, nor on resuming, nor on ``batch_size`` (the noise stream is the same for every split into batches:
rows padded to a multiple of 16 values, see ``Smooth._sample_noise``). "Certified error at radius r" counts
abstentions and wrong answers as errors.

With ``n`` samples no radius above :func:`~paperlib.bounds.smoothing.max_certifiable_radius`
``= sigma * Phi^-1(alpha^(1/n))`` can be certified, whatever the model:
:func:`~paperlib.bounds.smoothing.certified_error_table` reports such radii as NaN with ``beyond_n = True``
instead of the 100% the count gives there, and :func:`~paperlib.bounds.smoothing.smoothing_envelope` takes the
minimum over sigma of the certified error at each radius (Cohen et al.'s envelope over noise levels).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

from paperlib.config import (
    ConfigError,
    check_labels,
    check_logits,
    check_positive,
    check_probability,
    check_unit_images,
    config_from_dict,
)
from paperlib.models import model_classes
from paperlib.bounds.statistics import eval_mode, model_device
from paperlib.evaluation import certify_grid_budgets
from paperlib.metrics import certified_error
from paperlib.stages import Stage, register_stage, run_or_load

__all__ = [
    "certify_run_name",
    "certify_grid_configs",
    "CERTIFY_NAME_N",
    "Smooth",
    "Certificate",
    "lower_confidence_bound",
    "max_certifiable_radius",
    "CertifyConfig",
    "CertifyResult",
    "certify_configs",
    "certified_error_table",
    "smoothing_envelope",
    "image_generator",
    "run_certify",
    "load_certify",
]

DEFAULT_SMOOTHING_RADII: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    return int(value)


def lower_confidence_bound(NA: int, N: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    ``pABar = Beta(alpha; NA, N - NA + 1)`` quantile (0 when ``NA = 0``); it equals the lower end of the
    two-sided exact interval at level ``1 - 2 alpha``. Holds with probability at least ``1 - alpha``.
    """
    N = _check_count("N", N)
    if isinstance(NA, bool) or not isinstance(NA, (int, np.integer)) or not 0 <= NA <= N:
        raise ConfigError(f"NA={NA!r} must be an integer in [0, N={N}]")
    check_probability("alpha", alpha)
    if NA == 0:
        return 0.0
    return float(stats.beta.ppf(alpha, NA, N - NA + 1))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with ``n`` estimation samples, failure probability ``alpha`` and noise
    ``sigma``: ``sigma * Phi^-1(pABar)`` at ``nA = n`` (every noisy copy classified as the top class), where the
    Clopper-Pearson lower bound is ``pABar = alpha^(1/n)``. Certified error at a larger radius is 100% for any
    model, by construction of the certificate -- not a result about the model.
    """
    n = _check_count("n", n)
    check_probability("alpha", alpha)
    sigma = float(check_positive("sigma", sigma))
    return float(sigma * stats.norm.ppf(lower_confidence_bound(n, n, alpha)))


class Certificate(NamedTuple):
    """Result of :meth:`Smooth.certify`: class (or ABSTAIN), radius, and the statistics behind them."""

    prediction: int
    radius: float
    pABar: float
    nA: int
    cAHat: int


class Smooth:
    """A smoothed classifier g built on a base classifier f.

    Args:
        base_classifier: maps ``[B, C, H, W]`` inputs in [0, 1] to logits ``[B, num_classes]``.
        num_classes: number of classes.
        sigma: noise standard deviation (> 0, [0, 1] pixel units).
    """

    #: returned instead of a class when the smoothed classifier abstains
    ABSTAIN: int = -1

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float) -> None:
        self.base_classifier = base_classifier
        self.num_classes = _check_count("num_classes", num_classes)
        self.sigma = float(check_positive("sigma", sigma))

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Certificate:
        """CERTIFY (Cohen et al. 2019): the class of g at ``x`` and an l2 radius around ``x`` where g is constant.

        Args:
            x: one input ``[C, H, W]`` in [0, 1].
            n0: samples used to select the top class; n: samples used to estimate its probability (n0 <= n).
            alpha: failure probability in (0, 1).
            batch_size: noisy copies per forward pass.
            generator: source of the noise (default: a fresh generator seeded 0).

        Returns:
            :class:`Certificate`; on abstention ``prediction = ABSTAIN`` and ``radius = 0``. With probability at
            least ``1 - alpha`` a returned class equals g(x) and g(x + v) = g(x) for all ``||v||_2 < radius``.
        """
        n0, n = _check_count("n0", n0), _check_count("n", n)
        if n0 > n:
            raise ConfigError(f"n0={n0} must not exceed n={n} (selection uses fewer samples than estimation)")
        check_probability("alpha", alpha)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        counts_selection = self._sample_noise(x, n0, batch_size, generator)
        cAHat = int(counts_selection.argmax())
        counts_estimation = self._sample_noise(x, n, batch_size, generator, progress=progress)
        nA = int(counts_estimation[cAHat])
        pABar = lower_confidence_bound(nA, n, alpha)
        if pABar < 0.5:
            return Certificate(Smooth.ABSTAIN, 0.0, pABar, nA, cAHat)
        return Certificate(cAHat, float(self.sigma * stats.norm.ppf(pABar)), pABar, nA, cAHat)

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *, generator: torch.Generator | None = None
    ) -> int:
        """PREDICT (Cohen et al. 2019): g(x), or ABSTAIN.

        With probability at least ``1 - alpha`` the returned class (if not ABSTAIN) equals g(x). Uses the
        two-sided binomial test of the top two counts (Hung & Fithian 2019), ``scipy.stats.binomtest``.
        """
        n = _check_count("n", n)
        check_probability("alpha", alpha)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        counts = self._sample_noise(x, n, batch_size, generator)
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
        if count1 + count2 == 0 or stats.binomtest(count1, count1 + count2, p=0.5).pvalue > alpha:
            return Smooth.ABSTAIN
        return int(top2[0])

    def _sample_noise(
        self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator, progress: bool = False
    ) -> np.ndarray:
        """Per-class counts of ``f(x + delta)`` over ``num`` Gaussian draws (``ndarray[int64]`` of length K).

        The noise is drawn in float32 from ``generator`` (on its device), ``batch_size`` copies at a time, into
        one reused buffer; the forward passes run under :func:`torch.inference_mode` in the model's dtype (float32
        for every paperlib model), and the counts accumulate as int64 on the model's device (one transfer at the
        end). Each copy's noise is a row of ``D`` values padded to a multiple of 16: torch's CPU Gaussian sampler
        turns uniforms into normals in blocks of 16 and redraws the tail of a draw whose size is not a multiple of
        16, so without the padding the noise would depend on how ``num`` is split into batches. Image sizes of the
        paper's datasets (784, 3072, 150528 values) are multiples of 16, where the padding changes nothing.
        """
        batch_size = _check_count("batch_size", batch_size)
        if x.ndim != 3:
            raise ConfigError(f"x must be one image [C, H, W]; got shape {tuple(x.shape)}")
        device = model_device(self.base_classifier)
        dtype = next((p.dtype for p in self.base_classifier.parameters() if p.is_floating_point()), x.dtype)
        xd = x.to(device=device, dtype=dtype)
        d = x.numel()
        padded = -(-d // 16) * 16
        buffer = torch.empty((min(batch_size, num), padded), device=generator.device, dtype=torch.float32)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        remaining = num
        with eval_mode(self.base_classifier), torch.inference_mode(), \
                tqdm(total=num, desc="noise samples", disable=not progress, leave=False) as bar:
            while remaining > 0:
                b = min(batch_size, remaining)
                remaining -= b
                noise = torch.randn((b, padded), generator=generator, out=buffer[:b])[:, :d]
                noise = noise.to(device=device, dtype=dtype).reshape(b, *x.shape)
                batch = xd.unsqueeze(0) + noise * self.sigma
                logits = self.base_classifier(batch)
                if check_logits(logits, b) != self.num_classes:
                    raise ConfigError(f"num_classes={self.num_classes} but the model returns logits for "
                                      f"{logits.shape[1]} classes")
                counts += torch.bincount(logits.argmax(dim=1), minlength=self.num_classes)[: self.num_classes]
                bar.update(b)
        return counts.cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Certification of a set of images, through the run store
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertifyConfig:
    """What :func:`run_certify` computes. Frozen; validated on construction (:class:`ConfigError`).

    Args:
        sigma: noise level (> 0, [0, 1] pixel units). Cohen et al. use 0.12, 0.25, 0.5, 1.0.
        n0: selection samples per image (Cohen et al.: 100).
        n: estimation samples per image (Cohen et al.: 100,000); ``n0 <= n``.
        alpha: failure probability (Cohen et al.: 0.001).
        batch_size: noisy copies per forward pass.
        n_images: images certified (drawn as ``sample_images(dataset, n_images, image_seed)``).
        image_seed: seed of that draw.
        radii: l2 radii at which certified error is reported (Table B.5).
        seed: noise seed; image ``i`` uses a generator seeded from ``(seed, i)``.
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    n_images: int = 500
    image_seed: int = 0
    radii: tuple[float, ...] = DEFAULT_SMOOTHING_RADII
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("sigma", self.sigma)
        n0, n = _check_count("n0", self.n0), _check_count("n", self.n)
        if n0 > n:
            raise ConfigError(f"n0={n0} must not exceed n={n}")
        check_probability("alpha", self.alpha)
        _check_count("batch_size", self.batch_size)
        _check_count("n_images", self.n_images)
        if isinstance(self.image_seed, bool) or not isinstance(self.image_seed, int) or self.image_seed < 0:
            raise ConfigError(f"image_seed={self.image_seed!r} must be a non-negative integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        radii = tuple(self.radii)
        if not radii:
            raise ConfigError("radii must not be empty")
        for r in radii:
            check_positive("radius", r)
        object.__setattr__(self, "radii", tuple(float(r) for r in radii))


def certify_configs(base: CertifyConfig, sigma: float | Sequence[float] | None = None,
                    n: int | None = None) -> list[CertifyConfig]:
    """``base`` with its noise level(s) and noise samples replaced where given (validated).

    Args:
        base: the config whose other fields are kept.
        sigma: one noise level, several (one config each, e.g. ``(0.25, 0.5, 1.0)`` for the envelope over
            sigma; each once), or None for ``base.sigma``.
        n: estimation samples per image, or None for ``base.n``.

    Returns:
        One :class:`~paperlib.bounds.smoothing.CertifyConfig` per sigma, in the order given; unchanged values
        give ``base`` itself (same hash, so a stored run loads).
    """
    if not isinstance(base, CertifyConfig):
        raise ConfigError(f"base must be a CertifyConfig, got {type(base).__name__}")
    if sigma is None:
        sigmas: list[Any] = [base.sigma]
    elif isinstance(sigma, (list, tuple)):
        sigmas = list(sigma)
        if not sigmas:
            raise ConfigError("sigma=[] is empty; give a noise level, a list of them, or None for the profile's")
    else:
        sigmas = [sigma]
    for s in sigmas:
        check_positive("sigma", s)
    if len(set(map(float, sigmas))) != len(sigmas):
        raise ConfigError(f"sigma={sigma!r} repeats a noise level; give each once")
    changes = {"n": n} if n is not None else {}
    return [dataclasses.replace(base, sigma=float(s), **changes) if (float(s) != base.sigma or changes) else base
            for s in sigmas]


def image_generator(seed: int, image: int) -> torch.Generator:
    """The noise generator of one image: seeded from ``(seed, image)`` only (batch- and order-invariant)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(image)]).generate_state(1)[0]))


@dataclass
class CertifyResult:
    """What :func:`run_certify` returns (and writes).

    Attributes:
        table: one row per image (``certify.csv``): image, label, prediction (-1 = abstain), correct, radius,
            pABar, nA, seconds.
        certified: certified % error per radius (:func:`~paperlib.bounds.smoothing.certified_error_table`;
            ``certified_error.csv``):
            radius, smoothing_error (NaN beyond what ``n`` can certify), beyond_n.
        metrics: summary numbers (``metrics.json``).
        config: the :class:`~paperlib.bounds.smoothing.CertifyConfig` the certificates were computed with (None if
            unknown).
    """

    table: pd.DataFrame
    certified: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)
    config: CertifyConfig | None = None


def certified_error_table(table: pd.DataFrame, radii: Sequence[float], *, n: int, alpha: float,
                          sigma: float) -> pd.DataFrame:
    """Certified % error of the smoothed classifier at each radius, radii that ``n`` samples cannot reach flagged.

    Args:
        table: per-image certificates with columns ``radius`` (l2, [0, 1] pixel units) and ``correct``
            (``certify.csv``); an abstention is ``correct = False``, so it counts as an error at every radius.
        radii: l2 radii (> 0).
        n, alpha, sigma: the certificates' estimation samples, failure probability and noise level.

    Returns:
        One row per radius: ``radius``; ``smoothing_error``, ``100 * mean(not (correct and radius_i >= r))``,
        or NaN when ``r > max_certifiable_radius(n, alpha, sigma)`` (every image would count as an error there by
        construction of the certificate, whatever the model: not a measurement); ``beyond_n``, True exactly for
        those radii.
    """
    r_max = max_certifiable_radius(n, alpha, sigma)
    radii = [float(check_positive("radius", r)) for r in radii]
    errs = certified_error(table["radius"].to_numpy(), table["correct"].to_numpy(bool), radii)
    beyond = [r > r_max for r in radii]
    return pd.DataFrame({"radius": radii,
                         "smoothing_error": [math.nan if b else errs[r] for r, b in zip(radii, beyond)],
                         "beyond_n": beyond})


def smoothing_envelope(results: Sequence[CertifyResult]) -> pd.DataFrame:
    """Certified % error at each radius for each sigma, and its envelope: the minimum over sigma.

    Cohen et al. report, at each radius, the best noise level's certified error. A sigma whose ``n`` cannot
    reach a radius (NaN, see :func:`~paperlib.bounds.smoothing.certified_error_table`) has 100% error there by
    construction, so it never lowers the minimum and is left out of it; a radius no sigma reaches is NaN with
    ``beyond_n = True``.

    Args:
        results: one :class:`~paperlib.bounds.smoothing.CertifyResult` per sigma (distinct sigmas), all on the
            same radii and images.

    Returns:
        One row per radius: ``radius``; ``sigma=<s>`` for each sigma (ascending); ``envelope`` (the minimum
        over the sigmas that reach the radius); ``best_sigma`` (the sigma attaining it; the smallest on ties,
        NaN where none reaches); ``beyond_n`` (no sigma reaches the radius).
    """
    results = list(results)
    if not results:
        raise ConfigError("smoothing_envelope needs at least one CertifyResult")
    sigmas = [float(r.metrics.get("sigma", r.config.sigma if r.config is not None else math.nan)) for r in results]
    if any(math.isnan(s) for s in sigmas) or len(set(sigmas)) != len(sigmas):
        raise ConfigError(f"smoothing_envelope needs one result per distinct sigma; got sigmas {sigmas}")
    radii = [tuple(r.certified["radius"].astype(float)) for r in results]
    if any(rr != radii[0] for rr in radii):
        raise ConfigError(f"every sigma must be certified at the same radii; got {sorted(set(radii))}")
    for r in results:
        if "beyond_n" not in r.certified.columns:
            raise ConfigError("certified tables need a beyond_n column (certified_error_table); got columns "
                              f"{list(r.certified.columns)}")
    order = np.argsort(sigmas, kind="stable")
    out = pd.DataFrame({"radius": list(radii[0])})
    errors = np.column_stack([results[i].certified["smoothing_error"].to_numpy(float) for i in order])
    for j, i in enumerate(order):
        out[f"sigma={sigmas[i]:g}"] = errors[:, j]
    reached = ~np.isnan(errors)
    masked = np.where(reached, errors, np.inf)
    best = masked.argmin(axis=1)  # first minimum: the smallest sigma on ties
    any_reached = reached.any(axis=1)
    out["envelope"] = np.where(any_reached, masked[np.arange(len(out)), best], np.nan)
    out["best_sigma"] = np.where(any_reached, np.asarray(sigmas)[order][best], np.nan)
    out["beyond_n"] = ~any_reached
    return out


def _summarize(table: pd.DataFrame, cfg: CertifyConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    cert = certified_error_table(table, cfg.radii, n=cfg.n, alpha=cfg.alpha, sigma=cfg.sigma)
    errs = certified_error(table["radius"].to_numpy(), table["correct"].to_numpy(bool), cfg.radii)
    metrics: dict[str, Any] = {
        "n_images": int(len(table)),
        "sigma": cfg.sigma,
        "n": cfg.n,
        "alpha": cfg.alpha,
        "max_certifiable_radius": max_certifiable_radius(cfg.n, cfg.alpha, cfg.sigma),
        "abstain_rate": float(100.0 * (table["prediction"] == Smooth.ABSTAIN).mean()),
        "smoothed_error": float(100.0 * (1.0 - table["correct"].mean())),
        "mean_radius": float(table["radius"].where(table["correct"], 0.0).mean()),
        "seconds_per_image": float(table["seconds"].mean()),
    }
    # certified_error@r is the raw count (100 beyond n by construction, as before this flag existed);
    # beyond_n@r says which radii those are. Tables show certified_error_table's NaN there instead.
    for (r, e), b in zip(errs.items(), cert["beyond_n"]):
        metrics[f"certified_error@{r:g}"] = e
        metrics[f"beyond_n@{r:g}"] = bool(b)
    return cert, metrics


def load_certify(run: Any) -> CertifyResult:
    """Load a finished certification run (``certify.csv``, ``metrics.json``, its ``config.json``).

    The ``certified`` table is rebuilt from ``certify.csv`` and the stored config with
    :func:`~paperlib.bounds.smoothing.certified_error_table`, so runs written before the ``beyond_n`` flag
    existed (whose ``certified_error.csv`` holds 100% beyond ``n``) read like new ones.
    """
    if run.status != "finished":
        raise ConfigError(f"certification run {run.path} is {run.status}, not finished; run `paperlib certify` first")
    table = run.read_table("certify.csv")
    table["correct"] = table["correct"].astype(bool)
    stored = run.stored_config()
    cfg = certify_config_from_dict(stored["config"]) if stored and stored.get("type") == "CertifyConfig" else None
    if cfg is not None:
        certified = certified_error_table(table, cfg.radii, n=cfg.n, alpha=cfg.alpha, sigma=cfg.sigma)
    else:
        certified = run.read_table("certified_error.csv")
    return CertifyResult(table=table, certified=certified,
                         metrics=run.read_json("metrics.json") if run.exists("metrics.json") else {}, config=cfg)


def run_certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor | Sequence[int],
    cfg: CertifyConfig,
    run: Any = None,
    *,
    num_classes: int | None = None,
    force: bool = False,
    progress: bool = True,
    checkpoint_every: float = 30.0,
) -> CertifyResult:
    """CERTIFY every image and report certified error vs l2 radius.

    Args:
        model: base classifier (logits on [0, 1] inputs).
        x: images ``[n, C, H, W]``, finite and in [0, 1]; y: labels ``[n]`` in ``[0, K)``; idx: dataset indices
            ``[n]`` (the ``image`` column and the noise seed of each image).
        cfg: :class:`CertifyConfig` (``cfg.n_images`` must equal ``n``).
        run: a :class:`paperlib.runs.Run` for ``cfg`` or None. A finished run is loaded; a partial one resumes
            from its checkpoint (written at most every ``checkpoint_every`` seconds and at the end).
        num_classes: K (default: read from one forward pass); the model's logits must be ``[B, K]``.
        force: recompute a finished run.
        progress: a tqdm bar over images.
    """
    if not isinstance(cfg, CertifyConfig):
        raise ConfigError(f"cfg must be a CertifyConfig, got {type(cfg).__name__}")
    check_unit_images(x)
    idx_t = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
    if not (x.shape[0] == getattr(y, "shape", (None,))[0] == idx_t.shape[0]):
        raise ConfigError("x, y and idx must have one entry per image")
    if x.shape[0] != cfg.n_images:
        raise ConfigError(f"got {x.shape[0]} images but the config says n_images={cfg.n_images}")
    if num_classes is None:
        num_classes = model_classes(model, x)  # the model's logits are checked on every noise batch
    check_labels(y, _check_count("num_classes", num_classes))
    smooth = Smooth(model, num_classes, cfg.sigma)

    def compute(r: Any) -> CertifyResult:
        rows: list[dict[str, Any]] = []
        state = r.load_checkpoint() if r is not None else None
        if state is not None and state.get("kind") == "certify":
            rows = list(state["rows"])
        last = time.monotonic()
        for i in tqdm(range(len(rows), x.shape[0]), desc=f"certify sigma={cfg.sigma:g}", disable=not progress,
                      initial=len(rows), total=x.shape[0]):
            t0 = time.perf_counter()
            c = smooth.certify(x[i], cfg.n0, cfg.n, cfg.alpha, cfg.batch_size,
                               generator=image_generator(cfg.seed, int(idx_t[i])))
            rows.append({
                "image": int(idx_t[i]), "label": int(y[i]), "prediction": int(c.prediction),
                "correct": bool(c.prediction == int(y[i])), "radius": float(c.radius), "pABar": float(c.pABar),
                "nA": int(c.nA), "seconds": time.perf_counter() - t0,
            })
            if r is not None and (time.monotonic() - last > checkpoint_every or i == x.shape[0] - 1):
                r.save_checkpoint({"kind": "certify", "rows": rows})
                last = time.monotonic()
        table = pd.DataFrame(rows, columns=["image", "label", "prediction", "correct", "radius", "pABar", "nA",
                                            "seconds"])
        cert, metrics = _summarize(table, cfg)
        return CertifyResult(table=table, certified=cert, metrics=metrics, config=cfg)

    if run is None:
        return compute(None)

    def compute_and_write(r: Any) -> CertifyResult:
        r.log(f"certify: {x.shape[0]} images, sigma {cfg.sigma}, n {cfg.n}")
        result = compute(r)
        r.write_table("certify.csv", result.table)
        r.write_table("certified_error.csv", result.certified)
        return result

    result = run_or_load(run, cfg, compute_and_write, metrics=lambda res: res.metrics, load=load_certify,
                         force=force)
    if not np.array_equal(result.table["image"].to_numpy(), idx_t.numpy()):
        raise ConfigError(f"{run.path} holds certificates for other images than the ones given; use force")
    return result


#: A certify sub-run with at least this many noise samples is named ``certify-sigma<s>-n<n>``, so the
#: certification grid sits beside the profile's quick ``certify-sigma<s>`` runs instead of replacing them.
CERTIFY_NAME_N = 10_000


def certify_grid_configs(profile: str) -> dict[float, CertifyConfig]:
    """The certification grid of a profile: ``{sigma: CertifyConfig}`` for each sigma of
    :data:`~paperlib.evaluation.CERTIFY_SIGMAS`, the profile's certify config with the grid's ``n`` and
    ``n_images`` (the budgets: :func:`~paperlib.evaluation.certify_grid_budgets`)."""
    return {s: CertifyConfig(**kw) for s, kw in certify_grid_budgets(profile).items()}


def certify_run_name(cfg: CertifyConfig) -> str:
    """The sub-run name of a certification inside a trained model's run: ``certify-sigma<sigma>``, or
    ``certify-sigma<sigma>-n<n>`` when ``n`` is at least :data:`~paperlib.bounds.smoothing.CERTIFY_NAME_N`."""
    return f"certify-sigma{cfg.sigma:g}" + (f"-n{cfg.n}" if cfg.n >= CERTIFY_NAME_N else "")


def certify_config_from_dict(data: dict[str, Any]) -> CertifyConfig:
    """Rebuild a :class:`CertifyConfig` from its stored dict."""
    return config_from_dict(CertifyConfig, data)


#: The certify stage: sub-runs ``certify-sigma<sigma>[-n<n>]`` of a trained model's run.
STAGE = register_stage(Stage("certify", CertifyConfig, certify_run_name, load_certify))
