"""Reference attacks from the field's libraries, behind the suite's contract (not in the paper).

The paper evaluates with PGD, Carlini-Wagner, the Boundary attack and LogBarrier. The field now also expects a
minimum-norm attack and the AutoAttack fixed-eps checks (Croce & Hein 2020). This module wraps the well-kept
implementations of torchattacks 3.5.1 and foolbox 3.3.4 (pinned in ``requirements.txt``) as
:class:`~paperlib.attacks.base.MinimizationAttack` / :class:`~paperlib.attacks.base.FixedEpsilonAttack`, so that
they obey the same contract as the suite's own attacks (inputs untouched, success and float64 distances
recomputed by :mod:`paperlib.attacks.base`, batch-invariant seeding):

* :class:`FABAttack` -- FAB (Croce & Hein 2020, torchattacks), minimum-norm in l2 and linf;
* :class:`FMNAttack` -- Fast Minimum-Norm (Pintor et al. 2021, foolbox), linf;
* :class:`DDNAttack` -- Decoupled Direction and Norm (Rony et al. 2019, foolbox), l2;
* :class:`APGDAttack` -- APGD with cross-entropy (APGD-CE) or DLR loss, fixed eps (torchattacks);
* :class:`APGDTargetedAttack` -- APGD-T, the targeted DLR loss over the top classes, fixed eps (torchattacks);
* :class:`SquareAttack` -- the gradient-free Square attack (Andriushchenko et al. 2020), fixed eps (torchattacks).

The defaults are AutoAttack's published 'standard' settings (100 iterations, one restart, 9 target classes,
5000 queries, ``p_init = 0.8``), not torchattacks' ``AutoAttack`` class, which builds its sub-attacks with 10
iterations. Three library behaviours are worked around here, each with a test in
``tests/test_attacks_reference.py``:

* the libraries draw their random numbers from torch's global generator with the shape of the whole batch (and
  reseed it with one seed per call), so an image's result would depend on its batch. Each image is therefore
  attacked in its own call, under a seed drawn from :class:`~paperlib.attacks.base.ImageNoise` (a function of
  the attack's seed and the image's key only), inside ``torch.random.fork_rng`` so the caller's generator
  is left as it was. This costs batching, not passes: the libraries' per-image arithmetic is unchanged;
* foolbox 3.3.4's ``L2FMNAttack.project`` computes ``min(1, norms / norms)`` (always 1) on the norm of the
  iterate instead of its distance to the original, so the l2 iterate is never projected onto the eps-ball and
  ends about twice too far. With the FMN paper's projection put back it stalls without an adversarial on most
  images (see :class:`FMNAttack`), so FMN runs in linf only and l2 uses FAB and DDN;
* torchattacks computes in float32: float64 images are given to it as float32 and the model sees them cast
  back (distances are still recomputed in float64 from the returned adversarials).

The libraries decide "adversarial" by top-1 misclassification only: every reference attack takes
``criterion`` like the suite's own (for the contract's success test) and refuses a top-k criterion with
``top_k > 1`` (a :class:`~paperlib.config.ConfigError`).

Algorithms layer: tensors in, tensors out.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from paperlib.attacks.base import (
    FixedEpsilonAttack,
    ImageNoise,
    MinimizationAttack,
    Misclassification,
    check_criterion,
    logits_of,
)
from paperlib.config import ConfigError, check_positive, normalize_norm

__all__ = [
    "REFERENCE_MINIMIZATION",
    "REFERENCE_FIXED_EPS",
    "REFERENCE_ATTACKS",
    "REFERENCE_NORMS",
    "FABAttack",
    "FMNAttack",
    "DDNAttack",
    "APGDAttack",
    "APGDTargetedAttack",
    "SquareAttack",
    "reference_attack",
]

#: minimum-norm reference attacks (both norms)
REFERENCE_MINIMIZATION = ("fab", "fmn", "ddn")
#: the norms each minimum-norm reference runs in
REFERENCE_NORMS = {"fab": ("l2", "linf"), "fmn": ("linf",), "ddn": ("l2",)}
#: AutoAttack's fixed-eps attacks, in AutoAttack's order (each runs on the images the previous ones left robust)
REFERENCE_FIXED_EPS = ("apgd-ce", "apgd-t", "square")
#: every reference attack the suite can run
REFERENCE_ATTACKS = REFERENCE_MINIMIZATION + REFERENCE_FIXED_EPS

_LIB_NORM = {"l2": "L2", "linf": "Linf"}


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _top1_criterion(name: str, criterion: Optional[Misclassification]) -> Misclassification:
    """``criterion`` (None: top-1); a :class:`~paperlib.config.ConfigError` for ``top_k > 1``, which the
    libraries cannot test."""
    criterion = check_criterion(criterion)
    if criterion.top_k != 1:
        raise ConfigError(f"{name} is a library attack with top-1 success only; top_k={criterion.top_k} is not "
                          "allowed (use top_k=1 or the suite's own attacks)")
    return criterion


def _image_seeds(noise: ImageNoise, rows: Tensor) -> list[int]:
    """One torch seed per image in [0, 2^31), a function of (attack seed, image key) only."""
    u = noise.uniform(0, (1,), torch.float64, rows=rows).reshape(-1)
    return [int(v) for v in (u * 2.0**31).floor().to(torch.int64).tolist()]


def _per_image(x: Tensor, seeds: list[int], run_one: Callable[[int, int], Tensor]) -> Tensor:
    """``run_one(i, seed)`` returns the adversarial ``[1, C, H, W]`` of image ``i``; stacked to ``[R, C, H, W]``.

    The global generator is forked, so the libraries' ``manual_seed`` calls do not leak to the caller."""
    devices = [x.device] if x.device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=devices):
        for i, s in enumerate(seeds):
            torch.manual_seed(s)
            out.append(run_one(i, s).detach().to(x.dtype).reshape(1, *x.shape[1:]))
    return torch.cat(out) if out else x.clone()


