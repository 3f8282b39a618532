"""Every input is validated where it enters, with the same rules on the command line, the Python API and the
notebooks' papermill parameters: a bad value is one line (a :class:`~paperlib.config.ConfigError`; on the
command line ``paperlib: error: ...`` with exit status 2) naming the value and what is allowed -- never a
traceback, a silent clamp or a result computed from it.

The rules (one function each, in :mod:`paperlib.config` and :func:`paperlib.data.check_split_count`): integers
are integers (no bool, no 2.7), counts no larger than the set they are drawn from (the message names its size),
linf radii <= 1, images finite and in [0, 1], labels in [0, K), logits [B, K], devices this machine has, run-store
directories that are directories or can be created.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import paperlib.training
from paperlib.attacks import suite as suite_mod
from paperlib.attacks.pgd import PGD, MinimalPGD
from paperlib.attacks.suite import AttackConfig, run_attack_suite
from paperlib.bounds import BoundConfig, CertifyConfig, run_bounds, run_certify
from paperlib.cli import main
from paperlib import config as C
from paperlib import data as D
from paperlib.config import ConfigError
from paperlib.data import load_dataset, sample_images, subset
from paperlib.models import build_model
from paperlib.regularizers import GradientPenalty, double_backprop_penalty, finite_difference_penalty
from paperlib.report import experiments as ex
from tests.conftest import REPO

NO_GPU = not torch.cuda.is_available()
FEW_GPUS = torch.cuda.device_count() < 8


def _one_line_error(capsys, *needles: str) -> str:
    """The command's stderr: one line ``paperlib: error: ...`` holding every needle, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("paperlib: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class Linear(nn.Module):
    """A seeded 10-class linear model on 1x4x4 images."""

    def __init__(self, out_shape=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 10)
        self.out_shape = out_shape

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z if self.out_shape is None else self.out_shape(z)


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(10, (n,), generator=g), torch.arange(n)


# --------------------------------------------------------------------------------------------------
# The rules themselves
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2.7, 2.0, True, "3", None])
def test_check_int_refuses_floats_bools_and_strings(value):
    with pytest.raises(ConfigError, match=f"epochs={value!r} must be an integer >= 1"):
        C.check_int("epochs", value, 1)
    assert C.check_int("epochs", 3, 1) == 3


@pytest.mark.parametrize("value", [True, "abc", float("nan")])
def test_check_number_refuses_bools_strings_and_nan(value):
    with pytest.raises(ConfigError, match="lam="):
        C.check_number("lam", value)


def test_counts_larger_than_the_set_name_its_size():
    with pytest.raises(ConfigError, match="train_subset=100000 exceeds the 60000 training images of fashion-mnist"):
        D.check_split_count("train_subset", 100000, "fashion-mnist", "train")
    with pytest.raises(ConfigError, match="exceeds the 10000 test images of fashion-mnist; choose at most 10000"):
        D.check_split_count("--n-images", 100000, "fashion-mnist", "test")
    assert D.check_split_count("--n", 10000, "fashion-mnist", "test") == 10000
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        C.check_count("n", 0, 10, "images")


def test_subset_and_sample_images_refuse_more_images_than_the_dataset_holds():
    ds = load_dataset("synthetic-fashion-mnist", "test")  # 512 images
    with pytest.raises(ConfigError, match="n=513 exceeds the 512 images of synthetic-fashion-mnist"):
        subset(ds, 513)
    with pytest.raises(ConfigError, match="train_subset=100000 exceeds the 512 images"):
        subset(ds, 100000, name="train_subset")
    with pytest.raises(ConfigError, match="n=100000 exceeds the 512 images"):
        sample_images(ds, 100000)
    assert subset(ds, 512) is ds and len(subset(ds, 100)) == 100
    assert len(sample_images(ds, 512)[0]) == 512


@pytest.mark.parametrize("eps", [8.0, 300 / 255])
def test_linf_radii_above_one_are_refused(eps):
    with pytest.raises(ConfigError, match="linf radius larger than 1.*8/255"):
        C.check_linf_eps("eps", eps, "linf")
    assert C.check_linf_eps("eps", eps, "l2") == eps  # l2 distances in [0, 1]^D reach sqrt(D)
    assert C.check_linf_eps("eps", 1.0, "linf") == 1.0


