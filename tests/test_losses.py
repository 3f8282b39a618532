"""The paper's evaluation loss (margin on softmax probabilities) and the per-example cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paperlib.config import ConfigError
from paperlib.losses import MARGIN_L0, cross_entropy, get_loss, is_correct, logit_margin_loss, margin_loss


@pytest.fixture
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 10, generator=g, dtype=torch.float64) * 3


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))


def test_margin_loss_matches_max_other_probability_minus_true(logits, labels):
    p = logits.softmax(dim=1)
    expected = torch.stack([
        max(p[i, j] for j in range(10) if j != labels[i]) - p[i, labels[i]] for i in range(len(labels))
    ])
    torch.testing.assert_close(margin_loss(logits, labels), expected)


def test_margin_loss_is_negative_exactly_when_the_label_is_the_argmax(logits, labels):
    loss = margin_loss(logits, labels)
    assert MARGIN_L0 == 0.0
    assert torch.equal(loss < 0, logits.argmax(dim=1) == labels)
    assert torch.equal(is_correct(logits, labels), logits.argmax(dim=1) == labels)
    assert loss.min() >= -1 and loss.max() <= 1


def test_top5_margin_is_negative_exactly_when_the_label_is_in_the_top5(logits, labels):
    loss5 = margin_loss(logits, labels, top_k=5)
    in_top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
    assert in_top5.any() and (~in_top5).any()
    assert torch.equal(loss5 < 0, in_top5)


def test_top5_margin_equals_the_authors_sixth_largest_where_the_label_is_in_the_top5(logits, labels):
    # cfinlay/tulip imagenet/test_statistics.py: (sorted p)[:, 5:].max() - p_c
    p = logits.softmax(dim=1)
    authors = p.sort(dim=1, descending=True).values[:, 5:].max(dim=1).values - p.gather(1, labels[:, None]).squeeze(1)
    ours = margin_loss(logits, labels, top_k=5)
    in_top5 = ours < 0
    torch.testing.assert_close(ours[in_top5], authors[in_top5])
    # Elsewhere both say "misclassified" (>= 0) but may differ in value.
    assert (authors[~in_top5] >= 0).all() and (ours[~in_top5] >= 0).all()


def test_logit_margin_has_the_sign_of_the_probability_margin(logits, labels):
    torch.testing.assert_close(
        logit_margin_loss(logits, labels),
        torch.stack([max(logits[i, j] for j in range(10) if j != labels[i]) - logits[i, labels[i]]
                     for i in range(len(labels))]),
    )
    assert torch.equal(logit_margin_loss(logits, labels, top_k=3) < 0, margin_loss(logits, labels, top_k=3) < 0)
    assert get_loss("margin") is margin_loss and get_loss("logit-margin") is logit_margin_loss


def test_cross_entropy_is_per_example(logits, labels):
    ce = cross_entropy(logits, labels)
    assert ce.shape == (64,)
    torch.testing.assert_close(ce.mean(), F.cross_entropy(logits, labels))


def test_margin_loss_gradient_reaches_the_input():
    x = torch.randn(3, 5, requires_grad=True, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    loss = margin_loss(x @ w, torch.tensor([0, 1, 2]))
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("top_k", [0, 10, 2.5, True])
def test_bad_top_k_is_a_config_error(logits, labels, top_k):
    with pytest.raises(ConfigError, match="top_k"):
        margin_loss(logits, labels, top_k=top_k)


def test_unknown_loss_name_is_a_config_error():
    with pytest.raises(ConfigError, match="loss='hinge'"):
        get_loss("hinge")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_attacks_summed_margin_is_the_logit_margin_summed_bit_for_bit(dtype):
    """``paperlib.attacks.pgd.margin_loss`` (a second function of that name) is ``logit_margin_loss(...).sum()`` to
    the last bit, ties included, so the attacks can use the one margin of paperlib.losses without changing a
    number."""
    from paperlib.attacks import pgd

    g = torch.Generator().manual_seed(3)
    z = (torch.randn(33, 7, generator=g, dtype=torch.float64) * 3).to(dtype)
    z[0] = 1.0  # all tied
    z[1, :2] = z[1].max() + 1  # the true class tied with another at the top
    y = torch.randint(0, 7, (33,), generator=g)
    y[1] = 0
    assert torch.equal(pgd.margin_loss(z, y), logit_margin_loss(z, y).sum())
    assert logit_margin_loss(z, y)[0] == 0 and logit_margin_loss(z, y)[1] == 0
