"""The attack contract (advertorch-style invariance tests and threat-model properties).

Every attack: x is left untouched; one image attacked alone equals the same image attacked inside a batch
(same seed); the model is in eval mode during the attack and its mode is restored; clean-misclassified images
get distance 0 without an attack; adversarials stay in [0, 1] (and, for fixed-eps attacks, in the eps-ball);
a scalar eps equals a per-image eps vector; reported distances and success are those of the returned images.
"""

from __future__ import annotations

import math

import pytest
import torch

from paperlib.attacks import (
    PGD,
    BoundaryAttack,
    FastMinimumNorm,
    CarliniWagnerL2,
    ImageNoise,
    LogBarrierAttack,
    MinimalPGD,
    get_norm,
    image_keys,
)
from paperlib.config import ConfigError
from tests.helpers import TinyCNN, contract_batch, images


def small_attacks():
    """Every attack with a small budget (the properties do not depend on the budget)."""
    return {
        "pgd-l2": MinimalPGD(norm="l2", steps=8, search_steps=6),
        "pgd-linf": MinimalPGD(norm="LINF", steps=8, search_steps=6),
        "cw": CarliniWagnerL2(steps=30, binary_search_steps=3),
        "boundary": BoundaryAttack(steps=150, init_steps=20),
        "logbarrier-l2": LogBarrierAttack(norm="L2", max_outer=2, max_inner=20),
        "logbarrier-linf": LogBarrierAttack(norm="linf", max_outer=2, max_inner=20),
        "fmn-l2": FastMinimumNorm(norm="l2", steps=20),
        "fmn-linf": FastMinimumNorm(norm="linf", steps=20),
    }


@pytest.fixture(scope="module")
def batch_results():
    model, x, x_before, y = contract_batch()
    out = {name: atk(model, x, y, seed=3) for name, atk in small_attacks().items()}
    return model, x, x_before, y, out


@pytest.mark.parametrize("name", list(small_attacks()))
def test_attack_leaves_input_untouched_and_restores_train_mode(batch_results, name):
    model, x, x_before, _, _ = batch_results
    assert torch.equal(x, x_before)
    assert model.training  # restored
    assert model.modes and not any(model.modes)  # every forward during the attacks ran in eval mode


@pytest.mark.parametrize("name", list(small_attacks()))
def test_reported_success_and_distances_are_those_of_returned_adversarials(batch_results, name):
    model, x, _, y, out = batch_results
    res = out[name]
    adv = res.adversarials
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        mis = model(adv).argmax(1) != y
    assert torch.equal(mis, res.success)
    d = (adv - x).flatten(1)
    l2, linf = d.norm(dim=1), d.abs().amax(dim=1)
    assert torch.allclose(res.dist_l2[res.success], l2[res.success], rtol=1e-12, atol=0)
    assert torch.allclose(res.dist_linf[res.success], linf[res.success], rtol=1e-12, atol=0)
    assert bool(torch.isinf(res.dist_l2[~res.success]).all())


@pytest.mark.parametrize("name", list(small_attacks()))
def test_clean_misclassified_image_has_distance_zero_without_attack(batch_results, name):
    _, x, _, _, out = batch_results
    res = out[name]
    assert bool(res.success[4]) and float(res.dist_l2[4]) == 0.0 and float(res.dist_linf[4]) == 0.0
    assert torch.equal(res.adversarials[4], x[4])
    assert not bool(res.clean_correct[4])