@pytest.mark.parametrize("x, match", [
    (torch.full((2, 1, 4, 4), float("nan")), "32 NaN or infinite value"),
    (torch.tensor([[0.5, float("inf")]]), "1 NaN or infinite value"),
    (torch.full((2, 1, 4, 4), 255.0), r"pixel values in \[255, 255\]; images must lie in \[0, 1\]"),
    (torch.full((2, 1, 4, 4), -0.5), r"pixel values in \[-0.5, -0.5\]"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "floating-point tensor"),
])
def test_images_must_be_finite_and_in_the_unit_box(x, match):
    with pytest.raises(ConfigError, match=match):
        C.check_unit_images(x)


def test_labels_and_logits_rules():
    with pytest.raises(ConfigError, match=r"y holds label 12; labels must lie in \[0, 10\)"):
        C.check_labels(torch.tensor([0, 12]), 10)
    with pytest.raises(ConfigError, match=r"y holds label -1"):
        C.check_labels(torch.tensor([-1, 2]), 10)
    with pytest.raises(ConfigError, match="integer tensor"):
        C.check_labels(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(ConfigError, match=r"shape \[3\]"):
        C.check_labels(torch.tensor([0, 1]), 10, batch=3)
    with pytest.raises(ConfigError, match=r"logits of shape \[B, K\] = \[3, K\].*shape \[3\]"):
        C.check_logits(torch.zeros(3), 3)
    with pytest.raises(ConfigError, match=r"shape \[3, 10, 1\]"):
        C.check_logits(torch.zeros(3, 10, 1), 3)
    assert C.check_logits(torch.zeros(3, 10), 3) == 10


def test_unknown_and_absent_devices_name_what_is_available():
    with pytest.raises(ConfigError, match=r"device='foo' is not a device; choose one of 'cpu'"):
        C.check_device("foo")
    if FEW_GPUS:
        with pytest.raises(ConfigError, match=r"device='cuda:7' is not available: this machine has .*'cpu'"):
            C.check_device("cuda:7")
    if NO_GPU:
        with pytest.raises(ConfigError, match="no CUDA device"):
            C.check_device("cuda")
    assert C.check_device("cpu") == torch.device("cpu")


def test_init_distributed_refuses_an_unknown_device():
    from paperlib.training.distributed import init_distributed

    with pytest.raises(ConfigError, match="device='foo' is not a device"):
        init_distributed("foo")


def test_runs_dir_that_is_a_file_or_cannot_be_created(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        C.check_runs_dir(f)
    with pytest.raises(ConfigError, match="cannot be created: .* is a file"):
        C.check_runs_dir(f / "runs")
    assert C.check_runs_dir(tmp_path / "new" / "runs") == tmp_path / "new" / "runs"
    assert not (tmp_path / "new").exists()  # nothing is created by the check


# --------------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------------


def test_attack_suite_refuses_nan_images_instead_of_reporting_successful_attacks():
    x, y, idx = _batch()
    x[1, 0, 0, 0] = float("nan")
    cfg = AttackConfig(attacks=("pgd",), norms=("l2",), n_images=4, batch_size=4, convergence_n=0, pgd_steps=2,
                       pgd_search_steps=2)
    with pytest.raises(ConfigError, match="1 NaN or infinite value"):
        run_attack_suite(Linear(), x, y, idx, cfg, progress=False)
    with pytest.raises(ConfigError, match="NaN"):
        MinimalPGD(norm="l2", steps=2, search_steps=2)(Linear(), x, y)


def test_attack_suite_refuses_labels_outside_the_model_classes():
    x, y, idx = _batch()
    y[2] = 12
    cfg = AttackConfig(attacks=("pgd",), norms=("l2",), n_images=4, batch_size=4, convergence_n=0, pgd_steps=2,
                       pgd_search_steps=2)
    with pytest.raises(ConfigError, match=r"label 12; labels must lie in \[0, 10\)"):
        run_attack_suite(Linear(), x, y, idx, cfg, progress=False)
    y[2] = -1
    with pytest.raises(ConfigError, match="label -1"):
        MinimalPGD(norm="linf", steps=2, search_steps=2)(Linear(), x, y)


@pytest.mark.parametrize("reshape", [lambda z: z.unsqueeze(-1), lambda z: z[:, 0], lambda z: z.t()])
def test_attacks_refuse_logits_that_are_not_batch_by_classes(reshape):
    x, y, _ = _batch()
    with pytest.raises(ConfigError, match=r"logits of shape \[B, K\] = \[4, K\]"):
        MinimalPGD(norm="l2", steps=2, search_steps=2)(Linear(reshape), x, y)


def test_fixed_eps_pgd_refuses_a_linf_eps_in_pixel_units_of_255():
    x, y, _ = _batch()
    with pytest.raises(ConfigError, match="eps=8.0 is a linf radius larger than 1"):
        PGD(norm="linf", steps=2)(Linear(), x, y, eps=8.0)
    with pytest.raises(ConfigError, match="linf radius larger than 1"):
        MinimalPGD(norm="linf", max_eps=300 / 255)
    with pytest.raises(ConfigError, match="init_eps=8"):
        MinimalPGD(norm="linf", init_eps=8)
    PGD(norm="l2", steps=2)(Linear(), x, y, eps=8.0)  # l2 radii may exceed 1


@pytest.mark.parametrize("make, match", [
    (lambda x, y: (x * 255, y), r"pixel values in \[.*\]; images must lie in \[0, 1\]"),
    (lambda x, y: (x.masked_fill(x > 0.9, float("nan")), y), "NaN or infinite"),
    (lambda x, y: (x, y.masked_fill(y == y[0], 10)), r"label 10; labels must lie in \[0, 10\)"),
])
@pytest.mark.parametrize("method", ["fd", "dbp", "lam0"])
def test_gradient_penalty_refuses_bad_images_and_labels(make, match, method):
    x, y, _ = _batch(8)
    x, y = make(x, y)
    penalty = GradientPenalty(method="dbp" if method == "dbp" else "fd", lam=0.0 if method == "lam0" else 1.0)
    with pytest.raises(ConfigError, match=match):
        penalty(Linear(), x, y)


def test_penalty_functions_refuse_wrong_shaped_logits():
    x, y, _ = _batch()
    for fn in (finite_difference_penalty, double_backprop_penalty):
        with pytest.raises(ConfigError, match=r"logits of shape \[B, K\]"):
            fn(Linear(lambda z: z.unsqueeze(1)), x, y)


def test_run_certify_and_run_bounds_refuse_bad_images_and_labels():
    x, y, idx = _batch()
    ccfg = CertifyConfig(sigma=0.25, n0=5, n=10, batch_size=10, n_images=4)
    with pytest.raises(ConfigError, match=r"images must lie in \[0, 1\]"):
        run_certify(Linear(), x * 255, y, idx, ccfg, progress=False)
    with pytest.raises(ConfigError, match="label 10"):
        run_certify(Linear(), x, torch.full_like(y, 10), idx, ccfg, progress=False)
    with pytest.raises(ConfigError, match=r"logits of shape \[B, K\]"):
        run_certify(Linear(lambda z: z[:, :1].squeeze(1)), x, y, idx, ccfg, progress=False)
    bcfg = BoundConfig(n_images=4, omega_samples=1, grid_size=1, batch_size=4, lipschitz_batch=2,
                       omega_method="empirical-max")
    xn = x.clone()
    xn[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        run_bounds(Linear(), xn, y, idx, bcfg, progress=False)
    with pytest.raises(ConfigError, match="label 12"):
        run_bounds(Linear(), x, torch.full_like(y, 12), idx, bcfg, progress=False)


@pytest.mark.parametrize("eps", [8.0, 300 / 255])
def test_bound_config_refuses_linf_radii_above_one(eps):
    with pytest.raises(ConfigError, match="eps_max=.* is a linf radius larger than 1"):
        BoundConfig(norm="linf", eps_max=eps)
    with pytest.raises(ConfigError, match="radius=.* is a linf radius larger than 1"):
        BoundConfig(norm="linf", radii=(eps,))
    BoundConfig(norm="l2", eps_max=eps)


# --------------------------------------------------------------------------------------------------
# papermill parameters (the notebooks' helpers)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, match", [
    (dict(epochs=2.7), "epochs=2.7 must be an integer >= 1"),
    (dict(method="free-at", norm="linf", m=2.5), "m=2.5 must be an integer >= 1"),
    (dict(lam=True), "lam=True must be a number"),
    (dict(lam="abc"), "lam='abc' must be a number"),
    (dict(seed=1.5), "seed=1.5 must be an integer >= 0"),
    (dict(method="pgd-at", norm="linf", eps=8), "eps=8 is a linf radius larger than 1"),
])
def test_train_config_takes_notebook_parameters_literally(params, match):
    with pytest.raises(ConfigError, match=match):
        ex.train_config("smoke", **{"method": "penalty", **params})
    with pytest.raises(ConfigError, match=match):
        ex.check_parameters("smoke", **{"method": "penalty", **params})


def test_check_parameters_counts_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="n_images=20000 exceeds the 10000 test images of fashion-mnist"):
        ex.check_parameters("fmnist", n_images=20000)
    with pytest.raises(ConfigError, match="n_images=2.5 must be an integer"):
        ex.check_parameters("fmnist", n_images=2.5)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="runs_dir=.* is a file"):
        ex.check_parameters("smoke", runs_dir=str(f))
    with pytest.raises(ConfigError, match="profile='nope'"):
        ex.check_parameters("nope")
    ex.check_parameters("fmnist")  # the parameter cell's defaults
    ex.check_parameters("smoke", "pgd-at", norm="linf", eps=8 / 255, n_images=10000, runs_dir=str(tmp_path / "r"))


