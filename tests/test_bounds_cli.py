"""``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...`` end to end on a synthetic dataset."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch

import paperlib.training
from paperlib.cli import main
from paperlib.data import load_dataset, sample_images
from paperlib.models import build_model
from paperlib.runs import Run, finished_dir


@pytest.fixture
def model_run(tmp_path, monkeypatch):
    """A model run directory whose 'trained model' is a seeded linear model on synthetic Fashion-MNIST."""
    torch.manual_seed(0)
    model = build_model("linear", num_classes=10).eval()
    cfg = types.SimpleNamespace(profile="smoke", dataset="synthetic-fashion-mnist")
    path = tmp_path / "runs" / "smoke" / "toy"
    path.mkdir(parents=True)
    monkeypatch.setattr(paperlib.training, "load_trained", lambda p, **kw: (model, cfg))
    return path


def test_bound_command_writes_the_bounds_sub_run_and_audits_a_finished_attack_run(model_run, capsys):
    argv = ["bound", str(model_run), "--n-images", "12", "--omega-samples", "2", "--grid-size", "3",
            "--batch-size", "12", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean_omega_distance" in out and "no attack results" in out
    sub = model_run / "bounds-l2"
    assert finished_dir(sub)
    table = pd.read_csv(sub / "bounds.csv")
    _, y, idx = sample_images(load_dataset("synthetic-fashion-mnist", "test"), 12, 0)
    assert table["image"].tolist() == idx.tolist() and table["label"].tolist() == y.tolist()

    attack = Run(model_run / "attack-suite", {"attacks": ["planted"]})
    attack.start()
    attack.write_table("best.csv", pd.DataFrame({"image": idx.numpy(), "label": y.numpy(), "norm": "l2",
                                                 "best": 0.0, "best_attack": "planted"}))
    attack.finish({})
    assert main(argv) == 0  # loads the finished bounds, then audits them
    out = capsys.readouterr().out
    assert "audit against the attack suite" in out and "omega_distance" in out


def test_certify_command_writes_certificates(model_run, capsys):
    argv = ["certify", str(model_run), "--sigma", "0.25", "--n0", "10", "--n", "200", "--batch-size", "100",
            "--n-images", "3", "--radii", "0.1", "0.2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "smoothed_error" in out and "0.2" in out
    table = pd.read_csv(model_run / "certify-sigma0.25" / "certify.csv")
    assert len(table) == 3 and set(table.columns) >= {"image", "prediction", "radius", "pABar", "nA"}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["certify", "RUN", "--sigma", "0"], "sigma=0.0 must be > 0"),
        (["certify", "RUN", "--sigma", "0.5", "--alpha", "1.5"], "alpha=1.5"),
        (["certify", "RUN", "--sigma", "0.5", "--n0", "500", "--n", "100"], "n0=500 must not exceed n=100"),
        (["bound", "RUN", "--norm", "l3", "--n-images", "4"], "norm='l3'"),
        (["bound", "RUN", "--eps-max", "-1", "--n-images", "4"], "eps_max=-1.0 must be > 0"),
        (["bound", "MISSING"], "does not exist"),
    ],
)
def test_bad_options_print_one_clear_error_line_and_exit_2(model_run, capsys, argv, match):
    argv = [str(model_run) if a == "RUN" else str(model_run / "nope") if a == "MISSING" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paperlib: error:") and match in err and len(err.splitlines()) == 1
