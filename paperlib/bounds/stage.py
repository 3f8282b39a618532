"""The bound stage: L-bound, omega(eps), omega-bound and certified error of one model in one norm, in the run store.

:func:`run_bounds` does all of Proposition 2.2 for one model and one norm from a :class:`BoundConfig`:

1. per image, the evaluation loss and its dual gradient norm in one batched pass
   (:func:`paperlib.bounds.statistics.image_statistics`);
2. the Lipschitz constant ``L`` by both estimators, and the L-bound (:mod:`paperlib.bounds.lipschitz`);
3. ``omega(eps)`` at every radius of the config's grid, from the paper's uniform samples and, when asked, the
   adversarial ascent (:mod:`paperlib.bounds.omega`, :mod:`paperlib.bounds.adversarial`), floored at 0 and made
   non-decreasing along the grid; the omega distance of every image, the grid extended while images are still
   certified at its end when asked; when asked, each image's own (per-image) omega-bound refined from above,
   starting from the point that made it fail (``BoundConfig.omega_refine_steps``);
4. the certified error of each bound at the reporting radii (:func:`paperlib.metrics.certified_error`) and the
   summary numbers of ``metrics.json``.

It writes ``bounds.csv`` (one row per image), ``evt.json`` (every fit), ``certified_error.csv`` and
``metrics.json`` to a sub-run ``bounds-<norm>`` of the trained model's run (:func:`bounds_run_name`, registered
with :mod:`paperlib.stages`); a finished run with the same config is loaded instead of recomputed
(:func:`load_bounds`), a partial one resumes from its checkpoint (one per grid radius and refinement round).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

from paperlib.config import (
    OMIT_AT_DEFAULT,
    ConfigError,
    check_choice,
    check_int,
    check_linf_eps,
    check_positive,
    check_probability,
    check_unit_images,
    config_from_dict,
    normalize_norm,
)
from paperlib.losses import LOSSES, MARGIN_L0, get_loss
from paperlib.bounds.adversarial import ascent_passes, ascent_residuals
from paperlib.bounds.evt import GEVFit, estimate_label, estimate_supremum
from paperlib.bounds.lipschitz import ball_gradient_norms, l_bound, lipschitz_constant
from paperlib.bounds.omega import box_diameter, eps_grid, estimate_omega, first_order_residuals, omega_distance
from paperlib.bounds.sampling import make_generator
from paperlib.bounds.statistics import ImageStatistics, image_statistics
from paperlib.metrics import certified_error
from paperlib.stages import Stage, register_stage, run_or_load

__all__ = [
    "bounds_run_name",
    "BoundConfig",
    "BoundsResult",
    "default_radii",
    "fits_accepted",
    "run_bounds",
    "load_bounds",
]

#: Radii at which certified error is reported by default (Tables 1, B.6; B.3 needs omega(0.5), omega(1.0)).
DEFAULT_RADII: dict[str, tuple[float, ...]] = {
    "l2": (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
    "linf": (2 / 255, 8 / 255),
}
#: Largest radius of the omega-distance grid by default.
DEFAULT_EPS_MAX: dict[str, float] = {"l2": 2.0, "linf": 32 / 255}


def default_radii(norm: str) -> tuple[float, ...]:
    """The reporting radii of ``norm`` used when a config gives none."""
    return DEFAULT_RADII[normalize_norm(norm)]


def _int_field(cfg: Any, name: str, minimum: int) -> None:
    """Check the integer field ``name`` of a frozen config (:func:`paperlib.config.check_int`) and store it as an
    ``int``."""
    object.__setattr__(cfg, name, check_int(name, getattr(cfg, name), minimum))


@dataclass(frozen=True)
class BoundConfig:
    """What :func:`run_bounds` computes. Frozen; validated on construction (:class:`ConfigError`).

    Args:
        norm: attack norm, 'l2' or 'linf' (gradients use its dual: l2 or l1).
        n_images: number of images bounded (the same draw as the attack suite's: ``sample_images(n, seed)``).
        image_seed: seed of that draw.
        loss: evaluation loss, 'margin' (the paper's, on probabilities) or 'logit-margin'.
        top_k: top-k variant of the loss (5 for ImageNet's top-5 error).
        lipschitz: which L the ``l_bound`` column uses: 'evt' (the paper) or 'empirical-max' (authors' code);
            both are always computed and stored.
        lipschitz_batch: images per batch maximum for the EVT estimate of L.
        omega_samples: uniform perturbations per image and radius for omega(eps).
        omega_batch_images: images per batch maximum for the EVT estimate of omega(eps).
        omega_images: estimate omega from the first ``omega_images`` images only (None: all of them).
        omega_method: 'evt' (the paper) or 'empirical-max'.
        eps_max: largest radius of the omega-distance grid (None: 2.0 in l2, 32/255 in linf; at most 1 in linf).
        grid_size: number of evenly spaced grid radii (the reporting radii are added to the grid).
        radii: radii at which certified error is reported (None: :data:`DEFAULT_RADII` of the norm).
        tail_prob: EVT tail probability ``p`` (estimate = the fitted ``1 - p`` quantile; the paper's 0.001).
        ks_alpha: reject a GEV fit when its Kolmogorov-Smirnov p-value is below this (use the empirical max).
        min_maxima: fewest batch maxima for a GEV fit.
        floor_at_max: never estimate a supremum below the largest observed sample.
        clip: keep perturbed points in [0, 1] when sampling the residual.
        batch_size: images per forward/backward pass.
        seed: seed of every random draw (perturbations, batch shuffles).

    Other Parameters:
        omega_ascent_steps: > 0 adds the *adversarial* omega estimator (``paperlib.bounds.adversarial``):
            projected gradient ascent on the first-order residual, this many steps from ``omega_ascent_starts``
            starts per image and radius, pooled with the random samples; reported beside the paper's random
            estimator (``omega_distance_adversarial``, ``evt.json['omega_adversarial']``). 0: the paper's only.
        omega_ascent_starts: starts of the ascent per image and radius (see the adversarial module).
        omega_per_image: also bound every image with its own adversarial omega (the largest residual found
            around that image, an empirical maximum; ``omega_distance_adversarial_per_image``).
        omega_ascent_warm: start the ascent at each radius of the grid (in increasing order) from the best point
            it found at the previous radius, scaled out to the new one, in place of one random start
            (``ascent_residuals(warm=...)``): the same cost, a stronger per-image omega.
        omega_refine_steps: > 0 refines every image's own omega-bound from above after the grid: where the bound
            first fails at grid radius ``r_j``, the ascent point that made it fail is projected onto the ball of
            the next smaller radius ``r_{j-1}`` and ascended this many more steps there (one start); if the
            residual found makes the bound fail at ``r_{j-1}`` too, the image moves down one radius and the
            refinement repeats from the new point, else it stops. Every residual is attained at a feasible
            point, so the per-image omega stays a lower bound on the true one; the shared (supremum) estimate
            at each radius is raised to at least the largest refined residual there.
        evt_maxima: None: batch maxima over ``lipschitz_batch`` / ``omega_batch_images`` images (6 maxima at
            60 images, too few for a fit). A number m: pool every sample (all images, all perturbations / all
            gradient samples) and take maxima of batches of ``n_samples // m`` samples, so at least m maxima
            are fitted whatever the image count.
        lipschitz_samples: dual gradient norms per image for L: at the image and at ``lipschitz_samples - 1``
            points uniform in the ``eps_max``-ball around it (clipped to [0, 1]). 1: at the image only.
        omega_extend: None: the omega-distance search stops at ``eps_max`` (an image certified there gets
            ``eps_max``). A factor q > 1: radii ``eps_max * q^j`` are added (omega estimated at each) while any
            image is still certified at the largest radius, up to the diameter of the [0, 1] box in the norm
            (``sqrt(N)`` in l2, 1 in linf), beyond which no adversarial can exist. Either way the table states
            per image whether its distance is the largest radius searched (``omega_distance_at_cap``) and that
            radius (``omega_search_cap``).
        evt_tail: 'any': the GEV shape is free (the fit may have a heavy Frechet tail); 'bounded': only bounded
            tails are fitted (reverse Weibull, as CLEVER does), since L and omega of the probability margin loss
            are finite. Measured on 10 images of runs/fmnist/fd-l2-lam1-h0.01 with pooled samples, free fits had
            Frechet shapes and 0.999 quantiles up to 2988 against largest residuals below 2.

    The Other Parameters were added after runs were stored. At their defaults the computation is the one
    before they existed, and they are left out of the config's dict and hash (``config.OMIT_AT_DEFAULT``), so
    every stored run keeps its hash and loads.
    """

    norm: str = "l2"
    n_images: int = 1000
    image_seed: int = 0
    loss: str = "margin"
    top_k: int = 1
    lipschitz: str = "evt"
    lipschitz_batch: int = 10
    omega_samples: int = 16
    omega_batch_images: int = 10
    omega_images: int | None = None
    omega_method: str = "evt"
    eps_max: float | None = None
    grid_size: int = 20
    radii: tuple[float, ...] | None = None
    tail_prob: float = 1e-3
    ks_alpha: float = 1e-3
    min_maxima: int = 10
    floor_at_max: bool = True
    clip: bool = True
    batch_size: int = 250
    seed: int = 0
    # Added after runs were stored: left out of the hash while at their default (see config.OMIT_AT_DEFAULT).
    omega_ascent_steps: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    omega_ascent_starts: int = field(default=4, metadata={OMIT_AT_DEFAULT: True})
    omega_per_image: bool = field(default=False, metadata={OMIT_AT_DEFAULT: True})
    omega_ascent_warm: bool = field(default=False, metadata={OMIT_AT_DEFAULT: True})
    omega_refine_steps: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    evt_maxima: int | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    lipschitz_samples: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    omega_extend: float | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    evt_tail: str = field(default="any", metadata={OMIT_AT_DEFAULT: True})

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", normalize_norm(self.norm))
        _int_field(self, "n_images", 1)
        _int_field(self, "image_seed", 0)
        check_choice("loss", self.loss, tuple(LOSSES))
        _int_field(self, "top_k", 1)
        check_choice("lipschitz", self.lipschitz, ("evt", "empirical-max"))
        _int_field(self, "lipschitz_batch", 1)
        _int_field(self, "omega_samples", 1)
        _int_field(self, "omega_batch_images", 1)
        if self.omega_images is not None:
            _int_field(self, "omega_images", 1)
        check_choice("omega_method", self.omega_method, ("evt", "empirical-max"))
        if self.eps_max is not None:
            check_positive("eps_max", self.eps_max)
            check_linf_eps("eps_max", self.eps_max, self.norm)
        _int_field(self, "grid_size", 1)
        if self.radii is not None:
            radii = tuple(float(r) if not isinstance(r, bool) else r for r in self.radii)
            if not radii:
                raise ConfigError("radii must not be empty (or None for the defaults)")
            for r in radii:
                check_positive("radius", r)
                check_linf_eps("radius", r, self.norm)
            object.__setattr__(self, "radii", radii)
        check_probability("tail_prob", self.tail_prob)
        check_probability("ks_alpha", self.ks_alpha)
        _int_field(self, "min_maxima", 3)
        for name in ("floor_at_max", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        _int_field(self, "batch_size", 1)
        _int_field(self, "seed", 0)
        _int_field(self, "omega_ascent_steps", 0)
        _int_field(self, "omega_ascent_starts", 1)
        if not isinstance(self.omega_per_image, bool):
            raise ConfigError(f"omega_per_image={self.omega_per_image!r} must be true or false")
        if self.omega_per_image and self.omega_ascent_steps == 0:
            raise ConfigError("omega_per_image=True needs the adversarial estimator (omega_ascent_steps > 0)")
        if not isinstance(self.omega_ascent_warm, bool):
            raise ConfigError(f"omega_ascent_warm={self.omega_ascent_warm!r} must be true or false")
        if self.omega_ascent_warm and self.omega_ascent_steps == 0:
            raise ConfigError("omega_ascent_warm=True needs the adversarial estimator (omega_ascent_steps > 0)")
        _int_field(self, "omega_refine_steps", 0)
        if self.omega_refine_steps and not self.omega_per_image:
            raise ConfigError("omega_refine_steps > 0 refines the per-image omega: it needs omega_per_image=True")
        if self.evt_maxima is not None:
            _int_field(self, "evt_maxima", 3)
        _int_field(self, "lipschitz_samples", 1)
        if self.omega_extend is not None:
            if isinstance(self.omega_extend, bool) or not isinstance(self.omega_extend, (int, float)) \
                    or not math.isfinite(self.omega_extend) or not self.omega_extend > 1:
                raise ConfigError(f"omega_extend={self.omega_extend!r} must be a number > 1 (or None: no extension)")
            object.__setattr__(self, "omega_extend", float(self.omega_extend))
        check_choice("evt_tail", self.evt_tail, ("any", "bounded"))

    @property
    def adversarial(self) -> bool:
        """Whether the adversarial omega estimator runs beside the paper's."""
        return self.omega_ascent_steps > 0

    @property
    def resolved_radii(self) -> tuple[float, ...]:
        return self.radii if self.radii is not None else default_radii(self.norm)

    @property
    def resolved_eps_max(self) -> float:
        return self.eps_max if self.eps_max is not None else DEFAULT_EPS_MAX[self.norm]

    def grid(self) -> np.ndarray:
        """The radii at which omega is estimated (even grid + reporting radii)."""
        extra = list(self.resolved_radii)
        if self.norm == "l2":
            extra += [0.5, 1.0]  # Table B.3 reports omega(0.5) and omega(1.0) in l2
        return eps_grid(self.resolved_eps_max, self.grid_size, extra)


@dataclass
class BoundsResult:
    """What :func:`run_bounds` returns (and writes).

    Attributes:
        table: one row per image (``bounds.csv``): image, label, prediction, correct, loss, grad_norm_l2,
            grad_norm_l1, grad_norm (the dual norm of ``norm``), l_bound_evt, l_bound_empirical_max,
            l_bound (the config's choice), omega_distance, norm.
        evt: every extreme-value fit (``evt.json``): ``lipschitz`` {'evt', 'empirical-max'} and ``omega``
            (one entry per grid radius with the raw fit and the value used).
        certified: certified % error per reporting radius for both bounds (``certified_error.csv``).
        metrics: summary numbers (``metrics.json``).
    """

    table: pd.DataFrame
    evt: dict[str, Any]
    certified: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)

    def omega(self) -> dict[float, float]:
        """Radius -> omega(eps) used in the bound."""
        return {float(e["eps"]): float(e["omega"]) for e in self.evt["omega"]}


def _check_inputs(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | Sequence[int],
                  cfg: BoundConfig | Any) -> torch.Tensor:
    """Images finite and in [0, 1], one label and one index per image (the labels are checked against the
    model's logits when the bounds are computed)."""
    check_unit_images(x)
    idx_t = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
    if not (x.shape[0] == getattr(y, "shape", (None,))[0] == idx_t.shape[0]):
        raise ConfigError(f"x ({x.shape[0]}), y ({getattr(y, 'shape', [None])[0]}) and idx ({idx_t.shape[0]}) "
                          "must have one entry per image")
    if x.shape[0] != cfg.n_images:
        raise ConfigError(f"got {x.shape[0]} images but the config says n_images={cfg.n_images}")
    return idx_t


def _seeded(*words: int) -> torch.Generator:
    return make_generator(int(np.random.SeedSequence(list(words)).generate_state(1)[0]))


def _compute_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, cfg: BoundConfig,
                    run: Any = None, progress: bool = True) -> BoundsResult:
    loss_fn = lambda logits, labels: get_loss(cfg.loss)(logits, labels, top_k=cfg.top_k)  # noqa: E731
    cost: dict[str, dict[str, float]] = {}

    def charge(stage: str, seconds: float, images: int, fb: float = 0.0, fwd: float = 0.0) -> None:
        c = cost.setdefault(stage, {"seconds": 0.0, "images": images, "forward_backward_per_image": 0.0,
                                    "forward_per_image": 0.0})
        c["seconds"] += seconds
        c["forward_backward_per_image"] += fb
        c["forward_per_image"] += fwd

    t0 = time.perf_counter()
    stats = image_statistics(model, x, y, batch_size=cfg.batch_size, loss_fn=loss_fn, progress=progress)
    charge("statistics", time.perf_counter() - t0, x.shape[0], fb=1)
    gnorm = stats.grad_norm(cfg.norm)
    fit_kw: dict[str, Any] = dict(tail_prob=cfg.tail_prob, ks_alpha=cfg.ks_alpha, min_maxima=cfg.min_maxima,
                                  floor_at_max=cfg.floor_at_max, seed=cfg.seed)
    if cfg.evt_tail == "bounded":
        fit_kw["bounded"] = True
    lip_values: torch.Tensor = gnorm
    if cfg.lipschitz_samples > 1:
        t0 = time.perf_counter()
        extra = ball_gradient_norms(model, x, y, cfg.resolved_eps_max, cfg.norm, n_samples=cfg.lipschitz_samples - 1,
                                    generator=_seeded(cfg.seed, 2 ** 31 - 1), loss_fn=loss_fn, clip=cfg.clip,
                                    batch_size=cfg.batch_size)
        charge("lipschitz_samples", time.perf_counter() - t0, x.shape[0], fb=cfg.lipschitz_samples - 1)
        lip_values = torch.cat([gnorm.double().view(-1, 1), extra], dim=1).reshape(-1)
    lip_batch = cfg.lipschitz_batch if cfg.evt_maxima is None else max(1, lip_values.numel() // cfg.evt_maxima)
    lip = {m: lipschitz_constant(lip_values, method=m, batch_size=lip_batch, **fit_kw)
           for m in ("evt", "empirical-max")}

    grid = [float(e) for e in cfg.grid()]
    n_omega = x.shape[0] if cfg.omega_images is None else min(cfg.omega_images, x.shape[0])
    xo, yo = x[:n_omega], y[:n_omega]
    state = run.load_checkpoint() if run is not None else None
    records: dict[int, dict[str, Any]] = {}
    # The refinement from above (omega_refine_steps): per image the first grid index where its own omega-bound
    # fails (-1: none yet) and the ascent point that made it fail; per radius the refined residuals (-inf: not
    # refined there) and which images were refined there.
    refuted: dict[str, Any] = {"k": torch.full((n_omega,), -1, dtype=torch.long), "v": None}
    refine: dict[int, torch.Tensor] = {}
    refined: dict[int, torch.Tensor] = {}
    if state is not None and state.get("kind") == "bounds-omega":
        for j, k in enumerate(state["done"]):
            rec: dict[str, Any] = {"random": (state["random"][j] if state.get("random") is not None
                                              else state["maxima"][j].view(-1, 1))}
            if state.get("eps") is not None:
                rec["eps"] = float(state["eps"][j])
            if state.get("ascent") is not None and state["ascent"][j] is not None:
                rec["ascent"] = state["ascent"][j]
            records[int(k)] = rec
        if state.get("ascent_best") is not None:  # the warm start of the next radius (only the last is kept)
            records[int(state["ascent_best_k"])]["ascent_best"] = state["ascent_best"]
        if state.get("refuted_k") is not None:
            refuted["k"], refuted["v"] = state["refuted_k"], state["refuted_v"]
            refine.update({int(k): v for k, v in state["refine"].items()})
            refined.update({int(k): v for k, v in state["refined"].items()})

    def save() -> None:
        if run is None:
            return
        done = sorted(records)
        run.save_checkpoint({
            "kind": "bounds-omega", "done": done, "maxima": [records[i]["random"].max(dim=1).values for i in done],
            "random": [records[i]["random"] for i in done], "eps": [records[i].get("eps") for i in done],
            "ascent": [records[i].get("ascent") for i in done],
            "ascent_best_k": done[-1] if done else None,
            "ascent_best": records[done[-1]].get("ascent_best") if done else None,
            **({"refuted_k": refuted["k"], "refuted_v": refuted["v"], "refine": refine, "refined": refined}
               if cfg.omega_refine_steps else {}),
        })

    def measure(k: int, eps: float) -> None:
        rec = records.get(k)
        if rec is not None and abs(rec.get("eps", eps) - eps) <= 1e-12 * max(1.0, eps) \
                and (not cfg.adversarial or "ascent" in rec):
            return
        # One generator per radius, seeded by (seed, k): a resumed run draws exactly the same perturbations.
        t = time.perf_counter()
        res = first_order_residuals(model, xo, yo, float(eps), cfg.norm, n_samples=cfg.omega_samples,
                                    generator=_seeded(cfg.seed, k), loss_fn=loss_fn, clip=cfg.clip,
                                    batch_size=cfg.batch_size)
        charge("omega_random", time.perf_counter() - t, n_omega, fb=1, fwd=cfg.omega_samples)
        rec = {"eps": float(eps), "random": res}
        if cfg.adversarial:
            t = time.perf_counter()
            warm = None
            if cfg.omega_ascent_warm and k > 0:
                prev = records[k - 1]  # radii are measured in increasing order, so k - 1 is done
                if prev.get("ascent_best") is None:
                    raise RuntimeError(f"the warm start of radius {k} (the best point at radius {k - 1}) is missing")
                warm = prev["ascent_best"] * (float(eps) / prev["eps"])
            keep = cfg.omega_ascent_warm or cfg.omega_refine_steps > 0  # the best points are needed
            out = ascent_residuals(
                model, xo, yo, float(eps), cfg.norm, steps=cfg.omega_ascent_steps, starts=cfg.omega_ascent_starts,
                generator=_seeded(cfg.seed, k, 1), loss_fn=loss_fn, clip=cfg.clip, batch_size=cfg.batch_size,
                warm=warm, return_best=keep)
            rec["ascent"], rec["ascent_best"] = out if keep else (out, None)
            if k > 0:
                records[k - 1].pop("ascent_best", None)  # only the latest radius's point is needed
            charge("omega_adversarial", time.perf_counter() - t, n_omega,
                   fb=1 + ascent_passes(cfg.omega_ascent_steps, cfg.omega_ascent_starts))
        records[k] = rec
        if cfg.omega_refine_steps:
            track_refuted(k)
        save()

    loss_o, gnorm_o = stats.loss[:n_omega].double(), gnorm[:n_omega].double()

    def own_omega() -> torch.Tensor:
        """Per-image omega ``[n_omega, K]`` at the radii measured so far (refinements included), cummax."""
        cols = []
        for k in range(len(records)):
            col = torch.cat([records[k]["random"], records[k]["ascent"]], dim=1).max(dim=1).values
            if k in refine:
                col = torch.maximum(col, refine[k])
            cols.append(col.clamp_min(0.0))
        return torch.stack(cols, dim=1).cummax(dim=1).values

    def own_certified(om: torch.Tensor, k: int) -> torch.Tensor:
        return (loss_o < MARGIN_L0) & (MARGIN_L0 - loss_o - om[:, k] >= grid[k] * gnorm_o)

    def track_refuted(k: int) -> None:
        """After radius k: for the images whose own bound fails here first, keep the point that made it fail."""
        new = (refuted["k"] < 0) & (loss_o < MARGIN_L0) & ~own_certified(own_omega(), k)
        if refuted["v"] is None:
            refuted["v"] = torch.zeros(xo.shape, dtype=records[k]["ascent_best"].dtype)
        refuted["k"][new] = k
        refuted["v"][new] = records[k]["ascent_best"][new]

    def refine_from_above() -> None:
        """Move each image's own bound down one radius at a time while a refined ascent, started from the point
        that made it fail at the radius above, makes it fail again (BoundConfig.omega_refine_steps)."""
        bar = tqdm(desc=f"omega refine({cfg.norm})", disable=not progress, leave=False)
        while True:
            om, k_img = own_omega(), refuted["k"]
            cand = torch.zeros(n_omega, dtype=torch.bool)
            for j in range(len(grid) - 1):
                at = k_img == j + 1
                if at.any():
                    done_here = refined.get(j, torch.zeros(n_omega, dtype=torch.bool))
                    cand |= at & ~done_here & own_certified(om, j)
            if not cand.any():
                break
            t, passes = time.perf_counter(), 0
            for j in sorted({int(k) - 1 for k in k_img[cand]}):
                ids = (cand & (k_img == j + 1)).nonzero().view(-1)
                res, best = ascent_residuals(
                    model, xo[ids], yo[ids], float(grid[j]), cfg.norm, steps=cfg.omega_refine_steps, starts=1,
                    generator=_seeded(cfg.seed, j, 2), loss_fn=loss_fn, clip=cfg.clip, batch_size=cfg.batch_size,
                    warm=refuted["v"][ids], return_best=True)
                col = refine.setdefault(j, torch.full((n_omega,), -float("inf"), dtype=torch.float64))
                col[ids] = torch.maximum(col[ids], res[:, 0])
                refined.setdefault(j, torch.zeros(n_omega, dtype=torch.bool))[ids] = True
                failed = ~own_certified(own_omega(), j)[ids]
                refuted["k"][ids[failed]] = j
                refuted["v"][ids[failed]] = best[failed]
                passes += ids.numel() * (1 + ascent_passes(cfg.omega_refine_steps, 1))
            charge("omega_refine", time.perf_counter() - t, n_omega, fb=passes / n_omega)
            save()
            bar.update(int(cand.sum()))
        bar.close()

    fits: dict[tuple[str, int], GEVFit] = {}

    def fit(which: str, k: int) -> GEVFit:
        if (which, k) not in fits:
            rec = records[k]
            samples = rec["random"] if which == "random" else torch.cat([rec["random"], rec["ascent"]], dim=1)
            if cfg.evt_maxima is None:  # batch maxima over omega_batch_images images (the paper's reading)
                fits[which, k] = estimate_omega(samples.max(dim=1).values.view(-1, 1),
                                                batch_images=cfg.omega_batch_images, method=cfg.omega_method,
                                                **fit_kw)
            else:  # every sample pooled, batches of n_samples // evt_maxima samples
                flat = samples.reshape(-1)
                fits[which, k] = estimate_supremum(flat, batch_size=max(1, flat.numel() // cfg.evt_maxima),
                                                   method=cfg.omega_method, **fit_kw)
        return fits[which, k]

    def entries() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"random": [], "adversarial": []}
        run_r = run_a = 0.0
        for k, eps in enumerate(grid):
            f = fit("random", k)
            raw = max(f.value, 0.0)
            run_r = max(run_r, raw)  # omega is non-decreasing in eps
            out["random"].append({"eps": float(eps), "omega": run_r, "omega_raw": raw, "estimator": estimate_label(f),
                                  "fit": f.to_dict()})
            if cfg.adversarial:
                fa = fit("adversarial", k)
                raw_a = max(fa.value, 0.0)
                # A larger estimate of the same supremum is also an estimate of it: never below the paper's,
                # nor below a residual the per-image refinement attained at this radius.
                ref = float(refine[k].max()) if k in refine else 0.0
                run_a = max(run_a, raw_a, run_r, ref)
                out["adversarial"].append({
                    "eps": float(eps), "omega": run_a, "omega_raw": raw_a, "estimator": estimate_label(fa),
                    "ascent_max": float(records[k]["ascent"].max()), "random_max": float(records[k]["random"].max()),
                    "fit": fa.to_dict()})
        return out

    def distances(ent: dict[str, list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        d = {"omega_distance": omega_distance(stats.loss, gnorm, grid, [e["omega"] for e in ent["random"]])}
        if cfg.adversarial:
            d["omega_distance_adversarial"] = omega_distance(stats.loss, gnorm, grid,
                                                             [e["omega"] for e in ent["adversarial"]])
        if cfg.omega_per_image:
            own = omega_distance(stats.loss[:n_omega], gnorm[:n_omega], grid, own_omega())
            full = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
            full[:n_omega] = own
            d["omega_distance_adversarial_per_image"] = full
        return d

    for k, eps in enumerate(tqdm(grid, desc=f"omega({cfg.norm})", disable=not progress, leave=False)):
        measure(k, eps)
    ent = entries()
    dist = distances(ent)
    if cfg.omega_extend is not None:
        cap = box_diameter(x.shape[1:], cfg.norm)
        while grid[-1] < cap * (1 - 1e-12) and any(bool((v >= grid[-1]).any()) for v in dist.values()):
            grid.append(min(grid[-1] * cfg.omega_extend, cap))
            measure(len(grid) - 1, grid[-1])
            ent = entries()
            dist = distances(ent)
    if cfg.omega_refine_steps:
        refine_from_above()
        ent = entries()
        dist = distances(ent)
    top = grid[-1]

    lb = {m: l_bound(stats.loss.double(), lip[m].value) for m in lip}
    columns: dict[str, Any] = {
        "image": idx.numpy(),
        "label": y.cpu().numpy(),
        "prediction": stats.prediction.numpy(),
        "correct": stats.correct.numpy(),
        "loss": stats.loss.double().numpy(),
        "grad_norm_l2": stats.grad_norm_l2.double().numpy(),
        "grad_norm_l1": stats.grad_norm_l1.double().numpy(),
        "grad_norm": gnorm.double().numpy(),
        "l_bound_evt": lb["evt"].numpy(),
        "l_bound_empirical_max": lb["empirical-max"].numpy(),
        "l_bound": lb[cfg.lipschitz].numpy(),
    }
    for name, d in dist.items():
        columns[name] = d.numpy()
    columns["norm"] = cfg.norm
    for name, d in dist.items():  # the cap each distance hit: certified at the largest radius searched
        columns[f"{name}_at_cap"] = (d >= top).numpy()
    columns["omega_search_cap"] = top
    table = pd.DataFrame(columns)
    radii = cfg.resolved_radii
    correct = table["correct"].to_numpy()
    cert_cols = {
        "radius": list(radii),
        "omega_bound_error": list(certified_error(table["omega_distance"].to_numpy(), correct, radii).values()),
        "l_bound_error": list(certified_error(table["l_bound"].to_numpy(), correct, radii).values()),
    }
    for name in dist:
        if name != "omega_distance":
            key = name.replace("omega_distance_", "omega_") + "_bound_error"
            cert_cols[key] = list(certified_error(table[name].to_numpy(), correct, radii).values())
    cert = pd.DataFrame(cert_cols)
    evt: dict[str, Any] = {"norm": cfg.norm, "lipschitz": {m: f.to_dict() for m, f in lip.items()},
                           "lipschitz_estimator": {m: estimate_label(f) for m, f in lip.items()},
                           "omega": ent["random"]}
    if cfg.adversarial:
        evt["omega_adversarial"] = ent["adversarial"]
    result = BoundsResult(table=table, evt=evt, certified=cert)
    result.metrics = _metrics(result, cfg, stats)
    result.metrics["cost"] = cost
    return result



def fits_accepted(evt: dict[str, Any], cfg: BoundConfig | None = None) -> tuple[int, int]:
    """``(k, N)``: of the N extreme-value fits asked for (L with ``lipschitz='evt'`` and omega at every radius
    for every estimator, unless the config asked for the empirical maximum), how many were accepted and used."""
    fits = [evt["lipschitz"]["evt"]]
    for key in ("omega", "omega_adversarial"):
        fits += [e["fit"] for e in evt.get(key, [])]
    asked = [f for f in fits if f.get("reason") != "requested"]
    return sum(1 for f in asked if f.get("method") == "gev"), len(asked)


def _metrics(result: BoundsResult, cfg: BoundConfig, stats: ImageStatistics | None = None) -> dict[str, Any]:
    t = result.table
    omega = result.omega()
    m: dict[str, Any] = {
        "norm": cfg.norm,
        "n_images": int(len(t)),
        "clean_error": float(100.0 * (1.0 - t["correct"].mean())),
        "lipschitz_evt": float(result.evt["lipschitz"]["evt"]["value"]),
        "lipschitz_empirical_max": float(result.evt["lipschitz"]["empirical-max"]["value"]),
        "lipschitz_evt_method": result.evt["lipschitz"]["evt"]["method"],
        "mean_l_bound": float(t["l_bound"].mean()),
        "mean_l_bound_evt": float(t["l_bound_evt"].mean()),
        "mean_l_bound_empirical_max": float(t["l_bound_empirical_max"].mean()),
        "mean_omega_distance": float(t["omega_distance"].mean()),
        "grad_norm_mean": float(t["grad_norm"].mean()),
        "grad_norm_max": float(t["grad_norm"].max()),
        "grad_norm_l2_mean": float(t["grad_norm_l2"].mean()),
        "grad_norm_l2_max": float(t["grad_norm_l2"].max()),
        "omega_fits_rejected": int(sum(1 for e in result.evt["omega"] if e["fit"]["method"] != "gev")),
    }
    for r in cfg.resolved_radii:
        m[f"omega({r:g})"] = float(omega[min(omega, key=lambda e: abs(e - r))])
    for _, row in result.certified.iterrows():
        m[f"omega_bound_error@{row['radius']:g}"] = float(row["omega_bound_error"])
        m[f"l_bound_error@{row['radius']:g}"] = float(row["l_bound_error"])
    if cfg.norm == "l2":  # Table B.3 (measured in l2)
        m["regularity"] = {
            "grad_norm_mean": m["grad_norm_l2_mean"], "grad_norm_max": m["grad_norm_l2_max"],
            "omega(0.5)": float(omega[min(omega, key=lambda e: abs(e - 0.5))]),
            "omega(1)": float(omega[min(omega, key=lambda e: abs(e - 1.0))]),
        }
    # How every estimate was obtained (issue 13): the estimator actually used and the fits accepted.
    m["lipschitz_estimator"] = estimate_label(result.evt["lipschitz"][cfg.lipschitz])
    m["lipschitz_evt_estimator"] = estimate_label(result.evt["lipschitz"]["evt"])
    m["omega_estimators"] = ["random"] + (["adversarial"] if "omega_adversarial" in result.evt else [])
    k, n = fits_accepted(result.evt)
    m["fits_accepted_k"], m["fits_total"], m["fits_accepted"] = k, n, f"{k} of {n}"
    m["omega_search_cap"] = float(t["omega_search_cap"].iloc[0]) if "omega_search_cap" in t else float("nan")
    m["omega_distance_at_cap_percent"] = float(100.0 * t["omega_distance_at_cap"].mean())
    if "omega_adversarial" in result.evt:
        adv = {float(e["eps"]): float(e["omega"]) for e in result.evt["omega_adversarial"]}
        m["mean_omega_distance_adversarial"] = float(t["omega_distance_adversarial"].mean())
        m["omega_distance_adversarial_at_cap_percent"] = float(100.0 * t["omega_distance_adversarial_at_cap"].mean())
        m["omega_adversarial_fits_rejected"] = int(sum(1 for e in result.evt["omega_adversarial"]
                                                       if e["fit"]["method"] != "gev"))
        for r in cfg.resolved_radii:
            m[f"omega_adversarial({r:g})"] = float(adv[min(adv, key=lambda e: abs(e - r))])
        for _, row in result.certified.iterrows():
            m[f"omega_adversarial_bound_error@{row['radius']:g}"] = float(row["omega_adversarial_bound_error"])
        if "omega_distance_adversarial_per_image" in t:
            m["mean_omega_distance_adversarial_per_image"] = float(t["omega_distance_adversarial_per_image"].mean())
        if cfg.norm == "l2":
            m["regularity"]["omega_adversarial(0.5)"] = float(adv[min(adv, key=lambda e: abs(e - 0.5))])
            m["regularity"]["omega_adversarial(1)"] = float(adv[min(adv, key=lambda e: abs(e - 1.0))])
    return m


def _write(run: Any, result: BoundsResult) -> None:
    run.write_table("bounds.csv", result.table)
    run.write_json("evt.json", result.evt)
    run.write_table("certified_error.csv", result.certified)


def load_bounds(run: Any, cfg: BoundConfig | None = None) -> BoundsResult:
    """Load a finished bounds run (``bounds.csv``, ``evt.json``, ``certified_error.csv``, ``metrics.json``)."""
    if run.status != "finished":
        raise ConfigError(f"bounds run {run.path} is {run.status}, not finished; run `paperlib bound` first")
    table = run.read_table("bounds.csv")
    table["correct"] = table["correct"].astype(bool)
    return BoundsResult(
        table=table, evt=run.read_json("evt.json"), certified=run.read_table("certified_error.csv"),
        metrics=run.read_json("metrics.json") if run.exists("metrics.json") else {},
    )


def run_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor | Sequence[int],
    cfg: BoundConfig,
    run: Any = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> BoundsResult:
    """L-bound, omega(eps) on a grid, omega-bound distance and certified error for every image.

    Args:
        model: logits model on [0, 1] inputs (eval mode is used; its mode is restored).
        x: images ``[n, C, H, W]``, finite and in [0, 1]; y: labels ``[n]`` in ``[0, K)``; idx: dataset indices
            ``[n]`` (the ``image`` column, which lines the table up with the attack suite's ``best.csv``).
        cfg: the :class:`BoundConfig` (``cfg.n_images`` must equal ``n``).
        run: a :class:`paperlib.runs.Run` for ``cfg`` (e.g. ``trained_run.subrun('bounds-l2', cfg)``), or None
            to compute without writing. A finished run with the same config is loaded, not recomputed; a
            partial one resumes from its checkpoint (per grid radius).
        force: recompute even if finished (the old directory is moved aside).
        progress: tqdm bars.
    """
    if not isinstance(cfg, BoundConfig):
        raise ConfigError(f"cfg must be a BoundConfig, got {type(cfg).__name__}")
    idx_t = _check_inputs(x, y, idx, cfg)
    if run is None:
        return _compute_bounds(model, x, y, idx_t, cfg, None, progress)

    def compute(r: Any) -> BoundsResult:
        r.log(f"bounds: {len(idx_t)} images, norm {cfg.norm}")
        result = _compute_bounds(model, x, y, idx_t, cfg, r, progress)
        _write(r, result)
        return result

    result = run_or_load(run, cfg, compute, metrics=lambda res: res.metrics, load=lambda r: load_bounds(r, cfg),
                         force=force)
    if not np.array_equal(result.table["image"].to_numpy(), idx_t.numpy()):
        raise ConfigError(f"{run.path} holds bounds for other images than the ones given; use force to recompute")
    return result


def bounds_run_name(cfg: BoundConfig) -> str:
    """The sub-run name of the bounds inside a trained model's run: ``bounds-<norm>``."""
    return f"bounds-{cfg.norm}"


def bound_config_from_dict(data: dict[str, Any]) -> BoundConfig:
    """Rebuild a :class:`BoundConfig` from its stored dict."""
    return config_from_dict(BoundConfig, data)


#: The bound stage: sub-runs ``bounds-<norm>`` of a trained model's run.
STAGE = register_stage(Stage("bound", BoundConfig, bounds_run_name, load_bounds))
