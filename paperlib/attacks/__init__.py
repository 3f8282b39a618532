"""The attack suite (paper section 4).

Attacks follow foolbox 3's contract (:mod:`.base`): keyword-only constructors with literature defaults,
called as ``attack(model, x, y, seed=...)`` (minimal distance) or ``attack(model, x, y, eps=..., seed=...)``
(fixed eps), returning an :class:`AttackResult` with adversarials in [0, 1], per-image success and the l2 and
linf distances of what was found.

* :mod:`.pgd` -- PGD (Madry et al.) in l2 and linf: :class:`PGD` (fixed eps), :class:`MinimalPGD` (eps search)
* :mod:`.cw` -- :class:`CarliniWagnerL2` with the binary search over c
* :mod:`.boundary` -- :class:`BoundaryAttack` (decision-based, gradient-free)
* :mod:`.logbarrier` -- :class:`LogBarrierAttack` in l2 and linf (Finlay et al. 2019)
* :mod:`.fmn` -- not in the paper: :class:`FastMinimumNorm` (Pintor et al. 2021, our implementation), l2 and
  linf, warm-started by the suite from the paper's attacks' best (``'fmn-refine'``)
* :mod:`.reference` -- not in the paper: the field's reference attacks from torchattacks / foolbox behind the
  same contract (:class:`FABAttack`, :class:`FMNAttack`, :class:`DDNAttack`, :class:`APGDAttack`,
  :class:`APGDTargetedAttack`, :class:`SquareAttack`)
* :mod:`.suite` -- :class:`AttackConfig`, :func:`run_attack_suite`, per-image best distances, error curves
* :mod:`.checks` -- the automatic evaluation checks reported with the results
"""

from paperlib.attacks.base import (
    Attack,
    AttackResult,
    FixedEpsilonAttack,
    ImageNoise,
    MinimizationAttack,
    Misclassification,
    image_keys,
)
from paperlib.attacks.boundary import BoundaryAttack
from paperlib.attacks.cw import CarliniWagnerL2
from paperlib.attacks.fmn import FastMinimumNorm
from paperlib.attacks.logbarrier import LogBarrierAttack
from paperlib.attacks.norms import L2, Linf, Norm, get_norm
from paperlib.attacks.pgd import PGD, L2PGD, LinfPGD, MinimalPGD
from paperlib.attacks.reference import (
    APGDAttack,
    APGDTargetedAttack,
    DDNAttack,
    FABAttack,
    FMNAttack,
    SquareAttack,
)

__all__ = [
    "Attack", "AttackResult", "FixedEpsilonAttack", "MinimizationAttack", "Misclassification", "ImageNoise",
    "image_keys",
    "PGD", "L2PGD", "LinfPGD", "MinimalPGD", "CarliniWagnerL2", "BoundaryAttack", "LogBarrierAttack",
    "FastMinimumNorm",
    "Norm", "L2", "Linf", "get_norm",
    "FABAttack", "FMNAttack", "DDNAttack", "APGDAttack", "APGDTargetedAttack", "SquareAttack",
]
