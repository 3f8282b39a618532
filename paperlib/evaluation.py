"""The evaluation budgets of a profile, as data: the attack suite's, the bounds' (l2 and linf) and
certification's, and the certification grid.

The grid (:mod:`paperlib.reproduce`), the command line (``paperlib certify --grid``), the table pages and the
experiment notebooks evaluate every model of a profile with configs built from these keyword arguments
(:func:`paperlib.reproduce.evaluation_configs`, :func:`paperlib.bounds.smoothing.certify_grid_configs`), so they
find the same sub-runs (:func:`~paperlib.stages.stage_subrun`). A foundation: it imports only the profiles.
"""

from __future__ import annotations

from typing import Any

from paperlib.config import get_profile

__all__ = ["evaluation_budgets", "certify_grid_budgets", "CERTIFY_SIGMAS"]

# Evaluation budgets per profile. The literature's defaults (the attack and bound configs' own defaults) are
# what the cifar10/imagenet profiles use on GPUs; the CPU profiles cut the iteration budgets, and the attack
# suite's convergence check (doubled budgets on a subsample) reports whether the cut budgets still converge.
_EVAL = {
    "smoke": {
        "attack": dict(pgd_steps=10, pgd_search_steps=6, cw_steps=100, cw_binary_search_steps=5, boundary_steps=200,
                       logbarrier_outer=4, logbarrier_inner=30, convergence_n=0),
        "bound": dict(omega_samples=4, grid_size=6),
        "certify": dict(sigma=0.25, n0=20, n=200, batch_size=200),
    },
    # Fashion-MNIST on a 2-core CPU: the profile's 60 images per model (the paper: 1000) and budgets cut so
    # that the 17-model grid fits about two hours; the convergence check (doubled budgets on 10 images) says
    # whether they are enough, and the book reports it model by model.
    "fmnist": {
        "attack": dict(batch_size=30, pgd_steps=40, pgd_search_steps=12, cw_steps=200, cw_binary_search_steps=6,
                       boundary_steps=1500, logbarrier_outer=10, logbarrier_inner=60, convergence_n=10),
        "bound": dict(),
        "certify": dict(sigma=0.25, n0=100, n=2000, batch_size=1000),
    },
    "cifar10": {"attack": dict(), "bound": dict(), "certify": dict(sigma=0.25, n_images=500)},
    "imagenet": {"attack": dict(), "bound": dict(top_k=5), "certify": dict(sigma=0.25, n_images=500)},
}


#: Noise levels of the certification grid (Cohen et al. 2019 also use 0.12 on CIFAR-10).
CERTIFY_SIGMAS = (0.25, 0.5, 1.0)

#: Randomized smoothing as Cohen et al. run it, per profile: one CertifyConfig per sigma of
#: :data:`~paperlib.evaluation.CERTIFY_SIGMAS` (:func:`paperlib.bounds.smoothing.certify_grid_configs`), abstentions
#: counted as errors. The profile's own ``certify`` budget above (n = 2000 on fmnist, whose committed runs keep
#: their hashes) certifies no l2 radius above 0.68 at sigma 0.25; n = 10,000 reaches 0.80 / 1.60 / 3.20 at
#: sigma 0.25 / 0.5 / 1.0 (alpha 0.001), so every radius of Table B.5 (up to 2.0) is within reach of some sigma.
#: The other fields (n0, alpha, batch size, radii, seeds) are the profile's certify config's, so the grid is what
#: the certify page computes with
#: ``-y "{sigma: [0.25, 0.5, 1.0], n: 10000, n_images: 500}"``.
_CERTIFY_GRID: dict[str, dict[str, Any]] = {
    "smoke": dict(),  # the smoke profile's own certify budget, at three sigmas
    "fmnist": dict(n=10_000, n_images=500),
    "cifar10": dict(n=100_000, n_images=500),
    "imagenet": dict(n=100_000, n_images=500),
}


def evaluation_budgets(profile: str) -> dict[str, dict[str, Any]]:
    """The keyword arguments of a profile's evaluation configs: ``{'attack': AttackConfig's, 'bound-l2' and
    'bound-linf': BoundConfig's, 'certify': CertifyConfig's}``; the profile's image count and evaluation batch
    size with its budgets. :func:`paperlib.reproduce.evaluation_configs` builds the configs from them."""
    prof = get_profile(profile)
    budgets = _EVAL[prof.name]
    n, bs = prof.n_images, prof.eval_batch_size
    return {
        "attack": {"n_images": n, "batch_size": min(bs, n), **budgets["attack"]},
        "bound-l2": {"norm": "l2", "n_images": n, "batch_size": bs, **budgets["bound"]},
        "bound-linf": {"norm": "linf", "n_images": n, "batch_size": bs, **budgets["bound"]},
        "certify": {"n_images": n, "batch_size": bs, **budgets["certify"]},
    }


def certify_grid_budgets(profile: str) -> dict[float, dict[str, Any]]:
    """The keyword arguments of a profile's certification grid: ``{sigma: CertifyConfig's}`` for each sigma of
    :data:`~paperlib.evaluation.CERTIFY_SIGMAS`, the profile's certify budget
    (:func:`~paperlib.evaluation.evaluation_budgets`) with the grid's ``n`` and ``n_images``.
    :func:`paperlib.bounds.smoothing.certify_grid_configs` builds the configs from them."""
    prof = get_profile(profile)
    base = evaluation_budgets(prof.name)["certify"]
    return {s: {**base, "sigma": s, **_CERTIFY_GRID[prof.name]} for s in CERTIFY_SIGMAS}
