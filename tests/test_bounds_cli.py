"""``paperlib bound <run>`` and ``paperlib certify <run> --sigma ...`` end to end on a synthetic dataset."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest
import torch

import paperlib.training
from paperlib.bounds import BoundConfig, CertifyConfig, max_certifiable_radius
from paperlib.cli import main
from paperlib.config import config_hash
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


def _stored(sub) -> dict:
    return json.loads((sub / "config.json").read_text())


def test_bound_command_writes_the_bounds_sub_run_and_audits_a_finished_attack_run(model_run, capsys):
    argv = ["bound", str(model_run), "--n-images", "12", "--omega-samples", "2", "--grid-size", "3",
            "--batch-size", "12", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean_omega_distance" in out and "no attack results" in out
    sub = model_run / "bounds-l2"
    assert finished_dir(sub)
    # Options left out are BoundConfig's defaults: the run hashes as the config with only the given fields.
    assert _stored(sub)["hash"] == config_hash(BoundConfig(n_images=12, batch_size=12, omega_samples=2,
                                                           grid_size=3))
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


def test_bound_command_passes_the_estimator_options_to_the_bound_config(model_run, capsys):
    argv = ["bound", str(model_run), "--n-images", "6", "--omega-samples", "2", "--grid-size", "3",
            "--batch-size", "6", "--no-progress", "--omega-ascent-steps", "2", "--omega-ascent-starts", "1",
            "--omega-per-image", "--evt-maxima", "5", "--lipschitz-samples", "2", "--omega-extend", "2",
            "--evt-tail", "bounded", "--norm", "linf", "--seed", "3", "--omega-ascent-warm",
            "--omega-refine-steps", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean_omega_distance_adversarial" in out
    stored = _stored(model_run / "bounds-linf")["config"]
    expected = dict(omega_ascent_steps=2, omega_ascent_starts=1, omega_per_image=True, evt_maxima=5,
                    lipschitz_samples=2, omega_extend=2.0, evt_tail="bounded", norm="linf", seed=3,
                    omega_ascent_warm=True, omega_refine_steps=3)
    assert {k: stored[k] for k in expected} == expected


def test_certify_command_certifies_every_sigma_and_prints_the_envelope_with_radii_beyond_n(model_run, capsys):
    argv = ["certify", str(model_run), "--sigma", "0.25", "0.5", "--n0", "10", "--n-samples", "200",
            "--batch-size", "100", "--n-images", "3", "--radii", "0.1", "0.7", "1.0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "smoothed_error" in out and "envelope over sigma" in out
    # n = 200 cannot certify 0.7 at sigma 0.25 (at most 0.456) but can at sigma 0.5 (0.913); 1.0 at neither
    assert max_certifiable_radius(200, 0.001, 0.25) < 0.7 < max_certifiable_radius(200, 0.001, 0.5) < 1.0
    envelope = out.split("envelope over sigma")[1].splitlines()[2:]
    assert [line.split()[0] for line in envelope] == ["0.1", "0.7", "1"]
    row = envelope[1].split()  # radius, sigma=0.25 (beyond n), sigma=0.5, envelope, best_sigma, beyond_n
    assert row[1:3] == ["beyond", "n"] and row[3] == row[4] and row[5:] == ["0.5", "False"]
    assert envelope[2].split() == ["1", "beyond", "n", "beyond", "n", "beyond", "n", "beyond", "n", "True"]
    for sigma in ("0.25", "0.5"):
        sub = model_run / f"certify-sigma{sigma}"
        table = pd.read_csv(sub / "certify.csv")
        assert len(table) == 3 and set(table.columns) >= {"image", "prediction", "radius", "pABar", "nA"}
        cert = pd.read_csv(sub / "certified_error.csv")
        assert cert["beyond_n"].tolist() == [False, sigma == "0.25", True]
        assert cert["smoothing_error"].isna().tolist() == cert["beyond_n"].tolist()
        stored = _stored(sub)["config"]
        # options left out are CertifyConfig's defaults
        assert stored["alpha"] == CertifyConfig.alpha and stored["seed"] == CertifyConfig.seed
        assert stored["n"] == 200 and stored["n0"] == 10


def test_certify_grid_uses_the_profiles_certification_grid(model_run, capsys):
    from paperlib.reproduce import CERTIFY_SIGMAS, certify_grid_configs

    assert main(["certify", str(model_run), "--grid", "--n-images", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "envelope over sigma" in out
    grid = certify_grid_configs("smoke")
    assert tuple(grid) == CERTIFY_SIGMAS
    for sigma, cfg in grid.items():
        stored = _stored(model_run / f"certify-sigma{sigma:g}")
        assert stored["hash"] == config_hash(CertifyConfig(**{**cfg.__dict__, "n_images": 2}))


def test_certify_n_of_ten_thousand_or_more_is_its_own_sub_run_beside_the_quick_one():
    from paperlib.reproduce import certify_grid_configs, evaluation_configs, stage_subrun

    quick = evaluation_configs("fmnist")["certify"]
    assert stage_subrun("runs/fmnist/undefended", quick).name == "certify-sigma0.25"
    grid = certify_grid_configs("fmnist")
    assert [stage_subrun("m", c).name for c in grid.values()] == ["certify-sigma0.25-n10000",
                                                                   "certify-sigma0.5-n10000", "certify-sigma1-n10000"]
    assert all(c.n >= 10_000 and c.n_images >= 500 for c in grid.values())


@pytest.mark.parametrize(
    "argv, match",
    [
        (["certify", "RUN", "--sigma", "0"], "sigma=0.0 must be > 0"),
        (["certify", "RUN", "--sigma", "0.5", "0.5"], "repeats a sigma"),
        (["certify", "RUN", "--sigma", "0.5", "--alpha", "1.5"], "alpha=1.5"),
        (["certify", "RUN", "--sigma", "0.5", "--n0", "500", "--n-samples", "100"], "n0=500 must not exceed n=100"),
        (["certify", "RUN", "--n", "100"], "--n 100 is not an option of certify: write --n-samples 100"),
        (["certify", "RUN", "--n-samples", "100", "--device", "nonsense"], "--device='nonsense'"),
        (["bound", "RUN", "--norm", "l3", "--n-images", "4"], "norm='l3'"),
        (["bound", "RUN", "--eps-max", "-1", "--n-images", "4"], "eps_max=-1.0 must be > 0"),
        (["bound", "RUN", "--evt-tail", "heavy"], "evt_tail='heavy'"),
        (["bound", "RUN", "--omega-extend", "0.5"], "omega_extend=0.5 must be a number > 1"),
        (["bound", "RUN", "--omega-per-image"], "omega_per_image=True needs the adversarial estimator"),
        (["bound", "RUN", "--omega-ascent-steps", "2", "--omega-refine-steps", "5"], "needs omega_per_image=True"),
        (["bound", "RUN", "--omega-ascent-steps", "2", "--omega-per-image", "--omega-refine-steps", "-1"],
         "omega_refine_steps"),
        (["bound", "RUN", "--device", "cuda:7"], "--device='cuda:7' is not available"),
        (["bound", "MISSING"], "does not exist"),
    ],
)
def test_bad_options_print_one_clear_error_line_and_exit_2(model_run, capsys, argv, match):
    argv = [str(model_run) if a == "RUN" else str(model_run / "nope") if a == "MISSING" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paperlib: error:") and match in err and len(err.splitlines()) == 1


def test_the_certify_page_with_the_grids_parameters_computes_the_grids_configs():
    """``papermill book/certify.ipynb -y "{sigma: [0.25, 0.5, 1.0], n: 10000, n_images: 500}"`` and ``paperlib
    certify <run> --grid`` write the same sub-runs (same configs, same hashes)."""
    from paperlib.bounds.smoothing import certify_configs
    from paperlib.report.experiments import evaluation_configs
    from paperlib.reproduce import certify_grid_configs

    page = certify_configs(evaluation_configs("fmnist", n_images=500)["certify"], sigma=[0.25, 0.5, 1.0], n=10_000)
    assert page == list(certify_grid_configs("fmnist").values())
