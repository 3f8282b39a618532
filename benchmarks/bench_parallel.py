"""Two models side by side with one thread each, or one model with all threads? (the grid's execution plan)

On a machine with few cores the grid can be trained by one process using every core, or by several processes
with one thread each, each training another model. This times the same FD-penalty training steps of the
Fashion-MNIST CNN (batch 128) both ways, alternating the two plans round by round so that a changing machine
load hits both alike, and prints the aggregate steps per second of each plan and their ratio.

Usage::

    python benchmarks/bench_parallel.py                 # 2 processes x 1 thread vs 1 process x 2 threads
    python benchmarks/bench_parallel.py --steps 30 --rounds 3 --json runs/fmnist/benchmarks/parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from paperlib.models import build_model
from paperlib.regularizers import GradientPenalty
from paperlib.training.methods import Regularized
torch.manual_seed(0)
model = build_model("fmnist-cnn", num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
method = Regularized(GradientPenalty(norm="l2", method="fd", lam=1.0, h=0.01))
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
for _ in range(3):
    method.step(model, opt, x, y)
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    method.step(model, opt, x, y)
print(time.perf_counter() - t0)
"""


def run_plan(processes: int, threads: int, steps: int) -> float:
    """Aggregate steps per second of ``processes`` concurrent workers with ``threads`` threads each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(steps)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    seconds = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed with exit code {p.returncode}")
        seconds.append(float(out.strip().splitlines()[-1]))
    return processes * steps / max(seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share (default: all)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per worker and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the record to this file")
    args = ap.parse_args(argv)
    plans = {f"{args.cores} processes x 1 thread": (args.cores, 1),
             f"1 process x {args.cores} threads": (1, args.cores)}
    rates: dict[str, list[float]] = {k: [] for k in plans}
    for r in range(args.rounds):
        for name, (p, t) in plans.items():
            rates[name].append(run_plan(p, t, args.steps))
            print(f"round {r + 1}: {name}: {rates[name][-1]:.2f} steps/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    (a, b) = list(med)
    print(f"median aggregate steps/s: {a} {med[a]:.2f}, {b} {med[b]:.2f}; ratio {med[a] / med[b]:.2f}")
    if args.json:
        from paperlib.runs import atomic_write_text

        record = {"machine": f"{platform.machine()}, {os.cpu_count()} cores visible", "step": "fmnist-cnn FD "
                  "penalty, batch 128", "steps": args.steps, "rounds": args.rounds, "steps_per_s": rates,
                  "median_steps_per_s": med, "ratio": med[a] / med[b], "date": time.strftime("%Y-%m-%d"),
                  "load_before": os.getloadavg()[0]}
        atomic_write_text(Path(args.json), json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
