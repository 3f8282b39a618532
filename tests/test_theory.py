import torch

from paperlib.theory import fd_error_vs_h, hessian_norm, quadratic_cost_check, saved_tensor_bytes, smooth_mlp


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
