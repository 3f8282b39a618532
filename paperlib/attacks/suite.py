"""The attack suite: every attack on N images, per-image best distances, empirical error (paper section 4).

The paper attacks 1000 random test images with PGD (l2 and linf), Carlini-Wagner L2, the Boundary attack and
LogBarrier (l2 and linf), and keeps, per image and norm, the smallest distance of a successful adversarial
over all attacks (:func:`~paperlib.metrics.best_distances`). Clean-misclassified images have distance 0; an
image that no attack broke has distance ``inf``. From those:

* empirical % error at eps = ``100 * #{best <= eps} / #images`` (:func:`~paperlib.metrics.empirical_error`;
  Table 1, Fig. 1);
* the error-vs-eps curve (:func:`~paperlib.metrics.error_curve`); the mean best l2 distance (Table 2).

These metrics live in :mod:`paperlib.metrics`; the suite re-exports them.

:func:`run_attack_suite` writes, into a run of the run store (:mod:`paperlib.runs`):

* ``attacks.csv``: one row per image, attack and norm: ``image`` (dataset index), ``label``, ``attack``,
  ``norm`` (the norm the attack optimized), ``success``, ``dist_l2``, ``dist_linf`` (of what it found, in both
  norms; ``inf`` where it failed);
* ``best.csv``: one row per image and norm: ``image``, ``label``, ``norm``, ``best``, ``best_attack``
  (``'clean'`` for clean-misclassified images, ``'none'`` where nothing succeeded); the best is taken over
  every adversarial found (an adversarial of an l2 attack is also an upper bound on the linf distance);
* ``checks.json``: the evaluation checks of :mod:`paperlib.attacks.checks`.

The suite is resumable per batch: after each batch its rows are saved in the run's checkpoint, and an
interrupted suite continues from the first unfinished batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from paperlib.attacks.base import Attack, AttackResult, Misclassification
from paperlib.attacks.boundary import BoundaryAttack
from paperlib.attacks.checks import Check, convergence_failures, run_checks
from paperlib.attacks.cw import CarliniWagnerL2
from paperlib.attacks.fmn import FastMinimumNorm
from paperlib.attacks.logbarrier import LogBarrierAttack
from paperlib.attacks.norms import get_norm
from paperlib.attacks.pgd import MinimalPGD
from paperlib.attacks.reference import (
    REFERENCE_ATTACKS,
    REFERENCE_FIXED_EPS,
    REFERENCE_MINIMIZATION,
    REFERENCE_NORMS,
    reference_attack,
)
from paperlib.config import (
    OMIT_AT_DEFAULT,
    ConfigError,
    check_choice,
    check_labels,
    check_nonnegative,
    check_positive,
    check_probability,
    check_unit_images,
    config_hash,
    config_to_dict,
    normalize_norm,
)
from paperlib.evaluation import CHEAP_ATTACK_BUDGETS
from paperlib.metrics import BEST_COLUMNS, TIE_RTOL, best_distances, empirical_error, error_curve
from paperlib.models import model_classes
from paperlib.runs import Run
from paperlib.stages import Stage, register_stage, run_or_load

__all__ = [
    "ATTACKS",
    "EXTRA_ATTACKS",
    "SUITE_ATTACKS",
    "L2_ONLY",
    "AttackConfig",
    "SuiteResult",
    "run_attack_suite",
    "attack_model",
    "keep_closer",
    "load_suite",
    "attack_run_name",
    "best_distances",
    "empirical_error",
    "error_curve",
    "summarize",
    "PassCounter",
    "REFERENCE_COLUMNS",
    "reference_cross_check",
    "CHEAP_BUDGETS",
]

#: the suite's attacks, in the order they run
ATTACKS = ("pgd", "cw", "boundary", "logbarrier")
#: attacks the suite can add after the paper's, *not in the paper*: 'fmn-cold', the Fast Minimum-Norm attack
#: (:class:`~paperlib.attacks.fmn.FastMinimumNorm`) started from the image (as published), and 'fmn-refine', FMN
#: started from the best adversarial the earlier attacks found for the image in that norm (cold where they found
#: none), so it never ends farther than they did
EXTRA_ATTACKS = ("fmn-cold", "fmn-refine")
#: every attack name ``AttackConfig.attacks`` accepts, in the order the suite runs them
SUITE_ATTACKS = ATTACKS + EXTRA_ATTACKS
#: attacks that optimize the l2 distance only (their adversarials still count in linf)
L2_ONLY = ("cw", "boundary")

ATTACK_COLUMNS = ["image", "label", "attack", "norm", "success", "dist_l2", "dist_linf"]
#: ``reference.csv``: the attacks.csv columns, the radius of a fixed-eps attack (NaN for minimum-norm ones), and
#: ``in_paper`` (always False: these attacks are not the paper's)
REFERENCE_COLUMNS = ATTACK_COLUMNS + ["eps", "in_paper"]


@dataclass(frozen=True)
class AttackConfig:
    """What the suite runs (its hash names the run; change any field and it is recomputed).

    Args:
        attacks: subset of the paper's ``('pgd', 'cw', 'boundary', 'logbarrier')`` and, not in the paper,
            ``'fmn-cold'`` and ``'fmn-refine'`` (:data:`EXTRA_ATTACKS`: FMN from the image, and FMN warm-started
            from the earlier attacks' best).
        norms: subset of ``('l2', 'linf')`` (case-insensitive). PGD and LogBarrier run once per norm; CW and
            Boundary are l2 attacks and run when 'l2' is requested.
        n_images: number of seeded-random test images (the paper: 1000).
        seed: seed of the image sample and of every attack's random draws.
        batch_size: images per batch (the unit of resumption).
        pgd_steps, pgd_search_steps: PGD iterations per eps; bisection steps of the eps search.
        cw_steps, cw_binary_search_steps: Adam steps per constant; constants tried.
        boundary_steps: maximum Boundary steps.
        logbarrier_outer, logbarrier_inner: outer loops; maximum inner steps.
        convergence_n: images re-attacked with every iteration budget doubled (0: skip that check).
        escalate: how many times the suite may double the budgets of a norm whose convergence check fails
            (0: never, the committed runs). Each round re-attacks every image with the gradient attacks of the
            failing norms (PGD, CW, LogBarrier; Boundary, the masking check, keeps its budget) at twice the
            previous budgets, keeps per image and attack the closer adversarial, and checks convergence again
            with those budgets doubled on the first ``convergence_n`` images. A finished run of the same config
            without escalation (``attack-<hash of escalate=0>`` beside this one) is reused as the first phase.
        escalate_norms: norms that the first escalation round re-attacks whether or not their convergence check
            fails (needs ``escalate >= 1``; default none). It matches the budget of a model to that of a model it
            is compared with, which escalated: two models compared at different budgets are not comparable.
        convergence_tol: the doubled budget may change the median best distance by at most this fraction.
        masking_ratio: an image is flagged for possible gradient masking when the Boundary attack's l2
            distance is below ``masking_ratio`` times the best gradient attack's.
        masking_max_fraction: the masking check fails when more than this fraction of images is flagged.
        min_success: every minimal-distance attack must succeed on at least this fraction of the images.
        pgd_loss: MinimalPGD's loss: 'margin' (the committed runs), 'ce', 'margin+ce' (two independent
            radius searches, one per loss; the closer adversarial of each image counts) or 'margin>ce'
            (cross-entropy only from the margin search's bracket: one trial per image where the margin was not
            stuck; see :class:`~paperlib.attacks.pgd.MinimalPGD`).
        cw_squeeze: Carlini-Wagner's squeezed tanh start (see
            :class:`~paperlib.attacks.cw.CarliniWagnerL2` ``squeeze``); None: the committed runs' start
            ``atanh((2x - 1) * 0.999999)``.
        logbarrier_linf_step: LogBarrier's linf step: 'smooth' (the authors' smooth-max gradient, the
            committed runs) or 'box' (see :class:`~paperlib.attacks.logbarrier.LogBarrierAttack` ``linf_step``).
        logbarrier_refine_steps: bisection steps on the segment from the image to LogBarrier's adversarial
            (0: none, the committed runs).
        boundary_init_starts: the Boundary attack's ``init_starts`` (see
            :class:`~paperlib.attacks.boundary.BoundaryAttack`; default 1, foolbox 3's, the committed runs).
        boundary_sph_window: its ``sph_window`` (default 100, foolbox 3's).
        boundary_step_window: its ``step_window`` (default 30, foolbox 3's).
        boundary_update_every: its ``update_stats_every_k`` (default 10, foolbox 3's).
        boundary_diff_mask: its ``diff_mask`` (default False).
        boundary_initial_step: its initial ``spherical_step`` and ``source_step`` (default 1e-2, foolbox 3's).
        convergence_tail: None (the committed runs): the convergence check compares medians only; a fraction
            ``f``: it also fails when more than ``f`` of the re-attacked images improve their best distance by
            more than ``convergence_tol`` with the doubled budgets (see
            :func:`~paperlib.attacks.checks.check_convergence`).
        reference_attacks: reference attacks run beside the paper's suite, *not in the paper* (default none;
            see :mod:`paperlib.attacks.reference`): minimum-norm 'fab' (l2, linf), 'fmn' (linf), 'ddn' (l2), and
            AutoAttack's fixed-eps 'apgd-ce', 'apgd-t', 'square' at the radii below, run as AutoAttack does:
            each on the images the previous ones left robust at that radius. Their rows go to
            ``reference.csv``; ``best.csv`` stays the paper's suite, ``best_all.csv`` is the best over both.
        reference_eps_l2, reference_eps_linf: the radii of the fixed-eps reference attacks per norm (the
            table radii, e.g. 2/255 and 8/255 in linf).
        reference_steps: iterations of FAB, FMN, DDN, APGD-CE and APGD-T (per target) (AutoAttack: 100).
        reference_queries: queries of the Square attack (AutoAttack: 5000).
        reference_targets: target classes of APGD-T (AutoAttack: 9, at most the classes minus one).
        pgd_search_tol: per-image early stopping of MinimalPGD's bisection (its ``search_tol``; 0: off, the
            committed runs): an image leaves once its bracket is narrower than this fraction of its radius.
        pgd_growth: MinimalPGD's ``growth``, the factor by which its trial radius grows until PGD succeeds
            (1.5, the committed runs); a larger factor fails fewer trials before the bracket is found.
        pgd_patience: MinimalPGD's per-image early stopping inside a trial radius (its ``patience``, in steps;
            0: off): an image whose loss stalled gives up at that radius.
        cw_patience: Carlini-Wagner's per-image early stopping (its ``patience``, in binary steps; 0: off).
        logbarrier_patience: LogBarrier's per-image early stopping (its ``patience``, in inner steps; 0: off).
        logbarrier_linf_outer, logbarrier_linf_inner: LogBarrier's budgets in linf when they differ from l2's
            (0: ``logbarrier_outer`` and ``logbarrier_inner``, the committed runs).
        logbarrier_init_growth: LogBarrier's ``init_growth``, the factor between the noise sizes tried for its
            starting point (1.01, the authors' and the committed runs).
        boundary_patience: the Boundary attack's per-image early stopping (its ``patience``, in steps; 0: off).
        early_stop_tol: the relative improvement over a patience window below which an image leaves its
            attack (1e-3; used by the four patience fields).
        boundary_every: the Boundary attack runs on every k-th image of the draw only (positions 0, k, 2k, ...;
            1: every image, the committed runs); the other images get no Boundary row. The gradient-masking
            check compares the images it ran on.
        boundary_low_freq: the Boundary attack's ``low_freq`` (1: per-pixel Gaussian steps, foolbox 3's and the
            committed runs'; 2 or 3: low-frequency steps, see :class:`~paperlib.attacks.boundary.BoundaryAttack`).
        logbarrier_linf_dt: LogBarrier's step size ``dt`` in linf when it differs from l2's (0: the same, 0.01,
            the committed runs; the box step's radius shrinks by ``1 - dt`` per step, see
            :class:`~paperlib.attacks.logbarrier.LogBarrierAttack`).
        logbarrier_stall, logbarrier_outer_patience: LogBarrier's ``stall`` and ``outer_patience`` (with
            ``logbarrier_patience``; defaults 'distance' and 1, the rules the cheap budgets were measured with;
            see :class:`~paperlib.attacks.logbarrier.LogBarrierAttack`).
        top_k: the adversarial criterion of every attack, top-``k`` misclassification
            (:class:`~paperlib.attacks.base.Misclassification`; 1: top-1, the committed runs; the imagenet
            profile uses 5, as its bounds' ``top_k``). Success, the best distances and the empirical error are
            then top-k. The library reference attacks are top-1 only: ``top_k > 1`` with
            ``reference_attacks`` is a :class:`~paperlib.config.ConfigError`.
        fmn_steps: iterations of 'fmn-cold' and of 'fmn-refine' per norm (default 100; each costs that many
            forward and backward passes per image, 'fmn-refine' 12 forward more for the bisection of its start).

    :meth:`~paperlib.attacks.suite.AttackConfig.cheap` is the recommended configuration for the grid evaluation
    (:data:`~paperlib.attacks.suite.CHEAP_BUDGETS`).

    The fields from ``pgd_loss`` on were added after runs were stored: at their defaults they are left out of
    the hash (``OMIT_AT_DEFAULT``), so the stored runs keep their names and the defaults reproduce them.
    """

    attacks: tuple[str, ...] = ATTACKS
    norms: tuple[str, ...] = ("l2", "linf")
    n_images: int = 1000
    seed: int = 0
    batch_size: int = 250
    pgd_steps: int = 40
    pgd_search_steps: int = 20
    cw_steps: int = 1000
    cw_binary_search_steps: int = 5
    boundary_steps: int = 25000
    logbarrier_outer: int = 15
    logbarrier_inner: int = 500
    convergence_n: int = 50
    convergence_tol: float = 0.05
    masking_ratio: float = 0.5
    masking_max_fraction: float = 0.01
    min_success: float = 0.99
    pgd_loss: str = field(default="margin", metadata={OMIT_AT_DEFAULT: True})
    cw_squeeze: Optional[float] = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_linf_step: str = field(default="smooth", metadata={OMIT_AT_DEFAULT: True})
    logbarrier_refine_steps: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    boundary_init_starts: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    boundary_sph_window: int = field(default=100, metadata={OMIT_AT_DEFAULT: True})
    boundary_step_window: int = field(default=30, metadata={OMIT_AT_DEFAULT: True})
    boundary_update_every: int = field(default=10, metadata={OMIT_AT_DEFAULT: True})
    boundary_diff_mask: bool = field(default=False, metadata={OMIT_AT_DEFAULT: True})
    boundary_initial_step: float = field(default=1e-2, metadata={OMIT_AT_DEFAULT: True})
    convergence_tail: Optional[float] = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    reference_attacks: tuple[str, ...] = field(default=(), metadata={OMIT_AT_DEFAULT: True})
    reference_eps_l2: tuple[float, ...] = field(default=(), metadata={OMIT_AT_DEFAULT: True})
    reference_eps_linf: tuple[float, ...] = field(default=(), metadata={OMIT_AT_DEFAULT: True})
    reference_steps: int = field(default=100, metadata={OMIT_AT_DEFAULT: True})
    reference_queries: int = field(default=5000, metadata={OMIT_AT_DEFAULT: True})
    reference_targets: int = field(default=9, metadata={OMIT_AT_DEFAULT: True})
    pgd_search_tol: float = field(default=0.0, metadata={OMIT_AT_DEFAULT: True})
    pgd_growth: float = field(default=1.5, metadata={OMIT_AT_DEFAULT: True})
    pgd_patience: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    cw_patience: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_patience: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_linf_outer: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_linf_inner: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_init_growth: float = field(default=1.01, metadata={OMIT_AT_DEFAULT: True})
    boundary_patience: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    early_stop_tol: float = field(default=1e-3, metadata={OMIT_AT_DEFAULT: True})
    boundary_every: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_stall: str = field(default="distance", metadata={OMIT_AT_DEFAULT: True})
    boundary_low_freq: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_linf_dt: float = field(default=0.0, metadata={OMIT_AT_DEFAULT: True})
    logbarrier_outer_patience: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    top_k: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    escalate: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    escalate_norms: tuple[str, ...] = field(default=(), metadata={OMIT_AT_DEFAULT: True})
    fmn_steps: int = field(default=100, metadata={OMIT_AT_DEFAULT: True})

    def __post_init__(self) -> None:
        attacks = tuple(self.attacks) if not isinstance(self.attacks, str) else (self.attacks,)
        if not attacks:
            raise ConfigError(f"attacks={self.attacks!r} is empty; choose from {', '.join(SUITE_ATTACKS)}")
        for a in attacks:
            check_choice("attack", a, SUITE_ATTACKS)
        norms = tuple(self.norms) if not isinstance(self.norms, str) else (self.norms,)
        if not norms:
            raise ConfigError("norms=() is empty; choose 'l2' and/or 'linf'")
        norms = tuple(dict.fromkeys(normalize_norm(n) for n in norms))
        if "l2" not in norms and all(a in L2_ONLY for a in attacks):
            raise ConfigError(f"attacks {attacks} are l2 attacks but norms={norms}; add 'l2' or another attack")
        object.__setattr__(self, "attacks", tuple(a for a in SUITE_ATTACKS if a in attacks))
        object.__setattr__(self, "norms", tuple(n for n in ("l2", "linf") if n in norms))
        for name in ("n_images", "batch_size", "pgd_steps", "cw_steps", "cw_binary_search_steps",
                     "boundary_steps", "logbarrier_outer", "logbarrier_inner", "fmn_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an integer")
            check_positive(name, v)
        for name in ("seed", "pgd_search_steps", "convergence_n", "escalate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an integer")
            check_nonnegative(name, v)
        check_positive("convergence_tol", self.convergence_tol)
        check_probability("masking_ratio", self.masking_ratio)
        check_nonnegative("masking_max_fraction", self.masking_max_fraction)
        if not 0 < self.min_success <= 1:
            raise ConfigError(f"min_success={self.min_success!r} must lie in (0, 1]")
        from paperlib.attacks.pgd import MINIMAL_PGD_LOSSES

        check_choice("pgd_loss", self.pgd_loss, MINIMAL_PGD_LOSSES)
        if self.cw_squeeze is not None and (isinstance(self.cw_squeeze, bool) or not isinstance(self.cw_squeeze, (int, float))
                                            or not 0 < self.cw_squeeze < 0.5):
            raise ConfigError(f"cw_squeeze={self.cw_squeeze!r} must be None or a number in (0, 0.5)")
        check_choice("logbarrier_linf_step", self.logbarrier_linf_step, ("smooth", "box"))
        v = self.logbarrier_refine_steps
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"logbarrier_refine_steps={v!r} must be an integer")
        check_nonnegative("logbarrier_refine_steps", v)
        for name in ("boundary_init_starts", "boundary_sph_window", "boundary_step_window", "boundary_update_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an integer")
            check_positive(name, v)
        if not isinstance(self.boundary_diff_mask, bool):
            raise ConfigError(f"boundary_diff_mask={self.boundary_diff_mask!r} must be True or False")
        s = self.boundary_initial_step
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
            raise ConfigError(f"boundary_initial_step={s!r} must be a number in (0, 1)")
        t = self.convergence_tail
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1):
            raise ConfigError(f"convergence_tail={t!r} must be None or a fraction in [0, 1)")
        for name in ("pgd_search_tol", "early_stop_tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"{name}={v!r} must be a number in [0, 1)")
        g = self.pgd_growth
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 1:
            raise ConfigError(f"pgd_growth={g!r} must be a number > 1")
        v = self.logbarrier_linf_dt
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"logbarrier_linf_dt={v!r} must be a number in [0, 1) (0: the l2 step size)")
        g = self.logbarrier_init_growth
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 1:
            raise ConfigError(f"logbarrier_init_growth={g!r} must be a number > 1")
        check_choice("logbarrier_stall", self.logbarrier_stall, ("distance", "move"))
        for name in ("pgd_patience", "cw_patience", "logbarrier_patience", "logbarrier_linf_outer",
                     "logbarrier_linf_inner", "boundary_patience", "boundary_every", "logbarrier_outer_patience", "boundary_low_freq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an integer")
            (check_positive if name in ("boundary_every", "boundary_low_freq") else check_nonnegative)(name, v)
        if self.escalate and not self.convergence_n:
            raise ConfigError(f"escalate={self.escalate} needs the convergence check to decide when; set "
                              "convergence_n > 0 (e.g. 50)")
        forced = (self.escalate_norms,) if isinstance(self.escalate_norms, str) else tuple(self.escalate_norms)
        forced = tuple(dict.fromkeys(normalize_norm(n) for n in forced))
        for n in forced:
            if n not in self.norms:
                raise ConfigError(f"escalate_norms={self.escalate_norms!r}: {n!r} is not among norms={self.norms}")
        if forced and not self.escalate:
            raise ConfigError(f"escalate_norms={self.escalate_norms!r} needs an escalation round; set escalate >= 1")
        object.__setattr__(self, "escalate_norms", tuple(n for n in ("l2", "linf") if n in forced))
        self._check_reference()
        Misclassification(self.top_k)  # a ConfigError for anything but an integer >= 1
        if self.top_k > 1 and self.reference_attacks:
            raise ConfigError(f"top_k={self.top_k} with reference_attacks={self.reference_attacks}: the library "
                              "reference attacks are top-1 only; use top_k=1 or no reference attacks")

    def _check_reference(self) -> None:
        """Validate and normalize the reference-attack fields (tuples in canonical order)."""
        refs = (self.reference_attacks,) if isinstance(self.reference_attacks, str) else tuple(self.reference_attacks)
        for a in refs:
            check_choice("reference attack", a, REFERENCE_ATTACKS)
        object.__setattr__(self, "reference_attacks", tuple(a for a in REFERENCE_ATTACKS if a in refs))
        for norm in ("l2", "linf"):
            name = f"reference_eps_{norm}"
            raw = getattr(self, name)
            radii = (raw,) if isinstance(raw, (int, float)) else tuple(raw)
            for e in radii:
                if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
                    raise ConfigError(f"{name}={raw!r}: every radius must be a finite number > 0")
                if norm == "linf" and e > 1:
                    raise ConfigError(f"{name}={raw!r}: a linf radius above 1 is the whole image box")
            if radii and norm not in self.norms:
                raise ConfigError(f"{name}={raw!r} is given but norms={self.norms} has no {norm!r}")
            object.__setattr__(self, name, tuple(sorted(dict.fromkeys(float(e) for e in radii))))
        fixed = [a for a in self.reference_attacks if a in REFERENCE_FIXED_EPS]
        if fixed and not (self.reference_eps_l2 or self.reference_eps_linf):
            raise ConfigError(f"reference attacks {fixed} run at fixed radii: give reference_eps_l2 and/or "
                              "reference_eps_linf")
        for name in ("reference_steps", "reference_queries", "reference_targets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an integer")
            check_positive(name, v)

    def reference_jobs(self) -> list[tuple[str, str, Optional[float]]]:
        """The reference (attack, norm, eps) triples, in order: minimum-norm ones (eps None), then per norm and
        radius AutoAttack's fixed-eps attacks (none unless ``reference_attacks`` is set)."""
        out: list[tuple[str, str, Optional[float]]] = []
        for a in self.reference_attacks:
            if a in REFERENCE_MINIMIZATION:
                out.extend((a, n, None) for n in self.norms if n in REFERENCE_NORMS[a])
        for n in self.norms:
            for e in getattr(self, f"reference_eps_{n}"):
                out.extend((a, n, e) for a in self.reference_attacks if a in REFERENCE_FIXED_EPS)
        return out

    def build_reference(self, attack: str, norm: str) -> Attack:
        """The reference attack object for one reference job (AutoAttack's settings)."""
        return reference_attack(attack, norm, steps=self.reference_steps, n_queries=self.reference_queries,
                                n_target_classes=self.reference_targets, criterion=Misclassification(self.top_k))

    @classmethod
    def cheap(cls, **overrides: Any) -> "AttackConfig":
        """The recommended configuration for the grid evaluation:
        :data:`~paperlib.attacks.suite.CHEAP_BUDGETS` (per-image early stopping in every attack and budgets
        measured against the convergence check, see ``benchmarks/bench_attack_budget.py``), with ``overrides``
        (any field, e.g. ``n_images``) on top; ``convergence_n=0`` turns the escalation off with the check."""
        if overrides.get("convergence_n") == 0:  # no convergence check: nothing to escalate on
            overrides.setdefault("escalate", 0)
        return cls(**{**CHEAP_BUDGETS, **overrides})

    def jobs(self) -> list[tuple[str, str]]:
        """The (attack, norm) pairs the suite runs, in order."""
        out = []
        for a in self.attacks:
            for n in self.norms:
                if a in L2_ONLY and n != "l2":
                    continue
                out.append((a, n))
        return out

    def scaled(self, factor: int) -> "AttackConfig":
        """The same config with every iteration budget multiplied by ``factor``; the early-stopping
        patience windows grow and the tolerances shrink by the same factor (0 stays 0: off)."""
        stopping = self.pgd_patience or self.cw_patience or self.logbarrier_patience or self.boundary_patience
        return dataclasses.replace(
            self, pgd_steps=self.pgd_steps * factor, cw_steps=self.cw_steps * factor,
            boundary_steps=self.boundary_steps * factor, logbarrier_inner=self.logbarrier_inner * factor,
            logbarrier_outer=self.logbarrier_outer * factor if factor > 1 else self.logbarrier_outer,
            pgd_search_tol=self.pgd_search_tol / factor, pgd_patience=self.pgd_patience * factor,
            cw_patience=self.cw_patience * factor,
            logbarrier_patience=self.logbarrier_patience * factor,
            logbarrier_linf_inner=self.logbarrier_linf_inner * factor,
            logbarrier_linf_outer=self.logbarrier_linf_outer * factor if factor > 1 else self.logbarrier_linf_outer,
            boundary_patience=self.boundary_patience * factor,
            # only where it runs: a config without it keeps its scaled hash (the stored escalation rounds')
            fmn_steps=self.fmn_steps * factor if set(EXTRA_ATTACKS) & set(self.attacks) else self.fmn_steps,
            early_stop_tol=self.early_stop_tol / factor if stopping else self.early_stop_tol)

    def escalated(self, factor: int, norms: Sequence[str]) -> "AttackConfig":
        """The config of an escalation round (see ``escalate``): every budget times ``factor``
        (:meth:`scaled`), only the gradient attacks, only ``norms``."""
        attacks = tuple(a for a in self.attacks if a != "boundary")
        if not any(a not in L2_ONLY or "l2" in norms for a in attacks):
            raise ConfigError(f"no gradient attack of {self.attacks} runs in norms {tuple(norms)}")
        return dataclasses.replace(self.scaled(factor), attacks=attacks, norms=tuple(norms), escalate=0,
                                   escalate_norms=(), convergence_n=0, reference_attacks=())

    def build(self, attack: str, norm: str) -> Attack:
        """The attack object for one job, with the criterion ``Misclassification(top_k)``."""
        criterion = Misclassification(self.top_k)
        if attack == "pgd":
            return MinimalPGD(norm=norm, steps=self.pgd_steps, search_steps=self.pgd_search_steps, loss=self.pgd_loss,
                              growth=float(self.pgd_growth), search_tol=self.pgd_search_tol,
                              patience=self.pgd_patience, tol=self.early_stop_tol, criterion=criterion)
        if attack == "cw":
            return CarliniWagnerL2(steps=self.cw_steps, binary_search_steps=self.cw_binary_search_steps,
                                   squeeze=self.cw_squeeze, patience=self.cw_patience, tol=self.early_stop_tol,
                                   criterion=criterion)
        if attack == "boundary":
            return BoundaryAttack(steps=self.boundary_steps, init_starts=self.boundary_init_starts,
                                  sph_window=self.boundary_sph_window, step_window=self.boundary_step_window,
                                  update_stats_every_k=self.boundary_update_every, diff_mask=self.boundary_diff_mask,
                                  spherical_step=float(self.boundary_initial_step),
                                  source_step=float(self.boundary_initial_step),
                                  patience=self.boundary_patience, tol=self.early_stop_tol,
                                  low_freq=self.boundary_low_freq, criterion=criterion)
        if attack == "logbarrier":
            linf = norm == "linf"
            outer = self.logbarrier_linf_outer if linf and self.logbarrier_linf_outer else self.logbarrier_outer
            inner = self.logbarrier_linf_inner if linf and self.logbarrier_linf_inner else self.logbarrier_inner
            dt = {"dt": float(self.logbarrier_linf_dt)} if linf and self.logbarrier_linf_dt else {}
            return LogBarrierAttack(norm=norm, max_outer=outer, max_inner=inner, **dt,
                                    linf_step=self.logbarrier_linf_step, refine_steps=self.logbarrier_refine_steps,
                                    patience=self.logbarrier_patience, tol_stop=self.early_stop_tol,
                                    init_growth=float(self.logbarrier_init_growth), stall=self.logbarrier_stall,
                                    outer_patience=self.logbarrier_outer_patience, criterion=criterion)
        if attack in ("fmn-cold", "fmn-refine"):  # the same attack; the suite gives 'fmn-refine' its start
            return FastMinimumNorm(norm=norm, steps=self.fmn_steps, criterion=criterion)
        raise ConfigError(f"attack={attack!r} is not allowed; choose one of {', '.join(SUITE_ATTACKS)}")


#: The recommended attack budgets for the grid evaluation (:meth:`~paperlib.attacks.suite.AttackConfig.cheap`),
#: data of the foundations (:data:`paperlib.evaluation.CHEAP_ATTACK_BUDGETS`, where the measurements are recorded).
CHEAP_BUDGETS: dict[str, Any] = CHEAP_ATTACK_BUDGETS


def attack_run_name(cfg: AttackConfig) -> str:
    """The sub-run name of an attack suite inside a training run: ``attack-<config hash>``."""
    return f"attack-{config_hash(cfg, 8)}"


# --------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------


@dataclass
class SuiteResult:
    """The suite's output: the two tables, the checks, and a summary (also ``metrics.json``).

    Attributes:
        attacks: ``attacks.csv`` (one row per image, attack and norm).
        best: ``best.csv`` (one row per image and norm).
        checks: ``[(name, passed, message), ...]``.
        summary: per-job success rates, median distances and seconds per image; clean error.
        reference: ``reference.csv`` (the reference attacks, not in the paper; None when none ran).
        best_all: ``best_all.csv``: per image and norm the best over the paper's suite and the references.
    """

    attacks: pd.DataFrame
    best: pd.DataFrame
    checks: list
    summary: dict = field(default_factory=dict)
    reference: Optional[pd.DataFrame] = None
    best_all: Optional[pd.DataFrame] = None

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c[1] for c in self.checks)


def _job_stats(result: AttackResult, x: Tensor) -> dict[str, float]:
    adv = result.adversarials.detach().to(torch.float64)
    box = max(0.0, float(-adv.min()) if adv.numel() else 0.0, float(adv.max() - 1) if adv.numel() else 0.0)
    stats = {"box_violation": box}
    if result.eps is not None:
        d = get_norm(result.norm).distance(adv - x.to(torch.float64))
        e = result.eps.to(torch.float64)
        finite = torch.isfinite(e)
        excess = (d[finite] - e[finite]).clamp_min(0)
        stats["ball_violation"] = float(excess.max()) if excess.numel() else 0.0
    return stats


class PassCounter(nn.Module):
    """Wraps a model and counts the images it sees: ``forward`` rows, and ``backward`` rows (a gradient that
    reached the logits of those rows). Numerically the wrapped model itself; its modes are the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def reset(self) -> tuple[int, int]:
        """Return ``(forward_rows, backward_rows)`` so far and set both to 0."""
        out = (self.forward_rows, self.backward_rows)
        self.forward_rows = self.backward_rows = 0
        return out

    def _count_backward(self, n: int):
        def hook(grad: Tensor) -> None:
            self.backward_rows += n
        return hook

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        n = len(x)
        self.forward_rows += n
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._count_backward(n))
        return out


def _attack_batches(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, cfg: AttackConfig, *, run=None,
                    progress: bool = True, tag: str = "suite") -> tuple[pd.DataFrame, dict]:
    """Attack every batch with every job; resume from and save to ``run``'s checkpoint under ``tag``."""
    from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

    jobs = cfg.jobs()
    n = len(x)
    starts = list(range(0, n, cfg.batch_size))
    state: dict[str, Any] = {"tag": tag, "batches_done": 0, "rows": [], "stats": {}, "seconds": {}, "passes": {}}
    ck = run.load_checkpoint() if run is not None else None
    if ck is not None and ck.get(tag, {}).get("batches_done") is not None:
        state = ck[tag]
    state.setdefault("passes", {})  # checkpoints written before passes were counted
    others = {k: v for k, v in (ck or {}).items() if k != tag}
    counted = PassCounter(model)
    bar = tqdm(total=len(starts) * len(jobs), desc=f"attacks ({tag})", disable=not progress, leave=False,
               initial=state["batches_done"] * len(jobs))
    for b in range(state["batches_done"], len(starts)):
        s = starts[b]
        xb, yb, ib = x[s:s + cfg.batch_size], y[s:s + cfg.batch_size], idx[s:s + cfg.batch_size]
        # per norm, the closest adversarial of the batch's jobs so far: fmn-refine starts from it
        closest = {n: (xb.clone(), torch.full((len(xb),), math.inf, dtype=torch.float64, device=xb.device))
                   for n in cfg.norms}
        for attack_name, norm in jobs:
            atk = cfg.build(attack_name, norm)
            xj, yj, ij = xb, yb, ib
            on = torch.ones(len(xb), dtype=torch.bool)
            if attack_name == "boundary" and cfg.boundary_every > 1:  # every k-th image of the whole draw
                on = torch.arange(s, s + len(xb)) % cfg.boundary_every == 0
                xj, yj, ij = xb[on], yb[on], ib[on]
            key = f"{attack_name}-{norm}"
            kw = {"start": closest[norm][0]} if attack_name == "fmn-refine" else {}
            res = _counted_call(counted, state, key, lambda: atk(counted, xj, yj, seed=cfg.seed, keys=ij, **kw))
            _keep_closest(closest, res, on)
            st = _job_stats(res, xj)
            prev = state["stats"].get(key, {})
            state["stats"][key] = {k: max(v, prev.get(k, 0.0)) for k, v in st.items()}
            state["rows"].extend(zip(
                ij.tolist(), yj.tolist(), [attack_name] * len(yj), [norm] * len(yj), res.success.tolist(),
                res.dist_l2.tolist(), res.dist_linf.tolist()))
            bar.update(1)
        state["batches_done"] = b + 1
        if run is not None:
            run.save_checkpoint({**others, tag: state})
            run.log(f"{tag}: batch {b + 1}/{len(starts)} done")
    bar.close()
    table = pd.DataFrame(state["rows"], columns=ATTACK_COLUMNS)
    table["success"] = table["success"].astype(bool)
    return table, {"stats": state["stats"], "seconds": state["seconds"], "passes": state["passes"]}


def _keep_closest(closest: dict, res: AttackResult, on: Tensor) -> None:
    """Update ``closest`` (``{norm: (adversarials [B, ...], distances [B])}`` of a batch) with an attack's
    result on the rows ``on`` of the batch: in each norm, where its adversarial is strictly closer."""
    for n, (adv, dist) in closest.items():
        d = res.distance(n).to(dist.device)
        rows = on.to(dist.device).nonzero().flatten()
        closer = d < dist[rows]
        adv[rows[closer]] = res.adversarials[closer].detach().to(adv)
        dist[rows[closer]] = d[closer]


def _counted_call(counted: "PassCounter", state: dict, key: str, call):
    """Run ``call()`` (an attack on the pass-counting model) and add its wall seconds and its forward and
    backward passes to ``state['seconds'][key]`` and ``state['passes'][key]``; return what it returned."""
    counted.reset()
    t0 = time.perf_counter()
    out = call()
    dt = time.perf_counter() - t0
    fwd, bwd = counted.reset()
    state["seconds"][key] = state["seconds"].get(key, 0.0) + dt
    prev = state["passes"].get(key, [0, 0])
    state["passes"][key] = [prev[0] + fwd, prev[1] + bwd]
    return out


def summarize(attacks: pd.DataFrame, best: pd.DataFrame, seconds: Optional[dict] = None,
              passes: Optional[dict] = None) -> dict:
    """Per (attack, norm): success rate (%, over clean-correct images), median l2/linf distance of its
    successes, seconds per image, and (when ``passes`` is given: ``{job: [forward rows, backward rows]}``)
    model forward and backward passes per image; per norm: median and mean best distance, and ``wins``:
    per job, on how many of the images some attack broke (clean-misclassified excluded) it gave the best
    adversarial (``best``: the job ``best.csv`` names, ties going to the earlier job in the suite's order;
    ``tied_best``: its own distance equals the best up to :data:`~paperlib.metrics.TIE_RTOL`, so a tie counts
    for each tied job; ``within_1pct``: its own distance is at most 1.01 times the best); the clean error (%).
    Every entry is computed from the two tables, so a stored run's tables give it back."""
    out: dict[str, Any] = {"n_images": int(attacks["image"].nunique()) if len(attacks) else 0, "jobs": {}}
    if len(attacks) == 0:
        return out
    clean_wrong = attacks.groupby("image")["dist_l2"].min() == 0
    out["clean_error_pct"] = float(100 * clean_wrong.mean())
    correct_images = set(clean_wrong.index[~clean_wrong])
    for (a, n), g in attacks.groupby(["attack", "norm"], sort=False):
        g = g[g["image"].isin(correct_images)]
        ok = g[g["success"]]
        per_img = (seconds or {}).get(f"{a}-{n}")
        out["jobs"][f"{a}-{n}"] = {
            "success_pct": float(100 * g["success"].mean()) if len(g) else float("nan"),
            "median_l2": float(ok["dist_l2"].median()) if len(ok) else float("inf"),
            "median_linf": float(ok["dist_linf"].median()) if len(ok) else float("inf"),
            "seconds_per_image": (per_img / max(1, out["n_images"])) if per_img is not None else None,
        }
        if passes is not None and f"{a}-{n}" in passes:
            fwd, bwd = passes[f"{a}-{n}"]
            out["jobs"][f"{a}-{n}"]["forward_passes_per_image"] = fwd / max(1, out["n_images"])
            out["jobs"][f"{a}-{n}"]["backward_passes_per_image"] = bwd / max(1, out["n_images"])
    names = attacks["attack"].astype(str) + "-" + attacks["norm"].astype(str)
    for n, g in best.groupby("norm"):
        out[f"median_best_{n}"] = float(g["best"].median())
        out[f"mean_best_{n}"] = float(g["best"].replace(math.inf, np.nan).mean())
        out[f"unbroken_{n}"] = int(np.isinf(g["best"]).sum())
        broken = g[np.isfinite(g["best"]) & (g["best"] > 0)]
        dist = attacks[f"dist_{n}"].astype(float).where(attacks["success"].astype(bool), math.inf)
        per_job = pd.DataFrame({"image": attacks["image"].values, "job": names.values, "d": dist.values})
        per_job = per_job[per_job["image"].isin(set(broken["image"]))]
        best_of = broken.set_index("image")["best"]
        ref = best_of.reindex(per_job["image"].values).values
        within = per_job[per_job["d"].values <= 1.01 * ref].groupby("job")["image"].nunique()
        tied = per_job[per_job["d"].values <= (1 + TIE_RTOL) * ref].groupby("job")["image"].nunique()
        chosen = broken["best_attack"].value_counts()
        out[f"wins_{n}"] = {
            "n_broken": int(len(broken)),
            **{job: {"best": int(chosen.get(job, 0)), "tied_best": int(tied.get(job, 0)),
                     "within_1pct": int(within.get(job, 0))}
               for job in dict.fromkeys(names)},
        }
    return out


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
    """Images finite and in [0, 1], logits ``[B, K]``, labels in ``[0, K)``, distinct indices; ``idx`` as int64."""
    check_unit_images(x)
    if not (len(x) == len(y) == len(idx)):
        raise ConfigError(f"x, y, idx must have the same length, got {len(x)}, {len(y)}, {len(idx)}")
    idx = torch.as_tensor(idx).to(torch.int64)
    if len(torch.unique(idx)) != len(idx):
        raise ConfigError("idx must hold distinct dataset indices (one row per image)")
    if len(x):
        check_labels(y, model_classes(model, x))
    return idx


def run_attack_suite(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, cfg: AttackConfig, run=None,
                     progress: bool = True, base: Optional["SuiteResult"] = None) -> SuiteResult:
    """Attack the images with every job of ``cfg``; best distances; checks; write into ``run``.

    Args:
        model: returns logits for inputs in [0, 1] (put in eval mode during the attacks).
        x: ``[N, C, H, W]`` images, finite and in [0, 1]; ``y``: ``[N]`` labels in ``[0, K)``; ``idx``: ``[N]``
            their dataset indices (the ``image`` column; also the per-image key of the attacks' random numbers).
            Anything else is a :class:`~paperlib.config.ConfigError` before any attack runs.
        cfg: the :class:`AttackConfig`.
        run: a :class:`~paperlib.runs.Run` to write ``attacks.csv``, ``best.csv``, ``checks.json`` and the
            per-batch checkpoint into (None: compute in memory only). It is started (``config.json``) if
            needed but not marked finished (use :func:`attack_model` for that).
        progress: show tqdm bars.
        base: a finished suite of the same config without escalation on the same images, used as the first
            phase instead of recomputing it (``cfg.escalate > 0`` only; :func:`attack_model` finds it).

    Returns:
        :class:`SuiteResult`.
    """
    idx = _check_inputs(model, x, y, idx)
    if run is not None:
        run.start()
    base_checks = None
    if base is not None:
        if not cfg.escalate:
            raise ConfigError("a base suite is only reused by an escalating config (escalate > 0)")
        attacks, info, convergence, base_checks = _from_base(base, idx)
    else:
        attacks, info = _attack_batches(model, x, y, idx, cfg, run=run, progress=progress, tag="suite")
        convergence = None
        if cfg.convergence_n > 0:
            m = min(cfg.convergence_n, len(x))
            doubled, _ = _attack_batches(model, x[:m], y[:m], idx[:m], dataclasses.replace(cfg.scaled(2)),
                                         run=run, progress=progress, tag="doubled")
            sub = attacks[attacks["image"].isin(set(idx[:m].tolist()))]
            convergence = _convergence(sub, doubled, cfg.norms, m, cfg.convergence_tail)
    escalation: list[dict] = []
    for r in range(1, cfg.escalate + 1):
        failing = convergence_failures(convergence, cfg.convergence_tol, cfg.convergence_tail)
        matched = [n for n in cfg.escalate_norms if n not in failing] if r == 1 else []
        if matched:  # escalated to match a compared model's budget (see escalate_norms)
            failing = [n for n in cfg.norms if n in failing or n in matched]
        if not failing:
            break
        attacks, convergence, record = _escalation_round(model, x, y, idx, cfg, r, failing, attacks, info,
                                                         convergence, run=run, progress=progress)
        record["matched"] = matched
        escalation.append(record)
    best = best_distances(attacks, cfg.norms)
    checks = run_checks(model, x, y, attacks, best, cfg, stats=info["stats"], convergence=convergence)
    if base_checks is not None:
        checks = _with_base_checks(checks, base_checks)
    summary = summarize(attacks, best, info["seconds"], info["passes"])
    summary["convergence"] = convergence
    if cfg.escalate:
        summary["escalation"] = escalation
        summary["reused_first_phase"] = base is not None
    summary["checks_passed"] = all(c[1] for c in checks)
    reference = best_all = None
    if cfg.reference_attacks:
        reference, ref_info = _reference_batches(model, x, y, idx, cfg, run=run, progress=progress)
        best_all = best_distances(pd.concat([attacks, reference[ATTACK_COLUMNS]], ignore_index=True), cfg.norms)
        summary["reference"] = _summarize_reference(attacks, best, reference, best_all, cfg, ref_info)
    if run is not None:
        run.write_table("attacks.csv", attacks)
        run.write_table("best.csv", best)
        if reference is not None:
            run.write_table("reference.csv", reference)
            run.write_table("best_all.csv", best_all)
        run.write_json("checks.json", [{"name": c[0], "passed": bool(c[1]), "message": c[2]} for c in checks])
        run.write_json("summary.json", summary)
    return SuiteResult(attacks=attacks, best=best, checks=checks, summary=summary, reference=reference,
                       best_all=best_all)


def _convergence(before_rows: pd.DataFrame, after_rows: pd.DataFrame, norms: Sequence[str], m: int,
                 tail: Optional[float]) -> dict:
    """The convergence check's record: per norm the median best distance of the ``m`` re-attacked images with
    the current budgets (``before_rows``) and with them doubled (``after_rows``), and with ``tail`` the
    per-image pairs (:func:`~paperlib.attacks.checks.check_convergence`)."""
    norms = tuple(norms)
    before, after = best_distances(before_rows, norms), best_distances(after_rows, norms)
    out: dict[str, Any] = {n: (float(before[before["norm"] == n]["best"].median()),
                               float(after[after["norm"] == n]["best"].median())) for n in norms}
    out["n"] = m
    if tail is not None:  # per-image pairs for the tail check (only when it is asked for)
        for n in norms:
            b = before[before["norm"] == n].set_index("image")["best"]
            a = after[after["norm"] == n].set_index("image")["best"].reindex(b.index)
            out[f"per_image_{n}"] = [b.tolist(), a.tolist()]
    return out


def _job_distance(rows: pd.DataFrame) -> np.ndarray:
    """Each row's distance in its own norm, infinite where the attack failed."""
    d = np.where(rows["norm"].to_numpy() == "l2", rows["dist_l2"].to_numpy(float), rows["dist_linf"].to_numpy(float))
    return np.where(rows["success"].to_numpy(bool), d, math.inf)


def keep_closer(rows: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (the suite's ``attacks.csv``) where each (image, attack, norm) row of ``more`` replaces its row
    of ``rows`` if its adversarial is strictly closer (in the row's norm); the order of ``rows`` is kept, so the
    best-distance table's ties go to the same job as before. Every row of ``more`` must have one in ``rows``."""
    out = rows.reset_index(drop=True).copy()
    more = more.reset_index(drop=True)
    pos = {k: i for i, k in enumerate(zip(out["image"].tolist(), out["attack"].tolist(), out["norm"].tolist()))}
    keys = list(zip(more["image"].tolist(), more["attack"].tolist(), more["norm"].tolist()))
    missing = [k for k in keys if k not in pos]
    if missing:
        raise ConfigError(f"{len(missing)} re-attacked (image, attack, norm) rows have no row to replace, e.g. "
                          f"{missing[0]}")
    at = np.array([pos[k] for k in keys], dtype=np.int64)
    better = _job_distance(more) < _job_distance(out.iloc[at])
    if better.any():
        out.iloc[at[better], :] = more.iloc[np.flatnonzero(better)][out.columns].to_numpy()
    out["success"] = out["success"].astype(bool)
    return out


def _escalation_round(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, cfg: AttackConfig, r: int,
                      norms: list[str], attacks: pd.DataFrame, info: dict, convergence: dict, *, run=None,
                      progress: bool = True) -> tuple[pd.DataFrame, dict, dict]:
    """Round ``r`` of ``cfg.escalate``: the gradient attacks of ``norms`` at ``2**r`` times the budgets on every
    image (checkpoint tag ``escalate<r>``), each row kept where it is closer (:func:`keep_closer`; its passes and
    seconds added to its job's), then the convergence check of those norms again with the new budgets doubled on
    the first ``convergence_n`` images (tag ``doubled<r>``). Returns the merged rows, the updated convergence
    record and this round's record for the summary."""
    factor, n = 2 ** r, len(x)
    more, minfo = _attack_batches(model, x, y, idx, cfg.escalated(factor, norms), run=run, progress=progress,
                                  tag=f"escalate{r}")
    attacks = keep_closer(attacks, more)
    for key, (fwd, bwd) in minfo["passes"].items():
        prev = info["passes"].get(key, [0, 0])
        info["passes"][key] = [prev[0] + fwd, prev[1] + bwd]
    for key, sec in minfo["seconds"].items():
        info["seconds"][key] = info["seconds"].get(key, 0.0) + sec
    for key, st in minfo["stats"].items():
        prev = info["stats"].get(key, {})
        info["stats"][key] = {k: max(v, prev.get(k, 0.0)) for k, v in st.items()}
    m = min(cfg.convergence_n, n)
    doubled, dinfo = _attack_batches(model, x[:m], y[:m], idx[:m], cfg.escalated(2 * factor, norms), run=run,
                                     progress=progress, tag=f"doubled{r}")
    sub = attacks[attacks["image"].isin(set(idx[:m].tolist()))]
    # the doubled budgets' rows, each kept where closer, against the escalated rows: the improvement doubling buys
    new = _convergence(sub, keep_closer(sub, doubled), norms, m, cfg.convergence_tail)
    convergence = {**convergence, **{k: v for k, v in new.items() if k != "n"}}
    convergence["factor"] = {**convergence.get("factor", {}), **{nm: factor for nm in norms}}
    record = {"round": r, "factor": factor, "norms": list(norms),
              "passes_per_image": {k: [v[0] / n, v[1] / n] for k, v in minfo["passes"].items()},
              "seconds_per_image": {k: v / n for k, v in minfo["seconds"].items()},
              "check_passes_per_image": {k: [v[0] / n, v[1] / n] for k, v in dinfo["passes"].items()},
              "convergence": {nm: new[nm] for nm in norms}}
    return attacks, convergence, record


def _from_base(base: "SuiteResult", idx: Tensor) -> tuple[pd.DataFrame, dict, Optional[dict], dict]:
    """The first phase taken from a finished suite without escalation: its rows, its passes and seconds (totals
    recovered from the per-image numbers of its summary), its convergence record and its checks (the
    adversarials' box and ball statistics are not stored, so their checks are carried over)."""
    images = set(base.attacks["image"].tolist())
    if images != set(idx.tolist()):
        raise ConfigError(f"the reused suite attacked {len(images)} other images than these {len(idx)}")
    n = int(base.summary.get("n_images") or len(images))
    jobs = base.summary.get("jobs", {})
    info = {"stats": {},
            "passes": {k: [int(round(v.get("forward_passes_per_image", 0) * n)),
                           int(round(v.get("backward_passes_per_image", 0) * n))] for k, v in jobs.items()},
            "seconds": {k: float(v["seconds_per_image"]) * n for k, v in jobs.items()
                        if v.get("seconds_per_image") is not None}}
    return base.attacks.copy(), info, base.summary.get("convergence"), {c[0]: c for c in base.checks}


#: Checks that read the adversarials' box and ball statistics, which a reused first phase does not store
_STATS_CHECKS = ("adversarials_in_unit_box", "fixed_eps_in_ball")


def _with_base_checks(checks: list, base_checks: dict) -> list:
    """``checks`` with the statistics checks joined to the reused first phase's: they pass only if both did."""
    out = []
    for c in checks:
        b = base_checks.get(c[0])
        if c[0] in _STATS_CHECKS and b is not None:
            c = Check(c[0], bool(c[1] and b[1]), f"first phase (reused run): {b[2]}; escalation: {c[2]}")
        out.append(c)
    return out


def load_suite(run) -> SuiteResult:
    """Load a suite's results back from its run (``attacks.csv``, ``best.csv``, ``checks.json``)."""
    attacks = run.read_table("attacks.csv")
    attacks["success"] = attacks["success"].astype(bool)
    best = run.read_table("best.csv")
    best["best_attack"] = best["best_attack"].astype(str)
    checks = [Check(c["name"], bool(c["passed"]), c["message"]) for c in run.read_json("checks.json")]
    summary = run.read_json("summary.json") if run.exists("summary.json") else {}
    reference = best_all = None
    if run.exists("reference.csv"):
        reference = run.read_table("reference.csv")
        reference["success"] = reference["success"].astype(bool)
        best_all = run.read_table("best_all.csv")
        best_all["best_attack"] = best_all["best_attack"].astype(str)
    return SuiteResult(attacks=attacks, best=best, checks=checks, summary=summary, reference=reference,
                       best_all=best_all)


def attack_model(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, cfg: AttackConfig, run, *,
                 progress: bool = True, force: bool = False) -> SuiteResult:
    """Run or load (:func:`~paperlib.stages.run_or_load`): if ``run`` finished with the same config load it, else
    run the suite (resuming) and mark the run finished with the summary as ``metrics.json``. ``run`` must be a
    run of ``cfg`` (e.g. :func:`~paperlib.stages.stage_subrun` of the trained model's run); the result is always
    the one read back from the run."""
    check_unit_images(x)  # the labels are checked against the model's logits when the suite runs

    def compute(r) -> SuiteResult:
        return run_attack_suite(model, x, y, idx, cfg, run=r, progress=progress, base=_reusable_base(r, cfg))

    return run_or_load(run, cfg, compute, metrics=lambda result: result.summary, load=load_suite, force=force,
                       reload=True)


def _reusable_base(run, cfg: AttackConfig) -> Optional[SuiteResult]:
    """The finished suite of ``cfg`` without escalation beside ``run`` (same model), if ``cfg`` escalates and
    there is one: the escalating suite reuses it as its first phase."""
    if not cfg.escalate or run is None:
        return None
    bcfg = dataclasses.replace(cfg, escalate=0, escalate_norms=())
    sibling = Run(Path(run.path).parent / attack_run_name(bcfg), bcfg)
    return load_suite(sibling) if sibling.is_finished() else None


# --------------------------------------------------------------------------------------------------
# Reference attacks (not in the paper; see paperlib.attacks.reference)
# --------------------------------------------------------------------------------------------------


def _reference_key(attack: str, norm: str, eps: Optional[float]) -> str:
    """A reference job's name in the summary: ``'fab-l2'``, ``'apgd-ce-linf@0.0313725'``."""
    return f"{attack}-{norm}" + ("" if eps is None else f"@{eps:.6g}")


def _reference_batches(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, cfg: AttackConfig, *, run=None,
                       progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Run :meth:`~paperlib.attacks.suite.AttackConfig.reference_jobs` batch by batch, resumable per job under
    the checkpoint tag 'reference' (a reference job on a batch of 100 images can take half an hour on a CPU).

    A fixed-eps attack runs on the images no earlier fixed-eps attack of the same norm and radius broke
    (AutoAttack's cascade), so an image has a row for each attack up to the first that broke it."""
    from tqdm import tqdm

    tag = "reference"
    jobs = cfg.reference_jobs()
    starts = list(range(0, len(x), cfg.batch_size))
    # jobs_done: jobs finished on batch batches_done; broken: that batch's cascade state, {"norm@eps": [bool]}
    state: dict[str, Any] = {"batches_done": 0, "jobs_done": 0, "broken": {}, "rows": [], "seconds": {},
                             "passes": {}}
    ck = run.load_checkpoint() if run is not None else None
    if ck is not None and ck.get(tag, {}).get("batches_done") is not None:
        state = {"jobs_done": 0, "broken": {}, **ck[tag]}  # a checkpoint of the per-batch version has neither
    others = {k: v for k, v in (ck or {}).items() if k != tag}
    counted = PassCounter(model)
    bar = tqdm(total=len(starts) * len(jobs), desc="reference attacks", disable=not progress, leave=False,
               initial=state["batches_done"] * len(jobs) + state["jobs_done"])
    for b in range(state["batches_done"], len(starts)):
        s = starts[b]
        xb, yb, ib = x[s:s + cfg.batch_size], y[s:s + cfg.batch_size], idx[s:s + cfg.batch_size]
        broken: dict[tuple[str, float], Tensor] = {}
        for key, flags in state["broken"].items():
            norm, eps = key.split("@")
            broken[(norm, float(eps))] = torch.tensor(flags, dtype=torch.bool)
        for j, (attack_name, norm, eps) in enumerate(jobs):
            if j < state["jobs_done"]:
                continue
            atk = cfg.build_reference(attack_name, norm)
            todo = torch.ones(len(xb), dtype=torch.bool) if eps is None else ~broken.get(
                (norm, eps), torch.zeros(len(xb), dtype=torch.bool))
            rows = todo.nonzero().flatten()
            kw = {} if eps is None else {"eps": eps}
            res = _counted_call(counted, state, _reference_key(attack_name, norm, eps),
                                lambda: atk(counted, xb[rows], yb[rows], seed=cfg.seed, keys=ib[rows], **kw)
                                if rows.numel() else None)
            if rows.numel():
                if eps is not None:
                    done = broken.get((norm, eps), torch.zeros(len(xb), dtype=torch.bool)).clone()
                    done[rows] = res.success.cpu()
                    broken[(norm, eps)] = done
                state["rows"].extend(zip(
                    ib[rows].tolist(), yb[rows].tolist(), [attack_name] * len(rows), [norm] * len(rows),
                    res.success.tolist(), res.dist_l2.tolist(), res.dist_linf.tolist(),
                    [math.nan if eps is None else float(eps)] * len(rows), [False] * len(rows)))
            bar.update(1)
            last = j + 1 == len(jobs)
            state["batches_done"], state["jobs_done"] = (b + 1, 0) if last else (b, j + 1)
            state["broken"] = {} if last else {f"{n}@{e!r}": v.tolist() for (n, e), v in broken.items()}
            if run is not None:
                run.save_checkpoint({**others, tag: state})
                run.log(f"{tag}: batch {b + 1}/{len(starts)}, job {j + 1}/{len(jobs)} "
                        f"({_reference_key(attack_name, norm, eps)}) done")
    bar.close()
    table = pd.DataFrame(state["rows"], columns=REFERENCE_COLUMNS)
    table["success"] = table["success"].astype(bool)
    table["in_paper"] = table["in_paper"].astype(bool)
    return table, {"seconds": state["seconds"], "passes": state["passes"]}


def reference_cross_check(best: pd.DataFrame, reference: pd.DataFrame, norms: Sequence[str] = ("l2", "linf"),
                          eps: Optional[dict] = None, tol: float = 0.01) -> dict:
    """The suite against the reference attacks, per norm (issue 12's cross-check).

    Args:
        best: the paper's suite ``best.csv`` (one row per image and norm).
        reference: ``reference.csv`` (:data:`~paperlib.attacks.suite.REFERENCE_COLUMNS`).
        norms: the norms to compare.
        eps: ``{norm: [radius, ...]}``: the fixed-eps radii to compare errors at (default: the radii in
            ``reference``).
        tol: relative slack of "as close as the references" (0.01: within 1%).

    Returns:
        Per norm: ``n_images`` (the images the model classifies correctly), ``within_pct``: % of them whose
        suite best is at most ``(1 + tol)`` times the smallest distance of any successful reference adversarial
        (images no reference broke count as within), ``closer_by_10pct``: % where a reference is more than 10%
        closer, ``median_ratio``: median of suite best / reference minimum over images both broke; and
        ``errors``: per radius the empirical % error of the suite (``suite``), of AutoAttack's fixed-eps attacks
        (``autoattack``: an image counts when clean-misclassified or broken by APGD-CE, APGD-T or Square at that
        radius) and of the best over both (``best_of_all``).
    """
    out: dict[str, Any] = {}
    for norm in norms:
        norm = normalize_norm(norm)
        b = best[best["norm"] == norm].set_index("image")["best"].astype(float)
        ref = reference[reference["norm"] == norm]
        d = ref[f"dist_{norm}"].astype(float).where(ref["success"].astype(bool), math.inf)
        ref_min = pd.Series(d.values, index=ref["image"].values).groupby(level=0).min().reindex(b.index,
                                                                                            fill_value=math.inf)
        correct = b.index[b.values > 0]  # clean-misclassified images have best 0 in every table
        bc, rc = b.reindex(correct).values, ref_min.reindex(correct).values
        within = bc <= (1 + tol) * rc
        both = np.isfinite(bc) & np.isfinite(rc)
        res: dict[str, Any] = {
            "n_images": int(len(correct)),
            "within_pct": float(100 * within.mean()) if len(correct) else float("nan"),
            "closer_by_10pct": float(100 * (rc * 1.1 < bc).mean()) if len(correct) else float("nan"),
            "median_ratio": float(np.median(bc[both] / rc[both])) if both.any() else float("nan"),
        }
        radii = (eps or {}).get(norm)
        fixed = ref[ref["attack"].isin(REFERENCE_FIXED_EPS)]
        if radii is None:
            radii = sorted(set(fixed["eps"].dropna().astype(float)))
        errors = {}
        all_min = np.minimum(b.values, ref_min.reindex(b.index).values)
        for e in radii:
            at = fixed[np.isclose(fixed["eps"].astype(float), e, rtol=1e-9, atol=0)]
            hit = set(at.loc[at["success"].astype(bool), "image"]) | set(b.index[b.values == 0])
            errors[f"{e:.6g}"] = {
                "suite": float(100 * np.mean(b.values <= e)),
                "autoattack": float(100 * np.mean([i in hit for i in b.index])),
                "best_of_all": float(100 * np.mean(all_min <= e)),
            }
        res["errors"] = errors
        out[norm] = res
    return out


def _summarize_reference(attacks: pd.DataFrame, best: pd.DataFrame, reference: pd.DataFrame,
                         best_all: pd.DataFrame, cfg: AttackConfig, info: dict) -> dict:
    """The summary's ``reference`` entry: per reference job its success, median distance, passes and seconds
    per image (over all the suite's images); the cross-check; the paper suite's vs the best-of-all medians."""
    n = max(1, int(attacks["image"].nunique()))
    jobs: dict[str, Any] = {}
    for name, norm, eps in cfg.reference_jobs():
        key = _reference_key(name, norm, eps)
        g = reference[(reference["attack"] == name) & (reference["norm"] == norm)]
        g = g[g["eps"].isna()] if eps is None else g[np.isclose(g["eps"].astype(float), eps, rtol=1e-9, atol=0)]
        ok = g[g["success"] & (g[f"dist_{norm}"] > 0)]
        fwd, bwd = info["passes"].get(key, [0, 0])
        jobs[key] = {"attacked": int(len(g)), "success_pct": float(100 * g["success"].mean()) if len(g) else None,
                     f"median_{norm}": float(ok[f"dist_{norm}"].median()) if len(ok) else None,
                     "seconds_per_image": info["seconds"].get(key, 0.0) / n, "forward_passes_per_image": fwd / n,
                     "backward_passes_per_image": bwd / n}
    eps = {nrm: list(getattr(cfg, f"reference_eps_{nrm}")) for nrm in cfg.norms}
    out: dict[str, Any] = {"in_paper": False, "jobs": jobs,
                           "cross_check": reference_cross_check(best, reference, cfg.norms, eps)}
    for nrm in cfg.norms:
        out[f"median_best_{nrm}"] = {"paper_suite": float(best[best["norm"] == nrm]["best"].median()),
                                     "best_of_all": float(best_all[best_all["norm"] == nrm]["best"].median())}
    return out


#: The attack stage: sub-runs ``attack-<config hash>`` of a trained model's run.
STAGE = register_stage(Stage("attack", AttackConfig, attack_run_name, load_suite))
