import pytest
import torch
from torch import nn

from paperlib.config import ConfigError
from paperlib.models import Normalize, build_model, count_parameters, model_names
from paperlib.models.resnext import BranchBlock, ChannelBias
from tests.conftest import requires_fmnist


def test_registry_lists_the_profiles_models():
    assert {"fmnist-cnn", "resnext34-2x32", "resnet50", "linear"} <= set(model_names())
    with pytest.raises(ConfigError, match="model='resnet18'.*'fmnist-cnn'"):
        build_model("resnet18")


def test_resnext34_2x32_parameter_count_matches_the_paper():
    model = build_model("resnext34-2x32")
    # Hand count: stem 3*32*9 + 32; per block at width C: 2 * (9*C*2C) + 4C (two 3x3 convs, one with
    # 2 groups, and their biases); transitions 32*64 + 64, 64*128 + 128; head 128*10 + 10.
    expected = 3 * 32 * 9 + 32 + 2048 + 64 + 8192 + 128 + 1280 + 10
    expected += sum(5 * (2 * 9 * c * 2 * c + 4 * c) for c in (32, 64, 128))
    assert count_parameters(model) == expected == 3_887_818  # "about 3.89 M"


def test_resnext34_layer_structure():
    model = build_model("resnext34-2x32")
    blocks = [m for m in model.modules() if isinstance(m, BranchBlock)]
    assert [b.width for b in blocks] == [32] * 5 + [64] * 5 + [128] * 5
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert sum(c.groups == 2 for c in convs) == 15
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not bn.affine for bn in bns)
    assert sum(isinstance(m, ChannelBias) for m in model.modules()) == len(bns)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 2
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and (out >= 0).all()  # final ReLU: logits are non-negative


def test_fmnist_cnn_shapes_and_no_batchnorm():
    model = build_model("fmnist-cnn")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert isinstance(model.net[0], Normalize)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_resnet50_takes_unit_interval_inputs():
    model = build_model("resnet50", num_classes=1000)
    assert isinstance(model[0], Normalize)
    assert count_parameters(model) == 25_557_032  # torchvision's ResNet-50; Normalize has no parameters


def test_normalize_layer():
    layer = Normalize((0.5, 0.25), (0.5, 0.25))
    x = torch.ones(1, 2, 2, 2)
    assert torch.allclose(layer(x), torch.tensor([1.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))
    assert layer(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="std"):
        Normalize((0.5,), (0.0,))


def test_linear_model_is_affine():
    model = build_model("linear", in_shape=(1, 4, 4), num_classes=3)
    x, y = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    f = lambda t: model(t) - model(torch.zeros_like(t))  # noqa: E731
    assert torch.allclose(f(x + y), f(x) + f(y), atol=1e-6)


@requires_fmnist
def test_fmnist_cnn_is_differentiable_at_real_images():
    """No max-pool ties on the constant background: the directional derivative along the normalized gradient
    equals the gradient norm (finite differences at tiny h in float64 agree with autograd)."""
    from paperlib.data import load_dataset, sample_images
    from paperlib.report.theory import fd_error_vs_h
    from paperlib.theory import quick_train

    torch.manual_seed(0)
    tx, ty = load_dataset("fashion-mnist", "train").tensors()
    x, y, _ = sample_images(load_dataset("fashion-mnist", "test"), 32, seed=0)
    model = quick_train(build_model("fmnist-cnn"), tx[:5000], ty[:5000], steps=50)
    err = fd_error_vs_h(model, x, y, [1e-7], dtypes=(torch.float64,))
    assert err["median_rel_error"].item() < 1e-4
