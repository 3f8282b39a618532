"""The suite's own Fast Minimum-Norm attack (not in the paper) and its warm start inside the suite.

Against the closed form of a linear classifier (tests/helpers.linear_problem, float64, so rounding plays no part):
FMN from the image itself within 1 % of the exact distance in both norms and never below it; warm-started from a
deliberately weak MinimalPGD (5 bisections of 10 steps: 40-46 % too far) within 1 % as well, and never farther
than its start on any image. In the suite, 'fmn-refine' starts from the closest adversarial of the earlier
attacks, so the suite's best with it is never farther than without it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paperlib.attacks import FastMinimumNorm, MinimalPGD
from paperlib.attacks.suite import AttackConfig, run_attack_suite
from paperlib.config import ConfigError, config_to_dict
from tests.helpers import TinyCNN, linear_problem
from tests.test_attacks_exact import assert_close_to_exact


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fmn_from_the_image_matches_the_linear_closed_form_within_1pct(norm):
    model, x, y, exact_l2, exact_linf = linear_problem(10)
    res = FastMinimumNorm(norm=norm, steps=100)(model, x, y)
    assert bool(res.success.all())
    assert_close_to_exact(res.distance(norm), exact_l2 if norm == "l2" else exact_linf, 0.01)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_warm_start_from_a_weak_attack_reaches_the_closed_form_and_is_never_farther(norm):
    model, x, y, exact_l2, exact_linf = linear_problem(10)
    exact = exact_l2 if norm == "l2" else exact_linf
    weak = MinimalPGD(norm=norm, steps=10, search_steps=4)(model, x, y)
    assert float((weak.distance(norm) / exact).min()) > 1.2  # the start is far from the minimum
    res = FastMinimumNorm(norm=norm, steps=50)(model, x, y, start=weak.adversarials)
    assert bool((res.distance(norm) <= weak.distance(norm)).all())
    assert_close_to_exact(res.distance(norm), exact, 0.01)


def test_a_start_that_is_not_adversarial_is_ignored_per_image():
    model, x, y, _, _ = linear_problem(10)
    weak = MinimalPGD(norm="l2", steps=10, search_steps=4)(model, x, y)
    start = weak.adversarials.clone()
    start[3] = x[3]  # not adversarial: image 3 starts from itself, as without a start
    warm = FastMinimumNorm(norm="l2", steps=30)(model, x, y, start=start)
    cold = FastMinimumNorm(norm="l2", steps=30)(model, x[3:4], y[3:4])
    assert torch.allclose(warm.adversarials[3], cold.adversarials[0], rtol=0, atol=1e-9)
    alone = FastMinimumNorm(norm="l2", steps=30)(model, x[5:6], y[5:6], start=start[5:6])
    assert torch.allclose(warm.adversarials[5], alone.adversarials[0], rtol=0, atol=1e-9)  # with a start too


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps=0"), (dict(search_steps=-1), "search_steps=-1"), (dict(gamma_init=1.0), "gamma_init"),
    (dict(alpha_init=0), "alpha_init"), (dict(norm="l3"), "l3"),
])
def test_bad_settings_are_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FastMinimumNorm(**kwargs)


def test_a_start_of_the_wrong_shape_or_outside_the_box_is_a_config_error():
    model, x, y, _, _ = linear_problem(10, n=4)
    with pytest.raises(ConfigError, match="shape"):
        FastMinimumNorm()(model, x, y, start=x[:2])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        FastMinimumNorm()(model, x, y, start=x + 2)


def _suite_problem(n: int):
    """A small CNN and ``n`` float64 images it classifies correctly (the labels are its predictions)."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(n, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, torch.arange(n)


def test_fmn_refine_in_the_suite_is_never_farther_and_keeps_the_hash_at_its_default():
    model, x, y, idx = _suite_problem(12)
    base = AttackConfig(n_images=12, batch_size=6, pgd_steps=5, pgd_search_steps=3, cw_steps=20,
                        cw_binary_search_steps=2, boundary_steps=60, logbarrier_outer=2, logbarrier_inner=10,
                        convergence_n=0, boundary_every=2)  # Boundary on every other image: the start mixes both
    more = dataclasses.replace(base, attacks=base.attacks + ("fmn-refine",), fmn_steps=30)
    assert "fmn_steps" not in config_to_dict(AttackConfig())  # at its default the stored runs keep their hashes
    assert config_to_dict(AttackConfig(fmn_steps=30))["fmn_steps"] == 30
    without, with_fmn = (run_attack_suite(model, x, y, idx, c, progress=False) for c in (base, more))
    for norm in ("l2", "linf"):
        b0, b1 = (r.best[r.best["norm"] == norm].set_index("image")["best"] for r in (without, with_fmn))
        assert bool((b1 <= b0.reindex(b1.index) * (1 + 1e-9)).all()), norm
    assert {"fmn-refine-l2", "fmn-refine-linf"} <= set(with_fmn.summary["jobs"])
    # every image is classified correctly (y is the prediction): 30 steps of one forward and one backward pass,
    # 12 forward for the start (its check, 10 bisections, the pulled point's check), the contract's 2 checks
    for norm in ("l2", "linf"):
        job = with_fmn.summary["jobs"][f"fmn-refine-{norm}"]
        assert (job["forward_passes_per_image"], job["backward_passes_per_image"]) == (30 + 12 + 2, 30)


def test_fmn_cold_in_the_suite_is_fmn_from_the_image_and_counts_its_passes():
    """'fmn-cold' is FastMinimumNorm without a start (the published FMN); 'fmn-refine' after it may start from
    its adversarial, and neither changes what the other attacks find."""
    model, x, y, idx = _suite_problem(8)
    cfg = AttackConfig(attacks=("pgd", "fmn-cold", "fmn-refine"), n_images=8, batch_size=4, pgd_steps=5,
                       pgd_search_steps=3, convergence_n=0, fmn_steps=30)
    res = run_attack_suite(model, x, y, idx, cfg, progress=False)
    for norm in ("l2", "linf"):
        alone = FastMinimumNorm(norm=norm, steps=30)(model, x, y, seed=cfg.seed, keys=idx)
        rows = res.attacks[(res.attacks["attack"] == "fmn-cold") & (res.attacks["norm"] == norm)]
        assert torch.allclose(torch.tensor(rows[f"dist_{norm}"].values), alone.distance(norm), rtol=0, atol=1e-12)
        job = res.summary["jobs"][f"fmn-cold-{norm}"]
        assert (job["forward_passes_per_image"], job["backward_passes_per_image"]) == (30 + 2, 30)
    assert cfg.scaled(2).fmn_steps == 60  # escalation doubles its budget too
