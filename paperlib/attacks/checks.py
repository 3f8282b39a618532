"""Automatic evaluation checks, reported with the attack results (AutoAttack ``checks.py`` spirit).

Weak or buggy attacks make every robustness table look better than the truth, so the suite checks itself
and the verdicts are saved (``checks.json``) and shown in the book, not only logged. Each check is a
``Check(name, passed, message)`` (a tuple); a failed check also logs a warning saying what to do.

* ``model_returns_logits`` -- the model's outputs are not probabilities (rows summing to 1 in [0, 1]);
* ``deterministic_forward`` -- two forward passes agree (a randomized model defeats distance estimates);
* ``adversarials_in_unit_box`` -- every returned adversarial lies in [0, 1];
* ``fixed_eps_in_ball`` -- adversarials of ball-bounded attacks lie inside their ball;
* ``minimal_attacks_succeed`` -- each minimal-distance attack succeeds on >= ``min_success`` of the images;
* ``distances_valid`` / ``error_curve_monotone`` -- best distances are >= 0 and not NaN; the error curve is
  non-decreasing in eps;
* ``no_gradient_masking`` -- few images where the gradient-free Boundary attack beats every gradient attack
  by a wide margin (``boundary < masking_ratio * best gradient``);
* ``attacks_converged`` -- doubling every iteration budget on a subsample changes the median best distance
  by less than ``convergence_tol`` and, with ``convergence_tail``, improves at most that share of the images
  by more than ``convergence_tol``.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from paperlib.attacks.base import eval_mode
from paperlib.metrics import error_curve

__all__ = ["Check", "run_checks", "check_logits", "check_deterministic", "check_unit_box", "check_in_ball",
           "check_success", "check_error_curve", "check_gradient_masking", "check_convergence", "convergence_failures"]

logger = logging.getLogger("paperlib.attacks")

BOX_TOL = 1e-6  # float32 rounding at the box edges
BALL_TOL = 1e-5  # relative to eps
TAIL_MIN_IMAGES = 50  # the convergence check's tail share is reported as coarse below this many re-attacked images
#: The suite's attacks that use gradients (``attack`` in ``attacks.csv``); the Boundary attack is the
#: gradient-free reference of :func:`check_gradient_masking`.
GRADIENT_ATTACKS = ("pgd", "cw", "logbarrier")


class Check(NamedTuple):
    """One check's verdict: ``(name, passed, message)``."""

    name: str
    passed: bool
    message: str


def check_logits(model: nn.Module, x: torch.Tensor) -> Check:
    """The model must return logits, not probabilities (attacks' margins and the barrier assume logits)."""
    with eval_mode(model), torch.no_grad():
        out = model(x)
    probs = bool(((out >= 0) & (out <= 1)).all()) and bool(torch.allclose(out.sum(1), torch.ones(len(out),
                                                                           dtype=out.dtype), atol=1e-4))
    if probs:
        return Check("model_returns_logits", False, "the model's outputs look like probabilities (in [0, 1], rows "
                     "summing to 1); return logits (remove the final softmax)")
    return Check("model_returns_logits", True, "outputs are logits")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """Two forward passes must agree (a randomized forward makes distances meaningless)."""
    with eval_mode(model), torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if diff > 1e-5 * max(1.0, float(a.abs().max())):
        return Check("deterministic_forward", False, f"two forward passes differ by {diff:.3g}; the model is "
                     "randomized (dropout in eval mode? noise?); use EOT attacks or fix the forward")
    return Check("deterministic_forward", True, "two forward passes agree")


def check_unit_box(stats: dict) -> Check:
    """Every adversarial inside [0, 1] (``stats[job]['box_violation']`` is the largest excursion)."""
    bad = {k: v["box_violation"] for k, v in stats.items() if v.get("box_violation", 0.0) > BOX_TOL}
    if bad:
        return Check("adversarials_in_unit_box", False, "adversarials outside [0, 1]: " + ", ".join(
            f"{k} by {v:.3g}" for k, v in bad.items()) + "; an attack is not clipping to the image domain")
    return Check("adversarials_in_unit_box", True, f"all adversarials of {len(stats)} attack(s) are in [0, 1]")


