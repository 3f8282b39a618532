"""Outputs of every code path that moved into :mod:`paperlib.norms` (issue 16), on tiny seeded problems.

``tests/data/norms_reference.pt`` holds these outputs as computed by the code *before* the norms were gathered
into one module (commit fc71b79, CPU, one thread). ``tests/test_norms.py`` recomputes them with today's code and
requires them to be bit-identical (``torch.equal``): moving the code must not change one number. Regenerate only
at a commit whose numbers are meant to be the reference::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tests/norms_reference.py

Only public functions that exist both before and after the move are called here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

REFERENCE = Path(__file__).resolve().parent / "data" / "norms_reference.pt"


def _cnn(bn: bool, dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)]
    return nn.Sequential(*layers).to(dtype)


def _data(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 8, 8), generator=g, dtype=dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


def _training(out: dict[str, Any]) -> None:
    from paperlib.regularizers import GradientPenalty
    from paperlib.training.methods import (
        FreeAdversarialTraining,
        PGDAdversarialTraining,
        Regularized,
        Standard,
        pgd_perturbation,
    )

    methods = {
        "undefended": (lambda: Standard(), True),
        "fd-l2": (lambda: Regularized(GradientPenalty(norm="l2", method="fd", lam=1.0, h=0.01)), True),
        "fd-l1": (lambda: Regularized(GradientPenalty(norm="l1", method="fd", lam=1.0, h=0.1)), True),
        "fd-l1-central": (lambda: Regularized(GradientPenalty(norm="l1", lam=0.5, h=0.05, scheme="central")), True),
        "fd-l2-reuse": (lambda: Regularized(GradientPenalty(norm="l2", lam=1.0, h=0.01, reuse_input_pass=True)),
                        False),
        "dbp-l2": (lambda: Regularized(GradientPenalty(norm="l2", method="dbp", lam=1.0)), True),
        "dbp-l1": (lambda: Regularized(GradientPenalty(attack_norm="linf", method="dbp", lam=1.0)), True),
        "pgd-at-linf": (lambda: PGDAdversarialTraining(norm="linf", eps=8 / 255, steps=3, step_size=2 / 255), True),
        "pgd-at-linf-bnguard": (lambda: PGDAdversarialTraining(norm="linf", eps=8 / 255, steps=3, step_size=2 / 255,
                                                               bn_guard=True), True),
        "pgd-at-linf-nostart": (lambda: PGDAdversarialTraining(norm="linf", eps=8 / 255, steps=3,
                                                               step_size=2 / 255, random_start=False), True),
        "pgd-at-l2": (lambda: PGDAdversarialTraining(norm="l2", eps=0.5, steps=3, step_size=0.125), True),
        "free-at-linf": (lambda: FreeAdversarialTraining(norm="linf", eps=8 / 255, m=2), True),
        "free-at-l2": (lambda: FreeAdversarialTraining(norm="l2", eps=0.5, m=2), True),
    }
    for name, (make, bn) in methods.items():
        model = _cnn(bn, torch.float32, seed=1)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        method = make()
        gen = torch.Generator().manual_seed(7)
        for step in range(3):
            x, y = _data(16, torch.float32, seed=100 + step)
            stats = method.step(model, opt, x, y, generator=gen)
            for k, v in stats.items():
                out[f"train/{name}/step{step}/{k}"] = v.detach().clone()
        for k, v in model.state_dict().items():
            out[f"train/{name}/param/{k}"] = v.detach().clone()
        if isinstance(method, FreeAdversarialTraining):
            out[f"train/{name}/delta"] = method.state_dict()["delta"]
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        model = _cnn(True, torch.float32, seed=2)
        x, y = _data(16, torch.float32, seed=3)
        for start in (True, False):
            adv = pgd_perturbation(model, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=5, random_start=start,
                                   generator=torch.Generator().manual_seed(11))
            out[f"pgd_perturbation/{norm}/start{start}"] = adv


def _sampling(out: dict[str, Any]) -> None:
    from paperlib.bounds.sampling import make_generator, perturb_in_box, sample_uniform_ball, sample_uniform_sphere

    for norm in ("l2", "linf", "L2", "LINF"):
        for dtype in (torch.float32, torch.float64):
            key = f"{norm}/{str(dtype)[6:]}"
            out[f"sample_ball/{key}/scalar"] = sample_uniform_ball(16, (1, 4, 4), 0.5, norm,
                                                                   generator=make_generator(3), dtype=dtype)
            eps = torch.linspace(0.1, 2.0, 16)
            out[f"sample_ball/{key}/per_sample"] = sample_uniform_ball(16, (3, 2, 2), eps, norm,
                                                                       generator=make_generator(4), dtype=dtype)
    out["sample_sphere/float32"] = sample_uniform_sphere(32, (2, 3, 3), generator=make_generator(5))
    out["sample_sphere/float64"] = sample_uniform_sphere(32, (7,), generator=make_generator(6), dtype=torch.float64)
    x, _ = _data(16, torch.float32, seed=8)
    v = sample_uniform_ball(16, (1, 8, 8), 0.9, "linf", generator=make_generator(9))
    out["perturb_in_box"] = perturb_in_box(x, v)


def _penalty(out: dict[str, Any]) -> None:
    from paperlib import regularizers as R

    out["dual_norm"] = [R.dual_norm(n) for n in ("l2", "linf", "L2", "Linf", "LINF")]
    out["penalty_norm"] = [R.penalty_norm(n) for n in ("l2", "l1", "L2", "L1")]
    out["penalty_coefficient"] = [R.penalty_coefficient(lam, s, n, 784) for lam in (0.1, 1.0)
                                  for s in R.SCALES for n in ("l2", "l1")]
    g = torch.Generator().manual_seed(12)
    for dtype in (torch.float32, torch.float64):
        grad = torch.randn((6, 1, 8, 8), generator=g, dtype=dtype)
        grad[2] = 0.0
        grad[3, 0, 0, :4] = 0.0
        grad[4] *= 1e-20
        for norm in ("l2", "l1"):
            out[f"fd_direction/{norm}/{str(dtype)[6:]}"] = R.fd_direction(grad, norm)
    for dtype in (torch.float32, torch.float64):
        model = _cnn(False, dtype, seed=13)
        x, y = _data(8, dtype, seed=14)
        for norm in ("l2", "l1"):
            for scheme in R.FD_SCHEMES:
                t = R.finite_difference_penalty(model, x, y, norm=norm, h=0.01, scheme=scheme)
                key = f"fd/{norm}/{scheme}/{str(dtype)[6:]}"
                out[f"{key}/clean"], out[f"{key}/penalties"] = t.clean_losses.detach(), t.penalties.detach()
                out[f"{key}/grad_norms"], out[f"{key}/direction"] = t.grad_norms, t.direction
            t = R.double_backprop_penalty(model, x, y, norm=norm)
            key = f"dbp/{norm}/{str(dtype)[6:]}"
            out[f"{key}/penalties"], out[f"{key}/grad_norms"] = t.penalties.detach(), t.grad_norms
            for method in R.PENALTY_METHODS:
                p = R.GradientPenalty(norm=norm, method=method, lam=1.0, h=0.01)(model, x, y)
                out[f"penalty/{norm}/{method}/{str(dtype)[6:]}"] = torch.stack(
                    [p.loss.detach(), p.clean_loss, p.penalty, p.grad_norm])
            p = R.finite_difference_loss_reusing_input_pass(model, x, y, norm=norm, h=0.01, coef=0.5)
            out[f"reuse/{norm}/{str(dtype)[6:]}"] = torch.stack(
                [p.loss.detach(), p.clean_loss, p.penalty, p.grad_norm])


def _bounds(out: dict[str, Any]) -> None:
    from paperlib.bounds.adversarial import ascent_residuals
    from paperlib.bounds.lipschitz import ball_gradient_norms
    from paperlib.bounds.omega import box_diameter, first_order_residuals
    from paperlib.bounds.sampling import make_generator
    from paperlib.bounds.statistics import dual_norm, dual_norm_name
    from paperlib.losses import logit_margin_loss

    out["dual_norm_name"] = [dual_norm_name(n) for n in ("l2", "linf", "L2", "Linf")]
    out["box_diameter"] = [box_diameter(s, n) for s in ((1, 4, 4), (3, 32, 32)) for n in ("l2", "linf", "LINF")]
    g = torch.randn((5, 2, 3, 3), generator=torch.Generator().manual_seed(15))
    for norm in ("l2", "linf"):
        out[f"stat_dual_norm/{norm}"] = dual_norm(g, norm)
    for dtype in (torch.float32, torch.float64):
        model = _cnn(False, dtype, seed=16).eval()
        x, y = _data(6, dtype, seed=17)
        for norm, eps in (("l2", 0.5), ("linf", 4 / 255)):
            key = f"{norm}/{str(dtype)[6:]}"
            out[f"ascent/{key}"] = ascent_residuals(model, x, y, eps, norm, steps=4, starts=4,
                                                    generator=make_generator(18), batch_size=4)
            out[f"ascent/{key}/logit"] = ascent_residuals(model, x, y, eps, norm, steps=3, starts=3, clip=False,
                                                          step_size=eps / 3, generator=make_generator(19),
                                                          loss_fn=logit_margin_loss)
            out[f"residuals/{key}"] = first_order_residuals(model, x, y, eps, norm, n_samples=3,
                                                            generator=make_generator(20), batch_size=4)
            out[f"ball_gradient_norms/{key}"] = ball_gradient_norms(model, x, y, eps, norm, n_samples=2,
                                                                    generator=make_generator(21))


def _attack_norms(out: dict[str, Any]) -> None:
    from paperlib.attacks.norms import get_norm

    g = torch.Generator().manual_seed(22)
    for dtype in (torch.float32, torch.float64):
        delta = torch.randn((6, 1, 4, 4), generator=g, dtype=dtype) * 0.3
        delta[1] = 0.0
        grad = torch.randn((6, 1, 4, 4), generator=g, dtype=dtype)
        grad[2] = 0.0
        eps = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.01, 0.3], dtype=torch.float64)
        gauss = torch.randn((6, 1, 4, 4), generator=g, dtype=dtype)
        unif = torch.rand((6, 1, 4, 4), generator=g, dtype=dtype)
        for name in ("l2", "linf"):
            n = get_norm(name)
            key = f"attack_norm/{name}/{str(dtype)[6:]}"
            out[f"{key}/distance"] = n.distance(delta)
            out[f"{key}/project"] = n.project(delta, eps)
            out[f"{key}/step"] = n.step(grad, eps * 0.25)
            out[f"{key}/random_perturb"] = n.random_perturb(gauss, unif, eps)


def _losses(out: dict[str, Any]) -> None:
    from paperlib.attacks import pgd
    from paperlib.losses import is_correct, logit_margin_loss, margin_loss

    g = torch.Generator().manual_seed(23)
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn((12, 7), generator=g, dtype=dtype) * 3
        logits[0, :] = 1.0  # a tie
        y = torch.randint(0, 7, (12,), generator=g)
        for k in (1, 2, 5):
            out[f"margin/{k}/{str(dtype)[6:]}"] = margin_loss(logits, y, k)
            out[f"logit_margin/{k}/{str(dtype)[6:]}"] = logit_margin_loss(logits, y, k)
            out[f"is_correct/{k}/{str(dtype)[6:]}"] = is_correct(logits, y, k)
        out[f"pgd_margin/{str(dtype)[6:]}"] = pgd.margin_loss(logits, y)


def reference_outputs() -> dict[str, Any]:
    """Every output, by a readable key (``'train/pgd-at-linf/param/0.weight'``, ``'sample_ball/l2/float64/scalar'``)."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for part in (_training, _sampling, _penalty, _bounds, _attack_norms, _losses):
        part(out)
    return out


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    ref = reference_outputs()
    torch.save(ref, REFERENCE)
    print(f"{len(ref)} outputs -> {REFERENCE} ({REFERENCE.stat().st_size} bytes)")
