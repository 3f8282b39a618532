import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, requires_fmnist


def paperlib(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "paperlib", *args], capture_output=True, text=True, cwd=REPO,
                          env=full_env, timeout=120)


def test_help_lists_every_subcommand():
    out = paperlib("--help")
    assert out.returncode == 0
    for cmd in ("train", "attack", "bound", "certify", "reproduce", "runs", "data"):
        assert cmd in out.stdout, f"sub-command {cmd} missing from --help"


@requires_fmnist
def test_data_reports_fashion_mnist_sizes():
    out = paperlib("data", "fashion-mnist")
    assert out.returncode == 0
    assert "found" in out.stdout and "60000" in out.stdout and "10000" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("data", "mnist"), "dataset='mnist' is not allowed"),
    (("data", "fashion-mnist", "--root", "/nonexistent/fmnist"), "'/nonexistent/fmnist' does not exist"),
])
def test_bad_input_is_one_clear_line(args, message):
    out = paperlib(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_runs_lists_statuses(tmp_path):
    from paperlib.runs import RunStore

    store = RunStore(tmp_path)
    store.run("smoke", "done", {"seed": 0}).start().finish({})
    store.run("smoke", "half", {"seed": 1}).start()
    out = paperlib("runs", "--runs-dir", str(tmp_path))
    assert out.returncode == 0
    assert "smoke/done" in out.stdout and "finished" in out.stdout and "partial" in out.stdout
