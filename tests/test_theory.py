import pytest
import torch

from paperlib.config import ConfigError
from paperlib.report.theory import fd_error_vs_h, penalty_step_cost, quadratic_cost_check
from paperlib.theory import (
    fd_relative_errors,
    hessian_norm,
    quadratic_cost_terms,
    saved_tensor_bytes,
    smooth_mlp,
    step_costs,
)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fd_error_is_first_order_in_h_in_float64():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16)
    x, y = _data()
    df = fd_error_vs_h(model, x, y, [1e-5, 1e-4, 1e-3, 1e-2], dtypes=(torch.float64,))
    err = df["median_rel_error"].to_numpy()
    ratios = err[1:] / err[:-1]
    assert ((ratios > 7) & (ratios < 13)).all(), ratios  # truncation error ~ h: x10 per decade


def test_float32_roundoff_dominates_at_tiny_h():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16)
    x, y = _data()
    df = fd_error_vs_h(model, x, y, [1e-6, 1e-2])
    f32 = df[df.dtype == "float32"].set_index("h")["median_rel_error"]
    f64 = df[df.dtype == "float64"].set_index("h")["median_rel_error"]
    assert f32[1e-6] > 100 * f64[1e-6]
    assert f32[1e-6] > 10 * f32[1e-2]  # float32: the error is U-shaped in h; float64 still shrinks at 1e-6
    assert f64[1e-6] < f64[1e-2]


def test_hessian_norm_of_a_quadratic_loss_is_exact():
    class Quadratic(torch.nn.Module):
        # logits (q(x), 0) with q = 0.5 * x^T diag(a) x: CE(y=1) = log(1 + e^q); at x = 0 its Hessian is diag(a)/2
        def __init__(self, a):
            super().__init__()
            self.a = a

        def forward(self, x):
            q = 0.5 * (self.a * x.flatten(1) ** 2).sum(1)
            return torch.stack([q, torch.zeros_like(q)], 1)

    a = torch.tensor([3.0, -5.0, 1.0], dtype=torch.float64)
    C = hessian_norm(Quadratic(a), torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.long))
    assert torch.allclose(C, torch.full((2,), 1.5, dtype=torch.float64), rtol=1e-6)


def test_quadratic_cost_maximum_respects_proposition_3_1():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16).double()
    x, y = _data(3)
    df = quadratic_cost_check(model, x.double(), y, [0.1, 1.0], steps=50)
    assert (df["attained"] <= df["bound"] * (1 + 1e-6)).all()
    assert (df["attained"] >= 0).all()  # v = 0 attains 0, so the maximum cannot be below it


def test_double_backprop_graph_holds_more_than_a_standard_one():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16)
    x, y = _data()
    standard = saved_tensor_bytes(lambda: torch.nn.functional.cross_entropy(model(x), y))

    def dbp():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg, create_graph=True)
        return g.pow(2).sum()

    assert saved_tensor_bytes(dbp) > standard > 0


def test_the_algorithms_give_tensors_and_the_tables_summarize_exactly_those():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16)
    x, y = _data(4)
    hs = [1e-4, 1e-2]
    rel = fd_relative_errors(model, x, y, hs, dtypes=(torch.float64,))
    assert list(rel) == ["float64"] and rel["float64"].shape == (2, 4) and rel["float64"].dtype == torch.float64
    table = fd_error_vs_h(model, x, y, hs, dtypes=(torch.float64,))
    assert table["median_rel_error"].tolist() == [r.median().item() for r in rel["float64"]]
    assert table["max_rel_error"].tolist() == [r.max().item() for r in rel["float64"]]
    with pytest.raises(ConfigError, match="h=0"):
        fd_relative_errors(model, x, y, [0])
    m64, x64 = model.double(), x.double()
    terms = quadratic_cost_terms(m64, x64, y, [0.1, 1.0], steps=5, segment_points=1)
    assert {k: tuple(v.shape) for k, v in terms.items()} == {k: (2, 4) for k in ("attained", "first_order", "C",
                                                                                   "bound")}
    rows = quadratic_cost_check(m64, x64, y, [0.1, 1.0], steps=5, segment_points=1)
    assert rows["attained"].tolist() == terms["attained"].flatten().tolist()  # delta-major, then examples
    assert rows["delta"].tolist() == [0.1] * 4 + [1.0] * 4


def test_step_costs_measure_the_double_backprop_graph_as_the_largest():
    model = smooth_mlp(in_shape=(1, 6, 6), hidden=16)
    x, y = _data()
    costs = step_costs(model, x, y, repeats=1)
    assert list(costs) == ["standard", "FD", "DBP"] and all(c["seconds"] > 0 for c in costs.values())
    assert costs["DBP"]["graph_bytes"] > costs["standard"]["graph_bytes"] > 0
    table = penalty_step_cost(model, x, y, repeats=1)
    assert table.loc["standard", "memory_vs_standard"] == 1.0
    assert table.loc["DBP", "graph_MB"] == costs["DBP"]["graph_bytes"] / 2**20  # memory is deterministic