@pytest.mark.parametrize("name", list(small_attacks()))
def test_image_attacked_alone_equals_same_image_in_batch(batch_results, name):
    model, x, _, y, out = batch_results
    atk = small_attacks()[name]
    for i in (0, 2):
        alone = atk(model, x[i:i + 1], y[i:i + 1], seed=3)
        assert torch.allclose(alone.adversarials[0], out[name].adversarials[i], rtol=0, atol=1e-9), (name, i)
        assert bool(alone.success[0]) == bool(out[name].success[i])
    # the same holds with explicit per-image keys (the suite passes dataset indices)
    keys = torch.tensor([10, 11, 12, 13, 14])
    batch = atk(model, x, y, seed=3, keys=keys)
    alone = atk(model, x[1:2], y[1:2], seed=3, keys=keys[1:2])
    assert torch.allclose(alone.adversarials[0], batch.adversarials[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fixed_eps_pgd_stays_in_box_and_ball_for_random_models_and_eps(norm):
    for trial in range(4):
        model = TinyCNN(seed=10 + trial)
        g = torch.Generator().manual_seed(trial)
        x = images(6, seed=20 + trial)
        y = torch.randint(0, 4, (6,), generator=g)
        scale = 2.0 if norm == "l2" else 0.2
        eps = torch.rand(6, generator=g, dtype=torch.float64) * scale
        res = PGD(norm=norm, steps=10)(model, x, y, eps=eps, seed=trial)
        assert float(res.adversarials.min()) >= 0.0 and float(res.adversarials.max()) <= 1.0
        dist = get_norm(norm).distance(res.adversarials - x)
        assert bool((dist <= eps * (1 + 1e-9) + 1e-12).all()), (trial, (dist - eps).max())
        assert torch.equal(res.eps, eps)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_minimal_pgd_adversarial_lies_in_the_ball_it_reports(norm):
    model = TinyCNN(seed=5)
    x = images(6, seed=7)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = MinimalPGD(norm=norm, steps=8, search_steps=5)(model, x, y, seed=0)
    ok = res.success & res.clean_correct
    assert bool(ok.any())
    assert bool((res.distance(norm)[ok] <= res.eps[ok] * (1 + 1e-9)).all())


def test_scalar_eps_equals_per_image_eps_vector():
    model = TinyCNN(seed=2)
    x = images(5, seed=3)
    y = torch.zeros(5, dtype=torch.int64)
    atk = PGD(norm="linf", steps=6)
    a = atk(model, x, y, eps=0.05, seed=1)
    b = atk(model, x, y, eps=torch.full((5,), 0.05, dtype=torch.float64), seed=1)
    assert torch.equal(a.adversarials, b.adversarials) and torch.equal(a.success, b.success)


def test_seed_changes_random_start_and_same_seed_reproduces():
    model = TinyCNN(seed=2)
    x = images(3, seed=4)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = PGD(norm="l2", steps=1, rel_stepsize=1e-6)  # essentially the random start
    a, b, c = (atk(model, x, y, eps=0.5, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.adversarials, b.adversarials)
    assert not torch.allclose(a.adversarials, c.adversarials)


def test_image_noise_is_batch_invariant_and_well_distributed():
    keys = torch.arange(1000)
    noise = ImageNoise(7, keys)
    z = noise.normal(3, (50,), torch.float64)
    u = noise.uniform(4, (50,), torch.float64)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    sub = ImageNoise(7, keys[[5, 900]])
    assert torch.equal(sub.normal(3, (50,), torch.float64), z[[5, 900]])
    assert torch.equal(noise.normal(3, (50,), torch.float64, rows=torch.tensor([900])), z[[900]])
    assert not torch.equal(ImageNoise(8, keys).normal(3, (50,), torch.float64), z)
    # per-row stream numbers
    streams = torch.tensor([3, 4])
    mixed = noise.normal(streams, (50,), torch.float64, rows=torch.tensor([5, 6]))
    assert torch.equal(mixed[0], z[5]) and not torch.equal(mixed[1], z[6])
    # the content key ignores the batch
    x = images(4)
    assert torch.equal(image_keys(x)[2:3], image_keys(x[2:3]))
    assert len(set(image_keys(x).tolist())) == 4


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_norm_strategies_project_step_and_sample_inside_the_ball(norm):
    nm = get_norm(norm)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.rand(8, generator=g, dtype=torch.float64)
    p = nm.project(delta, eps)
    assert bool((nm.distance(p) <= eps * (1 + 1e-12)).all())
    inside = nm.project(p * 0.5, eps)
    assert torch.allclose(inside, p * 0.5)  # points inside are left alone
    step = nm.step(delta, eps)
    assert torch.allclose(nm.distance(step), eps)  # steepest-ascent step has the requested length
    zero = nm.step(torch.zeros_like(delta), eps)
    assert not bool(torch.isnan(zero).any())
    r = nm.random_perturb(torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64),
                          torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64), eps)
    assert bool((nm.distance(r) <= eps * (1 + 1e-12)).all())


def test_bad_inputs_raise_config_errors():
    model = TinyCNN()
    x = images(2)
    y = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        MinimalPGD()(model, x * 3, y)
    with pytest.raises(ConfigError, match="norm"):
        MinimalPGD(norm="l3")
    with pytest.raises(ConfigError, match="eps"):
        PGD()(model, x, y, eps=-1.0)
    with pytest.raises(ConfigError, match="shape"):
        PGD()(model, x, y[:1], eps=0.1)
    with pytest.raises(ConfigError, match="steps"):
        CarliniWagnerL2(steps=0)
    with pytest.raises(ConfigError, match="seed"):
        MinimalPGD()(model, x, y, seed=-1)
    assert math.isfinite(PGD(norm="Linf").rel_stepsize)
