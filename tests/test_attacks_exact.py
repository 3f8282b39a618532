"""Minimal-distance attacks against the closed form of a linear classifier (logits = W x + b).

For the predicted class c the decision boundary with class j is the hyperplane (w_c - w_j) . x + b_c - b_j = 0;
its l2 distance from x is (z_c - z_j) / ||w_c - w_j||_2 and its linf distance (z_c - z_j) / ||w_c - w_j||_1.
The minimal adversarial distance is the smallest of these over j, provided the closest point of that
hyperplane lies inside [0, 1] (asserted below: W, b and x are chosen so that it does).

Tolerances (float64 models, so rounding plays no part):
* PGD-l2, PGD-linf, CW-L2: every image within 2 % of the exact distance (the issue's tolerance). They must
  never beat it (a distance below the exact minimum would mean a bogus adversarial).
* LogBarrier-l2: within 2 % on a two-class model. With several classes two properties of the authors'
  algorithm show: it converges to the boundary of the class its random starting point falls into (not
  always the nearest), and its last barrier weight alpha0 * beta^14 = 0.0018 keeps the iterate a margin of
  about alpha / distance inside the adversarial region (measured 3-11 % excess at distances 0.1-0.25). There
  every adversarial must be real, never closer than the exact minimum, and within 25 % (the default, which the
  committed runs used). With ``refine_steps=20`` (bisection on the segment image -> adversarial) it is within
  2 %: tests/test_attacks_strength.py, as is linf with ``linf_step='box'``. The grid's LogBarrier
  (``AttackConfig.cheap()``, refinement on) with its outer leave rule off is within 2 % on seeds 0, 2 and 4;
  on seeds 1 and 3 some images converge to a facet that is not the nearest (a local minimum), tested as such.
* Boundary: within 5 % after 5000 steps: a decision-based random search that only ever accepts closer points converges
  slowly (foolbox runs 25000 steps; measured: 13 % worst excess after 3000 steps, 0.4 % after 5000). Its starting point is uniform noise,
  so its problem puts the boundary through the centre of the cube (uniform noise falls on both sides).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paperlib.attacks import BoundaryAttack, CarliniWagnerL2, LogBarrierAttack, MinimalPGD
from paperlib.attacks.suite import AttackConfig
from tests.helpers import linear_problem


def assert_close_to_exact(found: torch.Tensor, exact: torch.Tensor, rtol: float) -> None:
    ratio = found / exact
    assert bool(torch.isfinite(found).all()), "an attack failed on a linear model"
    assert float(ratio.min()) >= 1 - 1e-9, f"an adversarial beat the exact minimal distance: {ratio.min():.6f}"
    assert float(ratio.max()) <= 1 + rtol, f"worst excess {100 * (ratio.max() - 1):.2f}% > {100 * rtol}%"


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_minimal_pgd_matches_linear_closed_form_within_2pct(norm):
    model, x, y, exact_l2, exact_linf = linear_problem(10)
    res = MinimalPGD(norm=norm)(model, x, y, seed=0)  # the defaults: 40 steps per eps, 20 bisections
    assert bool(res.success.all())
    assert_close_to_exact(res.distance(norm), exact_l2 if norm == "l2" else exact_linf, 0.02)


def test_carlini_wagner_matches_linear_closed_form_within_2pct():
    model, x, y, exact_l2, _ = linear_problem(10)
    res = CarliniWagnerL2(steps=200, binary_search_steps=6)(model, x, y, seed=0)
    assert_close_to_exact(res.dist_l2, exact_l2, 0.02)


def test_logbarrier_l2_matches_two_class_closed_form_within_2pct():
    # budget cut from 15 x 500 to 15 x 100 inner steps for test speed (measured: still within 0.01 %)
    model, x, y, exact_l2, _ = linear_problem(2, n=4)
    res = LogBarrierAttack(norm="l2", max_inner=100)(model, x, y, seed=0)
    assert_close_to_exact(res.dist_l2, exact_l2, 0.02)


def test_logbarrier_l2_multiclass_is_valid_and_near_exact():
    # with 10 classes and small distances (0.12-0.25) the barrier's final weight alpha0 * beta^14 leaves the
    # iterate a margin of about alpha / distance inside the adversarial region: measured 3-11 % excess with the
    # default budget. Checked here: every adversarial is real, never closer than the exact minimum, within 25 %.
    model, x, y, exact_l2, _ = linear_problem(10, n=4)
    res = LogBarrierAttack(norm="l2", max_inner=100)(model, x, y, seed=0)
    assert bool(res.success.all())
    ratio = res.dist_l2 / exact_l2
    assert float(ratio.min()) >= 1 - 1e-9
    assert float(ratio.max()) <= 1.25


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_logbarrier_l2_multiclass_within_2pct_with_the_early_stopping_options(seed):
    # LogBarrier with the grid's early-stopping options (AttackConfig.cheap(): per-image early stopping, 10
    # refining bisections, the outer leave rule off) at 8 x 60 steps. Measured worst excess on 8 images: 0.7 %,
    # 0.4 %, 1.5 % (seeds 0, 2, 4); with the outer rule on, seed 4 ends 6.45x above (an image left the attack at
    # its start). The paper-scale grid itself runs LogBarrier l2 at 3 x 30 steps, where PGD with both losses
    # finds these images' adversarials (paperlib.evaluation.CHEAP_ATTACK_BUDGETS); at 3 x 30 the worst image of
    # seed 0 ends 2.38x above the exact distance. Seeds 1 and 3 are not here: the iterate converges to a facet that is
    # not the nearest (a local minimum; see the module docstring of paperlib.attacks.logbarrier and below).
    model, x, y, exact_l2, _ = linear_problem(10, n=8, seed=seed)
    cfg = AttackConfig.cheap(logbarrier_outer=8, logbarrier_inner=60)
    res = cfg.build("logbarrier", "l2")(model, x, y, seed=0)
    assert_close_to_exact(res.dist_l2, exact_l2, 0.02)


def test_logbarrier_l2_multiclass_local_minimum_is_a_real_facet():
    # seed 1: two of 8 images end 1.60x and 1.29x above the exact distance (the authors' 15 x 500 budget with
    # 20 bisections: 1.59x and 1.28x). The adversarial is real, never closer than the exact minimum, and lies on
    # the boundary of another class than the nearest one: the attack's limit, not a bookkeeping error.
    model, x, y, exact_l2, _ = linear_problem(10, n=8, seed=1)
    res = AttackConfig.cheap(logbarrier_outer=8, logbarrier_inner=60).build("logbarrier", "l2")(model, x, y, seed=0)
    assert bool(res.success.all())
    ratio = res.dist_l2 / exact_l2
    assert float(ratio.min()) >= 1 - 1e-9
    far = ratio > 1.02
    assert 1 <= int(far.sum()) <= 2, ratio
    # the facet it reached: the distance to the hyperplane of the class it ends in equals the distance found
    W, b = model[1].weight, model[1].bias
    with torch.no_grad():
        z = model(x)
        j = model(res.adversarials).argmax(1)
    rows = torch.arange(len(x))
    facet = (z[rows, y] - z[rows, j]) / (W[y] - W[j]).norm(dim=1)
    assert torch.allclose(res.dist_l2[far], facet[far], rtol=0.02)


def test_logbarrier_linf_is_valid_on_linear_model():
    # no closed-form tolerance for linf LogBarrier: its smooth-max step moves slowly (see the report), but
    # every adversarial it returns must be real and no closer than the exact minimum
    model, x, y, _, exact_linf = linear_problem(2, n=4)
    res = LogBarrierAttack(norm="linf", max_outer=3, max_inner=100)(model, x, y, seed=0)
    assert bool(res.success.all())
    assert float((res.dist_linf / exact_linf).min()) >= 1 - 1e-9


def two_class_centred_problem(n: int = 6, side: int = 8, seed: int = 0):
    """A two-class float64 linear model whose boundary passes through the centre of the cube (so uniform noise,
    the Boundary attack's starting point, falls on both sides) and images at l2 distance 0.3-0.8 from it."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    w = torch.randn(d, generator=g, dtype=torch.float64)
    unit = w / w.norm()
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w / 2, -w / 2]))
        model[1].bias.copy_(torch.stack([-(w * 0.5).sum() / 2, (w * 0.5).sum() / 2]))
    jitter = 0.03 * torch.randn(n, d, generator=g, dtype=torch.float64)
    jitter -= (jitter @ unit)[:, None] * unit  # keep the distance exactly r
    r = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    x = (0.5 + jitter + (sign * r)[:, None] * unit).view(n, 1, side, side)
    assert bool((x >= 0).all() and (x <= 1).all())
    y = model(x).argmax(1)
    # the closest boundary point x - (sign r) unit must be inside [0, 1] too
    p = x.flatten(1) - (sign * r)[:, None] * unit
    assert bool((p >= 0).all() and (p <= 1).all())
    return model, x, y, r


def test_boundary_matches_two_class_closed_form_within_5pct():
    # 5000 steps: a fifth of the default budget, for test speed
    model, x, y, exact_l2 = two_class_centred_problem(n=4)
    res = BoundaryAttack(steps=5000)(model, x, y, seed=0)
    assert_close_to_exact(res.dist_l2, exact_l2, 0.05)