class _InputDtype(nn.Module):
    """The model, fed inputs in ``dtype`` (the attacked images' dtype). torchattacks computes in float32 (FAB
    casts its iterates, its projections mix dtypes), so it is given float32 images and this adapter casts them
    back for the model and its logits to float32; for float32 images (every model in the book) it is the model itself."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        # a new module starts in training mode, and torchattacks restores the mode it found after each call:
        # the adapter takes the model's (eval during an attack), or it would put the model in training mode
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).to(x.dtype)


def _n_classes(model: nn.Module, x: Tensor) -> int:
    return int(logits_of(model, x[:1]).shape[1])


class FABAttack(MinimizationAttack):
    """FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), from torchattacks 3.5.1: minimum-norm.

    torchattacks keeps only adversarials within its ``eps``; here ``eps`` is the largest distance in [0, 1]^d
    (1 in linf, ``sqrt(d)`` in l2), so every adversarial FAB finds is returned. ``eps`` also scales FAB's random
    restarts, hence one restart (no random start) by default, as the FAB paper's first run.

    Args:
        norm: 'l2' or 'linf'.
        steps: FAB iterations (AutoAttack: 100).
        n_restarts: restarts (the first one starts at the image).
        alpha_max, eta, beta: FAB's step parameters (AutoAttack's 0.1, 1.05, 0.9).
        targeted: FAB-T over the ``n_target_classes`` most likely classes instead of the untargeted FAB.
        n_target_classes: target classes of FAB-T (AutoAttack: 9; at most the classes minus one).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    name = "fab"
    _salt = 0xFAB

    def __init__(self, *, norm: str = "l2", steps: int = 100, n_restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, targeted: bool = False, n_target_classes: int = 9,
                 criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("FABAttack", criterion)
        self.norm = normalize_norm(norm)
        self.steps = _check_int("steps", steps)
        self.n_restarts = _check_int("n_restarts", n_restarts)
        check_positive("alpha_max", alpha_max)
        check_positive("eta", eta)
        check_positive("beta", beta)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.targeted = bool(targeted)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor,
                **kwargs) -> tuple[Tensor, Optional[Tensor]]:
        import torchattacks

        k = _n_classes(model, x)
        eps = 1.0 if self.norm == "linf" else math.sqrt(x[0].numel())
        atk = torchattacks.FAB(_InputDtype(model, x.dtype), norm=_LIB_NORM[self.norm], eps=eps, steps=self.steps,
                               n_restarts=self.n_restarts, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                               multi_targeted=self.targeted, n_classes=min(self.n_target_classes, k - 1) + 1)

        def one(i: int, seed: int) -> Tensor:
            atk.seed = seed
            return atk(x[i:i + 1].float(), y[i:i + 1])

        return _per_image(x, _image_seeds(noise, rows), one), None


