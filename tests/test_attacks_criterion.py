"""The attacks' adversarial criterion, :class:`~paperlib.attacks.base.Misclassification` (top-1 or top-k).

* the criterion: ``top_k=1`` is ``argmax != y`` and equals the rank rule (stable descending order) on tie-heavy
  logits; top-k is "y is not among the k largest"; its margin is minus the package's one margin and its sign
  agrees with the criterion wherever it is not 0;
* every attack with the default criterion, ``Misclassification(1)`` or a top-1 criterion computed by the rank
  rule returns the same tensors bit for bit (the default is the attacks' test before the criterion existed);
* with ``top_k=2`` on a 6-class linear model every returned adversarial has its label outside the top 2, and
  success and distances are those of the returned images under the criterion;
* bad ``top_k`` is a one-line :class:`~paperlib.config.ConfigError`; the library reference attacks refuse
  ``top_k > 1``; :class:`~paperlib.attacks.suite.AttackConfig` ``top_k`` is left out of the hash at 1 and the
  imagenet profile's attacks and bounds use the same ``top_k``.
"""

from __future__ import annotations

import math

import pytest
import torch

from paperlib.attacks import (
    PGD,
    APGDAttack,
    APGDTargetedAttack,
    BoundaryAttack,
    CarliniWagnerL2,
    DDNAttack,
    FABAttack,
    FMNAttack,
    LogBarrierAttack,
    MinimalPGD,
    SquareAttack,
)
from paperlib.attacks.base import Misclassification, distances
from paperlib.attacks.suite import AttackConfig
from paperlib.config import ConfigError, config_hash
from paperlib.losses import logit_margin_loss, margin_loss
from tests.helpers import contract_batch, linear_problem


class RankTop1(Misclassification):
    """Top-1 by the general rank rule (not ``argmax``): must give every attack the same result."""

    def __init__(self) -> None:
        super().__init__(1)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z_y = logits.gather(1, y[:, None])
        index = torch.arange(logits.shape[1])[None, :]
        return ((logits > z_y) | ((logits == z_y) & (index < y[:, None]))).sum(1) >= 1


def _rank(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The label's position in a stable descending sort of the logits (0: first)."""
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    return (order == y[:, None]).float().argmax(dim=1)


def attacks(criterion=None):
    """Every attack of the suite (and fixed-eps PGD), small budgets, with ``criterion``."""
    c = {"criterion": criterion}
    return {
        "pgd-fixed-l2": (PGD(norm="l2", steps=10, **c), 0.6),
        "pgd-fixed-linf-margin": (PGD(norm="linf", steps=10, loss="margin", **c), 0.1),
        "pgd-l2": (MinimalPGD(norm="l2", steps=8, search_steps=6, **c), None),
        "pgd-linf-both": (MinimalPGD(norm="linf", steps=8, search_steps=6, loss="margin+ce", patience=3, **c), None),
        "cw": (CarliniWagnerL2(steps=30, binary_search_steps=3, **c), None),
        "cw-squeeze-confidence": (CarliniWagnerL2(steps=30, binary_search_steps=3, squeeze=0.1, confidence=0.5,
                                                  **c), None),
        "boundary": (BoundaryAttack(steps=150, init_steps=20, **c), None),
        "boundary-starts": (BoundaryAttack(steps=100, init_starts=3, **c), None),
        "logbarrier-l2": (LogBarrierAttack(norm="l2", max_outer=2, max_inner=20, refine_steps=3, **c), None),
        "logbarrier-linf": (LogBarrierAttack(norm="linf", max_outer=2, max_inner=20, **c), None),
    }


NAMES = list(attacks())


def _run(atk, eps, model, x, y):
    return atk(model, x, y, seed=3) if eps is None else atk(model, x, y, eps=eps, seed=3)


# --------------------------------------------------------------------------------------------------
# The criterion itself
# --------------------------------------------------------------------------------------------------


def test_top1_is_argmax_and_the_rank_rule_on_tied_logits_and_top_k_is_the_stable_rank():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (400, 5), generator=g).to(torch.float64)  # many ties
    y = torch.randint(0, 5, (400,), generator=g)
    top1 = Misclassification(1)(logits, y)
    assert torch.equal(top1, logits.argmax(dim=1) != y)
    assert torch.equal(top1, RankTop1()(logits, y))
    rank = _rank(logits, y)
    for k in (1, 2, 3, 4):
        assert torch.equal(Misclassification(k)(logits, y), rank >= k)


def test_margin_is_minus_the_package_margin_and_its_sign_agrees_with_the_criterion():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (300,), generator=g)
    for k in (1, 2, 5):
        crit = Misclassification(k)
        m = crit.margin(logits, y)
        assert torch.equal(m, -logit_margin_loss(logits, y, k))
        assert torch.equal(crit.margin(logits, y, softmax=True), -margin_loss(logits, y, k))
        adv = crit(logits, y)
        assert bool(adv[m < 0].all()) and not bool(adv[m > 0].any())
    # k = 1: Z_y - max_{i != y} Z_i
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    assert torch.equal(Misclassification(1).margin(logits, y), -(other - logits.gather(1, y[:, None]).squeeze(1)))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_top_k_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError) as e:
        Misclassification(bad)
    assert "top_k" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        AttackConfig(top_k=bad)
    assert "top_k" in str(e.value) and "\n" not in str(e.value)


