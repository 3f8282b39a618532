"""CI smoke check of the experiment notebooks: each of book/{train,attack,bound,certify}
is prepared by papermill with ``-p profile smoke`` and a fresh run store, then executed by nbval (lax mode), so
the compute path of every page runs end to end on a few Fashion-MNIST images in a few minutes.

(The committed notebooks, with the default profile fmnist, are checked in strict mode by ``make test``.)
"""

from __future__ import annotations

import os
import subprocess
import sys

from paperlib.runs import finished_dir
from tests.conftest import REPO, requires_fmnist

NOTEBOOKS = ("train", "attack", "bound", "certify")


@requires_fmnist
def test_experiment_notebooks_run_end_to_end_on_the_smoke_profile(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
    prepared = []
    for name in NOTEBOOKS:
        out = tmp_path / f"{name}.ipynb"
        result = subprocess.run(
            [sys.executable, "-m", "papermill", "--prepare-only", str(REPO / "book" / f"{name}.ipynb"), str(out),
             "-p", "profile", "smoke", "-p", "runs_dir", str(runs)],
            capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, f"papermill --prepare-only {name} failed:\n{result.stdout}\n{result.stderr}"
        prepared.append(out.name)
    # An empty ini in the temporary directory makes it pytest's rootdir: the repository's configuration
    # (testpaths, the book's other notebooks) stays out of this run.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q",
         *prepared],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env)
    assert result.returncode == 0, \
        f"nbval failed on the smoke notebooks:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
    # The later pages reused the model the first one trained, and every stage left a finished run.
    model = runs / "smoke" / "fd-l2-lam1-h0.01"
    assert finished_dir(model)
    finished = sorted(p.name for p in model.iterdir() if p.is_dir() and finished_dir(p))
    assert [n for n in finished if n.startswith("attack-")], finished
    assert {"bounds-l2", "bounds-linf", "certify-sigma0.25"} <= set(finished), finished
    check_smoke_claims(model)


def check_smoke_claims(model) -> None:
    """What the smoke pages computed, checked by claims that hold on any machine (their digits do not: the
    smoke model trains in float32 for a few steps, so nbval-lax compares no output, see
    tests/test_notebook_claims.py)."""
    import json
    import math

    import pandas as pd

    metrics = json.loads((model / "metrics.json").read_text())
    assert math.isfinite(metrics["test_loss"]) and math.isfinite(metrics["train_loss"]), metrics
    assert 0 <= metrics["clean_error_pct"] <= 100, metrics
    for attack in model.glob("attack-*/best.csv"):
        best = pd.read_csv(attack)["best"]
        assert (best.dropna() >= 0).all(), f"{attack}: a negative adversarial distance"
    for norm in ("l2", "linf"):
        bounds = model / f"bounds-{norm}"
        clean = json.loads((bounds / "metrics.json").read_text())["clean_error"]
        cert = pd.read_csv(bounds / "certified_error.csv").set_index("radius").sort_index()
        # tolerance 0: certification needs a correct prediction, and a certificate at r holds at every r' < r
        assert ((cert >= clean - 1e-9) & (cert <= 100 + 1e-9)).all().all(), f"{bounds}: {cert}"
        assert (cert.diff().dropna() >= -1e-9).all().all(), f"{bounds}: certified error decreases: {cert}"
    smooth = pd.read_csv(model / "certify-sigma0.25" / "certified_error.csv").set_index("radius").sort_index()
    assert (smooth.diff().dropna() >= -1e-9).all().all(), f"smoothing certified error decreases: {smooth}"
