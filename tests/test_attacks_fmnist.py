"""On a small Fashion-MNIST model trained here on real data: every attack's distances are real.

For each attack, the reported distances are recomputed from the returned adversarials (float64), each
successful adversarial is checked to be misclassified by the model on its own (a forward pass of that one
image, not the batch the attack saw), and the attack must break at least half of the images with the cut
test budgets.
"""

from __future__ import annotations

import os

import pytest
import torch

from paperlib.attacks import BoundaryAttack, CarliniWagnerL2, LogBarrierAttack, MinimalPGD

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from paperlib.data import DataNotFoundError, load_dataset, sample_images, subset

    try:
        train_set = load_dataset("fashion-mnist", "train")
        test_set = load_dataset("fashion-mnist", "test")
    except DataNotFoundError as exc:  # pragma: no cover - depends on the machine
        torch.set_num_threads(threads)
        pytest.skip(f"real Fashion-MNIST not found ({exc}); install dataset-fashion-mnist ({FMNIST_DIR})")
    from paperlib.models import FashionCNN
    from paperlib.theory import quick_train

    torch.manual_seed(0)
    model = FashionCNN(width=8, hidden=32)
    xs, ys = subset(train_set, 3000, seed=0).tensors()  # fashion-mnist is an in-memory dataset
    quick_train(model, xs, ys, epochs=2, batch_size=100, lr=0.05, seed=0)
    x, y, idx = sample_images(test_set, 8, seed=0)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    yield model, x, y, idx, float(acc)
    torch.set_num_threads(threads)


ATTACKS = {
    # budgets cut for test speed; the defaults are measured in benchmarks/bench_attacks.py
    "pgd-l2": lambda: MinimalPGD(norm="l2", steps=20, search_steps=10),
    "pgd-linf": lambda: MinimalPGD(norm="linf", steps=20, search_steps=10),
    # CW: in tanh space the zero background pixels (w = atanh(-0.999999) = -7.25) barely move in a few hundred
    # Adam steps, so a cut budget breaks fewer images; it starts from c0 = 1 to spend them on useful constants
    "cw": lambda: CarliniWagnerL2(steps=200, binary_search_steps=3, initial_const=1.0),
    "boundary": lambda: BoundaryAttack(steps=300),
    "logbarrier-l2": lambda: LogBarrierAttack(norm="l2", max_outer=4, max_inner=40),
    "logbarrier-linf": lambda: LogBarrierAttack(norm="linf", max_outer=4, max_inner=40),
}


def test_tiny_model_learned_something(trained):
    assert trained[4] >= 0.6


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_distances_are_recomputed_from_adversarials_that_are_misclassified(trained, name):
    model, x, y, idx, _ = trained
    res = ATTACKS[name]()(model, x, y, seed=0, keys=idx)
    adv = res.adversarials
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    d = (adv.double() - x.double()).flatten(1)
    ok = res.success
    assert torch.allclose(res.dist_l2[ok], d.norm(dim=1)[ok], rtol=1e-12, atol=0)
    assert torch.allclose(res.dist_linf[ok], d.abs().amax(dim=1)[ok], rtol=1e-12, atol=0)
    with torch.no_grad():
        for i in ok.nonzero().flatten().tolist():
            assert int(model(adv[i:i + 1]).argmax(1)) != int(y[i]), f"{name}: image {i} is not misclassified"
    attacked = res.clean_correct
    # with the cut budgets every attack must still break at least half of the images (not a vacuous test)
    assert 2 * int(ok[attacked].sum()) >= int(attacked.sum()), f"{name} broke too few images"
    assert bool((res.dist_l2[ok & attacked] > 0).all())
