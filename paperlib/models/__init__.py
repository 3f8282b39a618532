"""Model registry. Every model takes inputs in [0, 1] and returns logits.

>>> from paperlib.models import build_model
>>> model = build_model("fmnist-cnn")

Names: ``fmnist-cnn`` (:mod:`.fmnist`), ``resnext34-2x32`` (the paper's CIFAR-10 network, :mod:`.resnext`),
``resnet50`` (torchvision, for ImageNet, normalization inside), ``linear`` (logits = W x + b; for tests and the
book's closed-form examples). Register more with :func:`register_model`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from paperlib.config import ConfigError
from paperlib.models.fmnist import FashionCNN
from paperlib.models.normalize import Normalize
from paperlib.models.resnext import ResNeXt34

__all__ = ["build_model", "register_model", "model_names", "Normalize", "FashionCNN", "ResNeXt34", "LinearModel",
           "count_parameters",
           "architecture_fingerprint", "eval_mode", "model_classes"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory ``f(num_classes=..., **kwargs) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def build_model(name: str, *, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model (fresh weights, seeded by the caller's torch RNG).

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"model={name!r} is not allowed; choose one of {', '.join(map(repr, model_names()))}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def architecture_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's architecture: its module tree (layer types and settings) and the names and
    shapes of its parameters and buffers.

    Stored beside saved weights so that weights trained with one architecture are never silently loaded into a
    changed one (a parameter-free change, e.g. max- to average-pooling, loads without any state_dict error).
    """
    import hashlib

    shapes = [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()]
    text = repr(model) + "\n" + "\n".join(shapes)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode inside the block; restore each one's previous mode after
    (attacks and bounds evaluate a model without changing how the caller left it)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def model_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes ``K`` of a model's logits, from one forward pass of ``x[:1]`` (eval mode, no
    gradients, on the model's device and dtype); a model that does not return logits ``[1, K]`` (K >= 2) is a
    :class:`~paperlib.config.ConfigError`."""
    from paperlib.config import check_logits

    params = list(model.parameters()) + list(model.buffers()) if isinstance(model, nn.Module) else []
    device = params[0].device if params else x.device
    dtype = next((p.dtype for p in params if p.is_floating_point()), x.dtype)
    ctx = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with ctx, torch.no_grad():
        logits = model(x[:1].to(device, dtype))
    return check_logits(logits, 1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class LinearModel(nn.Module):
    """``logits = W flatten(x) + b``: the one model where minimal adversarial distances have a closed form."""

    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        n = 1
        for s in in_shape:
            n *= s
        self.fc = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@register_model("fmnist-cnn")
def _fmnist_cnn(num_classes: int = 10, **kw) -> nn.Module:
    return FashionCNN(num_classes=num_classes, **kw)


@register_model("resnext34-2x32")
def _resnext(num_classes: int = 10, **kw) -> nn.Module:
    return ResNeXt34(num_classes=num_classes, **kw)


@register_model("resnet50")
def _resnet50(num_classes: int = 1000, **kw) -> nn.Module:
    from torchvision.models import resnet50

    # ImageNet statistics; the authors normalized outside the model, we put it inside so that attacks,
    # bounds and the penalty all see [0, 1] pixels (h and eps in pixel units).
    return nn.Sequential(Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                         resnet50(weights=None, num_classes=num_classes, **kw))


@register_model("linear")
def _linear(num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    return LinearModel(in_shape=tuple(in_shape), num_classes=num_classes)