def check_in_ball(stats: dict) -> Check:
    """Ball-bounded attacks' adversarials inside their ball (``stats[job]['ball_violation']``)."""
    jobs = {k: v["ball_violation"] for k, v in stats.items() if "ball_violation" in v}
    bad = {k: v for k, v in jobs.items() if v > BALL_TOL}
    if bad:
        return Check("fixed_eps_in_ball", False, "adversarials outside their eps-ball: " + ", ".join(
            f"{k} by {v:.3g}" for k, v in bad.items()) + "; the projection is broken")
    if not jobs:
        return Check("fixed_eps_in_ball", True, "no ball-bounded attack ran")
    return Check("fixed_eps_in_ball", True, f"all adversarials of {', '.join(jobs)} lie inside their eps-ball")


def check_success(attacks: pd.DataFrame, min_success: float) -> Check:
    """Each minimal-distance attack should break (nearly) every clean-correct image."""
    correct = attacks.groupby("image")["dist_l2"].min() != 0
    images = set(correct.index[correct])
    rates = {}
    for (a, n), g in attacks[attacks["image"].isin(images)].groupby(["attack", "norm"], sort=False):
        rates[f"{a}-{n}"] = float(g["success"].mean()) if len(g) else 1.0
    low = {k: r for k, r in rates.items() if r < min_success}
    text = ", ".join(f"{k} {100 * r:.1f}%" for k, r in rates.items())
    if low:
        return Check("minimal_attacks_succeed", False, f"success rates {text}; below {100 * min_success:.0f}%: "
                     f"{', '.join(low)} -- raise their iteration budgets (a minimal-distance attack should "
                     "break every image)")
    return Check("minimal_attacks_succeed", True, f"success rates {text}")


def check_error_curve(best: pd.DataFrame) -> list[Check]:
    """Best distances valid (>= 0, not NaN) and the error curve non-decreasing in eps, per norm."""
    out = []
    vals = best["best"].to_numpy(dtype=np.float64)
    bad = int(np.isnan(vals).sum() + (vals < 0).sum())
    out.append(Check("distances_valid", bad == 0, "all best distances are >= 0 and not NaN" if bad == 0 else
                     f"{bad} best distance(s) are NaN or negative; the suite's bookkeeping is broken"))
    msgs, ok = [], True
    for norm, g in best.groupby("norm"):
        v = g["best"].to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        top = float(finite.max()) if finite.size else 1.0
        grid = np.linspace(0.0, max(top, 1e-12) * 1.1, 200)
        curve = error_curve(v, grid)["error_pct"].to_numpy()
        mono = bool(np.all(np.diff(curve) >= -1e-12)) and not np.isnan(curve).any()
        ok &= mono
        msgs.append(f"{norm}: {'monotone' if mono else 'NOT monotone'} ({curve[0]:.1f}% at 0 to {curve[-1]:.1f}%)")
    out.append(Check("error_curve_monotone", ok, "; ".join(msgs)))
    return out


def check_gradient_masking(attacks: pd.DataFrame, ratio: float, max_fraction: float) -> Check:
    """Flag images where Boundary's l2 distance < ``ratio`` x the best gradient attack's l2 distance."""
    bd = attacks[(attacks["attack"] == "boundary") & attacks["success"]]
    grad = attacks[attacks["attack"].isin(GRADIENT_ATTACKS)]
    if bd.empty or grad.empty:
        return Check("no_gradient_masking", True, "not checked: needs the Boundary attack and a gradient attack")
    g = grad.assign(d=grad["dist_l2"].where(grad["success"], math.inf)).groupby("image")["d"].min()
    b = bd.set_index("image")["dist_l2"]
    both = pd.concat([b.rename("boundary"), g.rename("gradient")], axis=1, join="inner")
    both = both[both["boundary"] > 0]
    flagged = both[both["boundary"] < ratio * both["gradient"]]
    frac = len(flagged) / max(1, len(both))
    ids = ", ".join(map(str, flagged.index[:10].tolist()))
    msg = (f"{len(flagged)} of {len(both)} images ({100 * frac:.1f}%) where Boundary beats every gradient attack "
           f"by more than {1 / ratio:.3g}x" + (f" (images {ids}{' ...' if len(flagged) > 10 else ''})" if len(flagged)
                                               else ""))
    if frac > max_fraction:
        return Check("no_gradient_masking", False, msg + "; possible gradient masking: inspect these images, "
                     "trust the gradient-free distances")
    return Check("no_gradient_masking", True, msg)


