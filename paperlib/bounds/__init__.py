"""Bounds and certification (paper section 2, Tables 1, 2, B.3, B.5, B.6).

Modules, one concept each:

* :mod:`~paperlib.bounds.statistics` -- per-image loss, correctness and dual gradient norms in one batched pass;
* :mod:`~paperlib.bounds.sampling` -- exactly uniform, seeded sampling in l2 and linf balls;
* :mod:`~paperlib.bounds.evt` -- extreme-value (GEV) estimates of a supremum, with a goodness-of-fit fallback;
* :mod:`~paperlib.bounds.lipschitz` -- Proposition 2.2's L-bound: the Lipschitz constant of the loss and the
  per-image bound;
* :mod:`~paperlib.bounds.omega` -- Proposition 2.2's omega-bound: the modulus of continuity omega(eps), the
  omega-bound test and the omega distance, regularity statistics;
* :mod:`~paperlib.bounds.adversarial` -- the adversarial omega estimate: projected gradient ascent on the
  first-order residual;
* :mod:`~paperlib.bounds.stage` -- the bound stage: :class:`BoundConfig`, :func:`run_bounds` (both bounds and
  their certified error for one model and norm, in the run store) and :func:`load_bounds`;
* :mod:`~paperlib.bounds.smoothing` -- randomized smoothing (Cohen et al. 2019): :class:`Smooth`,
  :class:`CertifyConfig` and :func:`run_certify`;
* :mod:`~paperlib.bounds.audit` -- how often a bound exceeds the best adversarial distance the attacks found;
* :mod:`~paperlib.bounds.cli` -- ``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...``.

Layers (``tests/test_layers.py``): ``statistics``, ``sampling``, ``evt``, ``lipschitz``, ``omega`` and
``adversarial`` are algorithms (tensors in, tensors out); ``audit`` is a metric, as is the certified error of a
bound, :func:`paperlib.metrics.certified_error` (re-exported here); ``stage`` and ``smoothing`` are stages;
``cli`` is the command line.
"""

from paperlib.bounds.audit import audit_bounds, audit_model_run, smoothing_lower_bound
from paperlib.bounds.adversarial import ascent_passes, ascent_residuals
from paperlib.bounds.evt import GEVFit, batch_maxima, estimate_label, estimate_supremum, fit_gev
from paperlib.bounds.lipschitz import ball_gradient_norms, l_bound, lipschitz_constant
from paperlib.bounds.omega import (
    box_diameter,
    eps_grid,
    estimate_omega,
    first_order_residuals,
    omega_bound_certified,
    omega_distance,
    regularity_statistics,
)
from paperlib.bounds.stage import BoundConfig, BoundsResult, fits_accepted, load_bounds, run_bounds
from paperlib.bounds.sampling import make_generator, perturb_in_box, sample_uniform_ball, sample_uniform_sphere
from paperlib.bounds.smoothing import (
    Certificate,
    CertifyConfig,
    CertifyResult,
    Smooth,
    load_certify,
    lower_confidence_bound,
    max_certifiable_radius,
    run_certify,
)
from paperlib.bounds.statistics import ImageStatistics, dual_norm, dual_norm_name, image_statistics, loss_and_gradient
from paperlib.metrics import certified_error

__all__ = [
    "audit_bounds", "audit_model_run", "smoothing_lower_bound", "ascent_passes", "ascent_residuals",
    "GEVFit", "batch_maxima", "estimate_supremum", "fit_gev",
    "BoundConfig", "BoundsResult", "ball_gradient_norms", "box_diameter", "certified_error", "eps_grid",
    "estimate_label", "fits_accepted", "estimate_omega", "first_order_residuals",
    "l_bound", "lipschitz_constant", "load_bounds", "omega_bound_certified", "omega_distance",
    "regularity_statistics", "run_bounds",
    "make_generator", "perturb_in_box", "sample_uniform_ball", "sample_uniform_sphere",
    "Certificate", "CertifyConfig", "CertifyResult", "Smooth", "load_certify", "lower_confidence_bound",
    "max_certifiable_radius",
    "run_certify",
    "ImageStatistics", "dual_norm", "dual_norm_name", "image_statistics", "loss_and_gradient",
]
