"""The tables of the book's theory chapters (Propositions 3.1 and 3.2), from the tensors of :mod:`paperlib.theory`.

The chapters import this module as ``theory``: besides the tables it offers the two model helpers they train with,
:func:`~paperlib.theory.smooth_mlp` and :func:`~paperlib.theory.quick_train` (re-exported from
:mod:`paperlib.theory`, where they live).

* :func:`fd_error_vs_h` -- Proposition 3.2: median and max relative error of the finite-difference gradient norm
  per ``h`` and dtype (:func:`~paperlib.theory.fd_relative_errors`);
* :func:`quadratic_cost_check` -- Proposition 3.1: one row per example and ``delta``
  (:func:`~paperlib.theory.quadratic_cost_terms`);
* :func:`penalty_step_cost` -- time and graph memory of standard, FD and DBP steps, with ratios to the standard
  step (:func:`~paperlib.theory.step_costs`).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import nn

from paperlib.theory import fd_relative_errors, quadratic_cost_terms, step_costs
from paperlib.theory import quick_train, smooth_mlp  # for the chapters (theory.quick_train); documented there

__all__ = ["fd_error_vs_h", "quadratic_cost_check", "penalty_step_cost"]


def fd_error_vs_h(model: nn.Module, x: torch.Tensor, y: torch.Tensor, hs: Sequence[float],
                  dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64)) -> pd.DataFrame:
    """Relative error of the FD estimate of ``||grad_x l||_2`` per example, for each ``h`` and dtype
    (:func:`~paperlib.theory.fd_relative_errors`; the exact reference is the float64 autograd gradient).

    Returns a DataFrame with columns ``dtype``, ``h``, ``median_rel_error``, ``max_rel_error`` (over the examples
    of ``x``; examples with ``g = 0`` excluded), one row per dtype and ``h``.
    """
    hs = list(hs)
    errors = fd_relative_errors(model, x, y, hs, dtypes)
    return pd.DataFrame([{"dtype": name, "h": h, "median_rel_error": rel[i].median().item(),
                          "max_rel_error": rel[i].max().item()}
                         for name, rel in errors.items() for i, h in enumerate(hs)])


def quadratic_cost_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: Sequence[float],
                         steps: int = 200, segment_points: int = 8) -> pd.DataFrame:
    """Proposition 3.1 per example and ``delta`` (:func:`~paperlib.theory.quadratic_cost_terms`): one row per
    (example, delta) with columns ``example``, ``delta``, ``attained`` (the maximum of ``l(x+v) - c(v) - l(x)``
    found), ``first_order`` (``delta/2 ||g||^2``), ``C`` (the curvature) and ``bound``. Use float64 models and
    inputs."""
    deltas = list(deltas)
    terms = quadratic_cost_terms(model, x, y, deltas, steps=steps, segment_points=segment_points)
    return pd.DataFrame([{"example": i, "delta": delta, **{k: terms[k][j, i].item() for k in
                                                           ("attained", "first_order", "C", "bound")}}
                         for j, delta in enumerate(deltas) for i in range(x.shape[0])])


def penalty_step_cost(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2", h: float = 0.01,
                      lam: float = 1.0, repeats: int = 5) -> pd.DataFrame:
    """Time (median seconds of a forward+backward step) and graph memory (MB) of standard training, the FD
    penalty and the DBP penalty on one batch (:func:`~paperlib.theory.step_costs`), indexed by ``step``, with
    their ratios to the standard step."""
    costs = step_costs(model, x, y, norm=norm, h=h, lam=lam, repeats=repeats)
    df = pd.DataFrame([{"step": name, "seconds": c["seconds"], "graph_MB": c["graph_bytes"] / 2**20}
                       for name, c in costs.items()]).set_index("step")
    df["time_vs_standard"] = df["seconds"] / df.loc["standard", "seconds"]
    df["memory_vs_standard"] = df["graph_MB"] / df.loc["standard", "graph_MB"]
    return df
