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
certified, nor on resuming. "Certified error at radius r" counts abstentions and wrong answers as errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from paperlib.config import (
    ConfigError,
    check_labels,
    check_logits,
    check_positive,
    check_probability,
    check_unit_images,
    config_from_dict,
    config_hash,
)
from paperlib.models import model_classes
from paperlib.bounds.lipschitz import certified_error
from paperlib.bounds.statistics import eval_mode, model_device

__all__ = [
    "Smooth",
    "Certificate",
    "lower_confidence_bound",
    "max_certifiable_radius",
    "CertifyConfig",
    "CertifyResult",
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
        """Per-class counts of ``f(x + delta)`` over ``num`` Gaussian draws (``ndarray[int]`` of length K)."""
        batch_size = _check_count("batch_size", batch_size)
        if x.ndim != 3:
            raise ConfigError(f"x must be one image [C, H, W]; got shape {tuple(x.shape)}")
        from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

        device = model_device(self.base_classifier)
        dtype = next((p.dtype for p in self.base_classifier.parameters() if p.is_floating_point()), x.dtype)
        xd = x.to(device=device, dtype=dtype)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        remaining = num
        with eval_mode(self.base_classifier), torch.no_grad(), \
                tqdm(total=num, desc="noise samples", disable=not progress, leave=False) as bar:
            while remaining > 0:
                b = min(batch_size, remaining)
                remaining -= b
                noise = torch.randn((b, *x.shape), generator=generator, device=generator.device, dtype=dtype)
                batch = xd.unsqueeze(0) + noise.to(device) * self.sigma
                logits = self.base_classifier(batch)
                if check_logits(logits, b) != self.num_classes:
                    raise ConfigError(f"num_classes={self.num_classes} but the model returns logits for "
                                      f"{logits.shape[1]} classes")
                predictions = logits.argmax(dim=1)
                counts += torch.bincount(predictions, minlength=self.num_classes).cpu().numpy()[: self.num_classes]
                bar.update(b)
        return counts


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


def image_generator(seed: int, image: int) -> torch.Generator:
    """The noise generator of one image: seeded from ``(seed, image)`` only (batch- and order-invariant)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(image)]).generate_state(1)[0]))


@dataclass
class CertifyResult:
    """What :func:`run_certify` returns (and writes).

    Attributes:
        table: one row per image (``certify.csv``): image, label, prediction (-1 = abstain), correct, radius,
            pABar, nA, seconds.
        certified: certified % error per radius (``certified_error.csv``): radius, smoothing_error.
        metrics: summary numbers (``metrics.json``).
    """

    table: pd.DataFrame
    certified: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def _summarize(table: pd.DataFrame, cfg: CertifyConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    errs = certified_error(table["radius"].to_numpy(), table["correct"].to_numpy(bool), cfg.radii)
    cert = pd.DataFrame({"radius": list(errs), "smoothing_error": list(errs.values())})
    metrics: dict[str, Any] = {
        "n_images": int(len(table)),
        "sigma": cfg.sigma,
        "n": cfg.n,
        "abstain_rate": float(100.0 * (table["prediction"] == Smooth.ABSTAIN).mean()),
        "smoothed_error": float(100.0 * (1.0 - table["correct"].mean())),
        "mean_radius": float(table["radius"].where(table["correct"], 0.0).mean()),
        "seconds_per_image": float(table["seconds"].mean()),
    }
    for r, e in errs.items():
        metrics[f"certified_error@{r:g}"] = e
    return cert, metrics


def load_certify(run: Any) -> CertifyResult:
    """Load a finished certification run (``certify.csv``, ``certified_error.csv``, ``metrics.json``)."""
    if run.status != "finished":
        raise ConfigError(f"certification run {run.path} is {run.status}, not finished; run `paperlib certify` first")
    table = run.read_table("certify.csv")
    table["correct"] = table["correct"].astype(bool)
    return CertifyResult(table=table, certified=run.read_table("certified_error.csv"),
                         metrics=run.read_json("metrics.json") if run.exists("metrics.json") else {})


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
        from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

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
        return CertifyResult(table=table, certified=cert, metrics=metrics)

    if run is None:
        return compute(None)
    from paperlib.runs import load_or_run

    if getattr(run, "hash", None) != config_hash(cfg):
        raise ConfigError(f"run {getattr(run, 'path', run)} was made for another config than cfg; "
                          "create it with this config (e.g. model_run.subrun(name, cfg))")

    holder: dict[str, CertifyResult] = {}

    def compute_and_write(r: Any) -> dict[str, Any]:
        r.log(f"certify: {x.shape[0]} images, sigma {cfg.sigma}, n {cfg.n}")
        result = compute(r)
        r.write_table("certify.csv", result.table)
        r.write_table("certified_error.csv", result.certified)
        holder["result"] = result
        return result.metrics

    load_or_run(run, compute_and_write, force=force)
    result = holder.get("result") or load_certify(run)
    if not np.array_equal(result.table["image"].to_numpy(), idx_t.numpy()):
        raise ConfigError(f"{run.path} holds certificates for other images than the ones given; use force")
    return result


def certify_config_from_dict(data: dict[str, Any]) -> CertifyConfig:
    """Rebuild a :class:`CertifyConfig` from its stored dict."""
    return config_from_dict(CertifyConfig, data)
