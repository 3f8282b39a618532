"""The training benchmark script runs and prints its table (a smoke test, not a timing test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training.py"


def test_bench_training_prints_ratios_for_every_method(capsys):
    spec = importlib.util.spec_from_file_location("bench_training", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    try:
        assert bench.main(["--models", "linear", "--batch-size", "8", "--rounds", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    for method in ("standard", "fd", "fd-no-reuse", "fd-reuse-input", "dbp", "pgd-at", "free-at"):
        assert f"linear           {method} " in out
    assert "FD/standard" in out and "DBP/FD" in out and "FD step split" in out
