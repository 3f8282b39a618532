import dataclasses

import pytest

from paperlib.config import (PROFILES, ConfigError, check_choice, check_positive, check_probability,
                             config_from_dict, config_hash, config_to_dict, get_profile, normalize_norm)


@dataclasses.dataclass(frozen=True)
class Toy:
    lam: float
    norm: str = "l2"
    milestones: tuple[int, ...] = (1, 2)


def test_config_hash_is_stable_and_field_order_independent():
    assert config_hash(Toy(1.0)) == config_hash({"norm": "l2", "milestones": [1, 2], "lam": 1.0})
    assert config_hash(Toy(1.0)) == config_hash(Toy(1.0))
    assert len(config_hash(Toy(1.0))) == 12


def test_config_hash_changes_with_any_field():
    base = config_hash(Toy(1.0))
    assert config_hash(Toy(1.0, norm="linf")) != base
    assert config_hash(Toy(0.1)) != base
    assert config_hash(Toy(1.0, milestones=(1,))) != base


def test_config_roundtrip_restores_tuples():
    cfg = Toy(0.5, "linf", (3, 4))
    assert config_from_dict(Toy, config_to_dict(cfg)) == cfg


def test_malformed_config_names_the_bad_fields():
    with pytest.raises(ConfigError, match="unknown field.*'lamda'"):
        config_from_dict(Toy, {"lamda": 1.0})
    with pytest.raises(ConfigError, match="missing field.*'lam'"):
        config_from_dict(Toy, {"norm": "l2"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict(Toy, [1, 2])


def test_validation_messages_name_value_and_allowed():
    with pytest.raises(ConfigError, match=r"method='foo'.*'fd', 'dbp'"):
        check_choice("method", "foo", ["fd", "dbp"])
    with pytest.raises(ConfigError, match=r"h=0 must be > 0"):
        check_positive("h", 0)
    with pytest.raises(ConfigError, match=r"h=nan must be finite"):
        check_positive("h", float("nan"))
    with pytest.raises(ConfigError, match=r"alpha=1.5 must lie strictly between 0 and 1"):
        check_probability("alpha", 1.5)


def test_norm_names_are_case_insensitive():
    assert normalize_norm("L2") == "l2" and normalize_norm("Linf") == "linf" and normalize_norm("LINF") == "linf"
    with pytest.raises(ConfigError, match="norm='l1'"):
        normalize_norm("l1")


def test_profiles_are_consistent():
    assert set(PROFILES) == {"smoke", "fmnist", "cifar10", "imagenet"}
    c = get_profile("cifar10")
    # The paper's CIFAR-10 recipe (section 4 and the authors' code).
    assert (c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.milestones, c.lr_gamma) == (
        "resnext34-2x32", 200, 128, 0.1, 0.9, 5e-4, (60, 120, 160), 0.2)
    for p in PROFILES.values():
        assert all(0 < m < p.epochs for m in p.milestones)
    with pytest.raises(ConfigError, match="profile='cifar'"):
        get_profile("cifar")