def test_top_k_above_classes_minus_one_is_a_config_error_at_the_call():
    model, x, _, y = contract_batch()  # 4 classes: top_k <= 3
    crit = Misclassification(4)
    with pytest.raises(ConfigError, match="top_k=4 must be at most 3 for 4 classes") as e:
        MinimalPGD(steps=2, search_steps=1, criterion=crit)(model, x, y)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="top_k=4"):
        crit(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="criterion"):
        MinimalPGD(criterion=2)


# --------------------------------------------------------------------------------------------------
# Top-1: unchanged
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_top1_criterion_is_bitwise_the_default_for_every_attack(name):
    model, x, _, y = contract_batch()
    lin, lx, ly, _, _ = linear_problem(6)
    for m, xx, yy in ((model, x, y), (lin, lx, ly)):
        results = [_run(*attacks(c)[name], m, xx, yy) for c in (None, Misclassification(1), RankTop1())]
        for other in results[1:]:
            for f in ("adversarials", "success", "dist_l2", "dist_linf", "clean_correct"):
                assert torch.equal(getattr(results[0], f), getattr(other, f)), (name, f)
            assert (results[0].eps is None) == (other.eps is None)
            if other.eps is not None:
                assert torch.equal(results[0].eps, other.eps)


# --------------------------------------------------------------------------------------------------
# Top-2
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def top2_results():
    model, x, y, _, _ = linear_problem(6)
    crit = Misclassification(2)
    return model, x, y, {name: _run(atk, eps, model, x, y) for name, (atk, eps) in attacks(crit).items()}


@pytest.mark.parametrize("name", NAMES)
def test_top2_adversarials_have_the_label_outside_the_top_two(top2_results, name):
    model, x, y, out = top2_results
    res = out[name]
    with torch.no_grad():
        logits = model(res.adversarials)
        clean = model(x)
    rank = _rank(logits, y)
    assert torch.equal(res.success, rank >= 2)
    assert torch.equal(res.clean_correct, _rank(clean, y) < 2)
    d2, dinf = distances(res.adversarials, x)
    inf = torch.full_like(d2, math.inf)
    assert torch.equal(res.dist_l2, torch.where(res.success, d2, inf))
    assert torch.equal(res.dist_linf, torch.where(res.success, dinf, inf))
    # the minimal-distance attacks break every image of this easy problem; fixed-eps PGD at these radii too
    assert bool(res.success.all()), (name, res.success.tolist())
    # a top-2 adversarial is top-1 misclassified as well
    assert bool((logits.argmax(dim=1) != y)[res.success].all())


def test_top2_distances_are_no_smaller_than_top1_closed_form():
    """Leaving the top 2 needs at least the distance of leaving the top 1 (the exact l2/linf minimum)."""
    model, x, y, exact_l2, exact_linf = linear_problem(6)
    res = MinimalPGD(norm="l2", steps=8, search_steps=6, criterion=Misclassification(2))(model, x, y, seed=3)
    assert bool((res.dist_l2 >= exact_l2 * (1 - 1e-9)).all())
    res = MinimalPGD(norm="linf", steps=8, search_steps=6, criterion=Misclassification(2))(model, x, y, seed=3)
    assert bool((res.dist_linf >= exact_linf * (1 - 1e-9)).all())


# --------------------------------------------------------------------------------------------------
# Library references, the suite config and the imagenet profile
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [FABAttack, FMNAttack, DDNAttack, APGDAttack, APGDTargetedAttack, SquareAttack])
def test_reference_attacks_refuse_top_k_above_one(cls):
    norm = {"FMNAttack": "linf", "DDNAttack": "l2"}.get(cls.__name__, "l2")
    with pytest.raises(ConfigError, match="top-1 success only; top_k=2") as e:
        cls(norm=norm, criterion=Misclassification(2))
    assert "\n" not in str(e.value)
    assert cls(norm=norm, criterion=Misclassification(1)).criterion.top_k == 1
    assert cls(norm=norm).criterion.top_k == 1


def test_attack_config_top_k_builds_every_attack_with_the_criterion_and_keeps_hashes():
    assert config_hash(AttackConfig(top_k=1)) == config_hash(AttackConfig())
    assert config_hash(AttackConfig(top_k=2)) != config_hash(AttackConfig())
    cfg = AttackConfig(top_k=3)
    for attack, norm in cfg.jobs():
        assert cfg.build(attack, norm).criterion.top_k == 3
    assert all(AttackConfig().build(a, n).criterion.top_k == 1 for a, n in AttackConfig().jobs())
    with pytest.raises(ConfigError, match="reference attacks are top-1 only"):
        AttackConfig(top_k=2, reference_attacks=("fab",))


def test_imagenet_attacks_and_bounds_use_the_same_top_k():
    from paperlib.reproduce import evaluation_configs

    for profile in ("imagenet", "cifar10", "fmnist", "smoke"):
        cfgs = evaluation_configs(profile)
        assert cfgs["attack"].top_k == cfgs["bound-l2"].top_k == cfgs["bound-linf"].top_k, profile
    assert evaluation_configs("imagenet")["attack"].top_k == 5
    # the stored Fashion-MNIST attack run keeps its name
    assert config_hash(evaluation_configs("fmnist")["attack"]).startswith("84037464")