def _parameters(nb) -> list[str]:
    import ast

    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]


@pytest.mark.parametrize("name", ["train", "attack", "bound", "certify"])
def test_experiment_notebooks_check_every_parameter_right_after_the_parameter_cell(name):
    import ast

    import nbformat

    nb = nbformat.read(REPO / "book" / f"{name}.ipynb", as_version=4)
    i = next(k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    check = nb.cells[i + 1]
    assert check.cell_type == "code" and "ex.check_parameters(" in check.source
    call = next(n for n in ast.walk(ast.parse(check.source)) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", None) == "check_parameters")
    passed = [a.id for a in call.args] + [k.value.id for k in call.keywords]
    assert passed == _parameters(nb)


@pytest.mark.parametrize("param, value, message", [
    ("lam", "abc", "ConfigError: lam='abc' must be a number"),
    ("epochs", "2.7", "ConfigError: epochs=2.7 must be an integer >= 1"),
])
def test_a_bad_papermill_parameter_is_the_notebooks_first_error_in_one_line(tmp_path, param, value, message):
    out = tmp_path / "train.ipynb"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(REPO / "book" / "train.ipynb"), str(out), "-p", "profile", "smoke",
         "-p", "runs_dir", str(tmp_path / "runs"), "-p", param, value, "--cwd", str(REPO / "book")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert errors and errors[0]["traceback"] == [message]
    assert not (tmp_path / "runs").exists()  # stopped before anything was trained


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


SYNTH = ["--profile", "smoke", "--dataset", "synthetic-fashion-mnist", "--no-progress"]  # 2048 train, 512 test


@pytest.mark.parametrize("extra, needles", [
    (["--train-subset", "100000"], ["--train-subset=100000 exceeds the 2048 training images of "
                                    "synthetic-fashion-mnist"]),
    (["--train-subset", "64", "--test-subset", "20000"], ["--test-subset=20000 exceeds the 512 test images"]),
    (["--method", "pgd-at", "--eps", "8", "--train-subset", "64"], ["--eps=8.0 is a linf radius larger than 1"]),
    (["--method", "pgd-at", "--eps", "300/255", "--train-subset", "64"], ["linf radius larger than 1"]),
    (["--device", "foo", "--train-subset", "64"], ["--device='foo' is not a device", "'cpu'"]),
])
def test_cli_train_refuses_in_one_line(tmp_path, capsys, extra, needles):
    assert main(["train", *SYNTH, "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", *extra]) == 2
    _one_line_error(capsys, *needles)
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not FEW_GPUS, reason="this machine has 8 GPUs or more")
def test_cli_train_refuses_an_absent_gpu(tmp_path, capsys):
    assert main(["train", *SYNTH, "--runs-dir", str(tmp_path), "--train-subset", "64", "--device", "cuda:7"]) == 2
    _one_line_error(capsys, "--device='cuda:7' is not available", "'cpu'")


def test_cli_runs_dir_that_is_a_file_or_cannot_be_created(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", *SYNTH, "--train-subset", "64", "--runs-dir", str(f)]) == 2
    _one_line_error(capsys, "--runs-dir=", "is a file, not a directory")
    assert main(["train", *SYNTH, "--train-subset", "64", "--runs-dir", str(f / "runs")]) == 2
    _one_line_error(capsys, "cannot be created", "is a file")
    assert main(["runs", "--runs-dir", str(f)]) == 2
    _one_line_error(capsys, "is a file, not a directory")


def test_cli_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", *SYNTH, "--train-subset", "64", "--epochs", "1", "--runs-dir", str(tmp_path)]) == 2
    _one_line_error(capsys, "no space left on device", "run the same command again")


@pytest.fixture
def model_run(tmp_path, monkeypatch):
    """A run directory whose 'trained model' is a seeded linear model on synthetic Fashion-MNIST (512 test
    images)."""
    torch.manual_seed(0)
    model = build_model("linear", num_classes=10).eval()
    cfg = types.SimpleNamespace(profile="smoke", dataset="synthetic-fashion-mnist")
    path = tmp_path / "runs" / "smoke" / "toy"
    path.mkdir(parents=True)
    seen = {}

    def load(p, **kw):
        seen.update(kw)
        return model, cfg

    monkeypatch.setattr(paperlib.training, "load_trained", load)
    return path, seen


@pytest.mark.parametrize("command", [["bound"], ["certify", "--sigma", "0.25", "--n0", "5", "--n-samples", "10"]])
def test_cli_bound_and_certify_refuse_more_images_than_the_test_set(model_run, capsys, command):
    path, _ = model_run
    argv = [command[0], str(path), *command[1:], "--n-images", "100000", "--omega-samples", "1", "--grid-size", "1",
            "--no-progress"] if command[0] == "bound" else [command[0], str(path), *command[1:], "--n-images",
                                                            "100000", "--no-progress"]
    assert main(argv) == 2
    _one_line_error(capsys, "--n-images=100000 exceeds the 512 test images of synthetic-fashion-mnist")
    assert not any(path.iterdir())


@pytest.mark.parametrize("command", [["bound"], ["certify", "--sigma", "0.25"]])
@pytest.mark.parametrize("device, needles", [("foo", ["--device='foo' is not a device"]),
                                             pytest.param("cuda:7", ["--device='cuda:7' is not available"],
                                                          marks=pytest.mark.skipif(not FEW_GPUS, reason="8+ GPUs"))])
def test_cli_bound_and_certify_take_a_device_and_refuse_unknown_ones(model_run, capsys, command, device, needles):
    path, seen = model_run
    assert main([command[0], str(path), *command[1:], "--device", device, "--n-images", "2"]) == 2
    _one_line_error(capsys, *needles, "'cpu'")
    assert main(["bound", str(path), "--device", "cpu", "--n-images", "12", "--omega-samples", "2", "--grid-size",
                 "3", "--batch-size", "12", "--no-progress"]) == 0
    assert seen["device"] == "cpu"


@pytest.mark.parametrize("eps_max", ["8", "300/255"])
def test_cli_bound_refuses_a_linf_eps_max_above_one(model_run, capsys, eps_max):
    path, _ = model_run
    assert main(["bound", str(path), "--norm", "linf", "--eps-max", eps_max, "--n-images", "2"]) == 2
    _one_line_error(capsys, "eps_max=", "is a linf radius larger than 1")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from paperlib.training import TrainConfig, train

    torch.set_num_threads(1)
    tcfg = TrainConfig.from_profile("smoke", dataset="synthetic-fashion-mnist", train_subset=64, test_subset=32,
                                    epochs=1, batch_size=32)
    return train(tcfg, str(tmp_path_factory.mktemp("store")), progress=False, device="cpu")


@pytest.mark.parametrize("argv, needles", [
    (["--n", "100000"], ["--n=100000 exceeds the 512 test images of synthetic-fashion-mnist"]),
    (["--n", "2", "--device", "foo"], ["--device='foo' is not a device", "'cpu'"]),
    pytest.param(["--n", "2", "--device", "cuda:7"], ["--device='cuda:7' is not available", "'cpu'"],
                 marks=pytest.mark.skipif(not FEW_GPUS, reason="8+ GPUs")),
])
def test_cli_attack_refuses_in_one_line(trained_run, capsys, argv, needles):
    assert main(["attack", str(trained_run.path), *argv, "--no-progress"]) == 2
    _one_line_error(capsys, *needles)
    assert not [p for p in trained_run.path.iterdir() if p.name.startswith("attack-")]


def test_every_sub_command_that_computes_takes_device():
    from paperlib.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("train", "attack", "bound", "certify"):
        assert any("--device" in a.option_strings for a in sub.choices[name]._actions), name
