"""The threat-model norms of the attacks: a re-export of :mod:`paperlib.norms`, where every norm operation lives.

The attacks get their norm as a :class:`~paperlib.norms.Norm` strategy (``distance``, ``project``, ``step``,
``random_perturb``) from :func:`~paperlib.norms.get_norm`; this module keeps the names importable from
``paperlib.attacks.norms``.
"""

from __future__ import annotations

from paperlib.norms import L1, L2, Linf, Norm, get_norm

__all__ = ["Norm", "L1", "L2", "Linf", "get_norm"]