def _tail_share(before: list, after: list, tol: float) -> tuple[int, int]:
    """``(improved, counted)``: of the images with a positive best distance before, how many the doubled
    budgets improved by more than ``tol`` (relative; an image broken only with the doubled budgets counts)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    keep = b > 0  # clean-misclassified images (0) cannot improve
    b, a = b[keep], a[keep]
    with np.errstate(invalid="ignore"):
        improved = np.where(np.isfinite(b), a < (1 - tol) * b, np.isfinite(a))
    return int(improved.sum()), int(len(b))


def _norm_converged(convergence: dict, norm: str, tol: float, tail: Optional[float]) -> tuple[bool, str]:
    """Whether one norm of ``convergence`` passes (median change below ``tol``; with ``tail``, at most that share
    of the images improved by more than ``tol``), and its part of the check's message."""
    before, after = convergence[norm]
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        change = 0.0 if before == after else math.inf
    else:
        change = abs(after - before) / before
    ok = change < tol
    text = f"{norm}: median {before:.4g} -> {after:.4g} ({100 * change:.2f}%)"
    per = convergence.get(f"per_image_{norm}")
    if tail is not None and per is not None:
        improved, counted = _tail_share(per[0], per[1], tol)
        share = improved / max(1, counted)
        ok &= share <= tail
        text += (f", {improved} of {counted} images ({100 * share:.1f}%) improved by more than "
                 f"{100 * tol:.0f}% (at most {100 * tail:.1f}% allowed)"
                 + (f"; only {convergence.get('n')} images re-attacked: raise convergence_n to "
                    f"{TAIL_MIN_IMAGES} or more for a tail share" if (convergence.get("n") or 0) < TAIL_MIN_IMAGES
                    else ""))
    factor = (convergence.get("factor") or {}).get(norm, 1)
    if factor > 1:
        text += f" (budgets x{2 * factor} against x{factor}, after escalation)"
    return ok, text


def _convergence_norms(convergence: dict) -> list[str]:
    return [k for k in convergence if k not in ("n", "factor") and not k.startswith("per_image_")]


def convergence_failures(convergence: Optional[dict], tol: float, tail: Optional[float] = None) -> list[str]:
    """The norms whose convergence check fails (see :func:`check_convergence`), in the order of ``convergence``."""
    if not convergence:
        return []
    return [n for n in _convergence_norms(convergence) if not _norm_converged(convergence, n, tol, tail)[0]]


def check_convergence(convergence: Optional[dict], tol: float, tail: Optional[float] = None) -> Check:
    """Doubling every budget on a subsample must change the median best distance by less than ``tol``.

    With ``tail`` (a fraction; ``AttackConfig.convergence_tail``) it also looks at the tail: the check fails
    when more than ``tail`` of the re-attacked images improve their best distance by more than ``tol``
    (``convergence['per_image_<norm>'] = [before, after]``, per image). The median alone cannot see a weak tail:
    a budget that leaves a tenth of the images far from converged moves the median little. After the suite
    escalated a norm's budgets (``AttackConfig.escalate``), ``convergence['factor'][norm]`` is the budget
    multiple the check compared against its double.
    """
    if not convergence:
        return Check("attacks_converged", True, "not checked (convergence_n = 0)")
    parts, ok = [], True
    for norm in _convergence_norms(convergence):
        passed, text = _norm_converged(convergence, norm, tol, tail)
        ok &= passed
        parts.append(text)
    msg = f"doubled budgets on {convergence.get('n')} images: " + "; ".join(parts)
    if not ok:
        return Check("attacks_converged", False, msg + f"; more than {100 * tol:.0f}%: the attacks have not "
                     "converged, raise the iteration budgets")
    return Check("attacks_converged", True, msg)


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: pd.DataFrame, best: pd.DataFrame,
               cfg, *, stats: dict, convergence: Optional[dict]) -> list[Check]:
    """All checks of the suite, in a fixed order; failures are logged as warnings."""
    probe = x[: min(len(x), 64)]
    checks = [check_logits(model, probe), check_deterministic(model, probe), check_unit_box(stats),
              check_in_ball(stats), check_success(attacks, cfg.min_success), *check_error_curve(best),
              check_gradient_masking(attacks, cfg.masking_ratio, cfg.masking_max_fraction),
              check_convergence(convergence, cfg.convergence_tol, tail=getattr(cfg, "convergence_tail", None))]
    for c in checks:
        if not c.passed:
            logger.warning("attack check %s failed: %s", c.name, c.message)
    return checks