class _FoolboxMinimumNorm(MinimizationAttack):
    """A foolbox 3 minimum-norm attack (``epsilons=None``), one image per call at its own seed."""

    def _foolbox_attack(self, fb):
        raise NotImplementedError

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor,
                **kwargs) -> tuple[Tensor, Optional[Tensor]]:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        atk = self._foolbox_attack(fb)

        def one(i: int, seed: int) -> Tensor:
            _, clipped, _ = atk(fmodel, x[i:i + 1], fb.criteria.Misclassification(y[i:i + 1]), epsilons=None)
            return clipped

        return _per_image(x, _image_seeds(noise, rows), one), None


class FMNAttack(_FoolboxMinimumNorm):
    """Fast Minimum-Norm attack in linf (Pintor et al. 2021), foolbox 3.3.4's ``LInfFMNAttack`` as shipped.

    linf only. foolbox's ``L2FMNAttack`` is not used: its projection onto the eps-ball is a no-op (see the
    module docstring), and with the FMN paper's projection ``x0 + delta * min(1, eps / ||delta||)`` put back it
    found no adversarial on 10 of 12 images of the contract tests' small CNN, at 20 and at 100 steps, where
    MinimalPGD broke all 12 (the iterate stalls just outside the boundary, at the radius of FMN's linear
    estimate). l2's minimum-norm references are :class:`FABAttack` and :class:`DDNAttack`.

    Args:
        norm: 'linf' (anything else is a :class:`~paperlib.config.ConfigError`).
        steps: FMN iterations (foolbox: 100).
        max_stepsize: initial step size, cosine-annealed to ``max_stepsize / 100`` (foolbox: 1.0).
        gamma: initial step of the radius update (foolbox: 0.05).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    name = "fmn"
    _salt = 0xF3A

    def __init__(self, *, norm: str = "linf", steps: int = 100, max_stepsize: float = 1.0,
                 gamma: float = 0.05, criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("FMNAttack", criterion)
        self.norm = normalize_norm(norm)
        if self.norm != "linf":
            raise ConfigError(f"FMNAttack norm={norm!r} is not allowed; only 'linf' (foolbox's l2 FMN does not "
                              "project; use DDNAttack or FABAttack in l2)")
        self.steps = _check_int("steps", steps)
        check_positive("max_stepsize", max_stepsize)
        check_positive("gamma", gamma)
        self.max_stepsize, self.gamma = float(max_stepsize), float(gamma)

    def _foolbox_attack(self, fb):
        return fb.attacks.LInfFMNAttack(steps=self.steps, max_stepsize=self.max_stepsize, gamma=self.gamma)


class DDNAttack(_FoolboxMinimumNorm):
    """Decoupled Direction and Norm attack in l2 (Rony et al. 2019), foolbox 3.3.4's ``DDNAttack``.

    Args:
        norm: 'l2' (anything else is a :class:`~paperlib.config.ConfigError`).
        steps: DDN iterations (foolbox's default is 10; the DDN paper evaluates with 100 to 1000).
        init_epsilon: initial radius (foolbox: 1.0).
        gamma: radius update factor (foolbox: 0.05).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    name = "ddn"
    _salt = 0xDD1

    def __init__(self, *, norm: str = "l2", steps: int = 100, init_epsilon: float = 1.0,
                 gamma: float = 0.05, criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("DDNAttack", criterion)
        self.norm = normalize_norm(norm)
        if self.norm != "l2":
            raise ConfigError(f"DDNAttack norm={norm!r} is not allowed; DDN is an l2 attack")
        self.steps = _check_int("steps", steps)
        check_positive("init_epsilon", init_epsilon)
        check_positive("gamma", gamma)
        self.init_epsilon, self.gamma = float(init_epsilon), float(gamma)

    def _foolbox_attack(self, fb):
        return fb.attacks.DDNAttack(steps=self.steps, init_epsilon=self.init_epsilon, gamma=self.gamma)


class _FixedEpsLibraryAttack(FixedEpsilonAttack):
    """A torchattacks fixed-eps attack, one image per call at its own eps and seed."""

    def _build(self, model: nn.Module, k: int):  # pragma: no cover - abstract helper
        raise NotImplementedError

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor, *,
                eps: Tensor, **kwargs) -> tuple[Tensor, Optional[Tensor]]:
        atk = self._build(_InputDtype(model, x.dtype), _n_classes(model, x))

        def one(i: int, seed: int) -> Tensor:
            e = float(eps[i])
            if e == 0.0:
                return x[i:i + 1]
            atk.seed, atk.eps = seed, e
            return atk(x[i:i + 1].float(), y[i:i + 1])

        return _per_image(x, _image_seeds(noise, rows), one), eps


class APGDAttack(_FixedEpsLibraryAttack):
    """APGD (Croce & Hein 2020), from torchattacks 3.5.1, with AutoAttack's settings: APGD-CE by default.

    Args:
        norm: 'l2' or 'linf'.
        loss: 'ce' (APGD-CE) or 'dlr' (the untargeted difference-of-logits-ratio loss).
        steps: iterations (AutoAttack: 100; torchattacks' ``AutoAttack`` class uses 10).
        n_restarts: random restarts (AutoAttack standard: 1).
        rho: the step-size halving threshold (0.75).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    def __init__(self, *, norm: str = "linf", loss: str = "ce", steps: int = 100, n_restarts: int = 1,
                 rho: float = 0.75, criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("APGDAttack", criterion)
        self.norm = normalize_norm(norm)
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"loss={loss!r} is not allowed; choose 'ce' or 'dlr'")
        self.loss = loss
        self.name = f"apgd-{loss}"
        self._salt = 0xA9C if loss == "ce" else 0xA9D
        self.steps = _check_int("steps", steps)
        self.n_restarts = _check_int("n_restarts", n_restarts)
        check_positive("rho", rho)
        self.rho = float(rho)

    def _build(self, model: nn.Module, k: int):
        import torchattacks

        return torchattacks.APGD(model, norm=_LIB_NORM[self.norm], eps=0.0, steps=self.steps,
                                 n_restarts=self.n_restarts, loss=self.loss, rho=self.rho)


class APGDTargetedAttack(_FixedEpsLibraryAttack):
    """APGD-T (Croce & Hein 2020), from torchattacks 3.5.1: targeted DLR loss towards each of the
    ``n_target_classes`` most likely other classes in turn, with AutoAttack's settings.

    Args:
        norm: 'l2' or 'linf'.
        steps: iterations per target (AutoAttack: 100).
        n_restarts: restarts per target (AutoAttack standard: 1).
        n_target_classes: targets (AutoAttack: 9; at most the classes minus one). The targeted DLR loss
            needs at least 4 classes.
        rho: the step-size halving threshold (0.75).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    name = "apgd-t"
    _salt = 0xA97

    def __init__(self, *, norm: str = "linf", steps: int = 100, n_restarts: int = 1, n_target_classes: int = 9,
                 rho: float = 0.75, criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("APGDTargetedAttack", criterion)
        self.norm = normalize_norm(norm)
        self.steps = _check_int("steps", steps)
        self.n_restarts = _check_int("n_restarts", n_restarts)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes)
        check_positive("rho", rho)
        self.rho = float(rho)

    def _build(self, model: nn.Module, k: int):
        import torchattacks

        if k < 4:
            raise ConfigError(f"APGD-T's targeted DLR loss needs at least 4 classes; the model has {k}")
        atk = torchattacks.APGDT(model, norm=_LIB_NORM[self.norm], eps=0.0, steps=self.steps,
                                 n_restarts=self.n_restarts, rho=self.rho, n_classes=k)
        atk.n_target_classes = min(self.n_target_classes, k - 1)
        return atk


class SquareAttack(_FixedEpsLibraryAttack):
    """The Square attack (Andriushchenko et al. 2020), from torchattacks 3.5.1: gradient-free, score-based,
    with AutoAttack's settings.

    Args:
        norm: 'l2' or 'linf'.
        n_queries: model queries per image (AutoAttack: 5000).
        n_restarts: restarts (1).
        p_init: initial fraction of pixels changed per step (AutoAttack: 0.8).
        criterion: None or top-1 (:class:`~paperlib.attacks.base.Misclassification`; ``top_k > 1`` is a
            :class:`~paperlib.config.ConfigError`).
    """

    name = "square"
    _salt = 0x5C0

    def __init__(self, *, norm: str = "linf", n_queries: int = 5000, n_restarts: int = 1,
                 p_init: float = 0.8, criterion: Optional[Misclassification] = None) -> None:
        self.criterion = _top1_criterion("SquareAttack", criterion)
        self.norm = normalize_norm(norm)
        self.n_queries = _check_int("n_queries", n_queries)
        self.n_restarts = _check_int("n_restarts", n_restarts)
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ConfigError(f"p_init={p_init!r} must be a number in (0, 1]")
        self.p_init = float(p_init)

    def _build(self, model: nn.Module, k: int):
        import torchattacks

        return torchattacks.Square(model, norm=_LIB_NORM[self.norm], eps=0.0, n_queries=self.n_queries,
                                   n_restarts=self.n_restarts, p_init=self.p_init, loss="margin",
                                   resc_schedule=True)


def reference_attack(name: str, norm: str, *, steps: int = 100, n_queries: int = 5000, n_target_classes: int = 9,
                     criterion: Optional[Misclassification] = None):
    """The reference attack ``name`` (one of :data:`~paperlib.attacks.reference.REFERENCE_ATTACKS`) in ``norm`` with AutoAttack's settings
    (``steps`` iterations for FAB, FMN, DDN and APGD; ``n_queries`` for Square; ``n_target_classes`` for
    APGD-T); ``criterion``: None or top-1 (``top_k > 1`` is a :class:`~paperlib.config.ConfigError`)."""
    c = {"criterion": criterion}
    if name == "fab":
        return FABAttack(norm=norm, steps=steps, **c)
    if name == "fmn":
        return FMNAttack(norm=norm, steps=steps, **c)
    if name == "ddn":
        return DDNAttack(norm=norm, steps=steps, **c)
    if name == "apgd-ce":
        return APGDAttack(norm=norm, loss="ce", steps=steps, **c)
    if name == "apgd-t":
        return APGDTargetedAttack(norm=norm, steps=steps, n_target_classes=n_target_classes, **c)
    if name == "square":
        return SquareAttack(norm=norm, n_queries=n_queries, **c)
    raise ConfigError(f"reference attack {name!r} is not allowed; choose one of {', '.join(REFERENCE_ATTACKS)}")
