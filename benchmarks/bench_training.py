"""Per-step cost of the training methods, measured side by side (issue 3, "Speed").

For each model (the Fashion-MNIST CNN and the paper's ResNeXt-34 (2x32), batch 128 by default) this times one
optimizer step of

* ``standard``        -- cross-entropy, one forward and one backward;
* ``fd``              -- the finite-difference penalty (Algorithm 1) with the clean forward's graph reused;
* ``fd-no-reuse``     -- the same with a third forward (input gradient from its own forward), for comparison;
* ``fd-bn-guard``     -- ``fd`` with the BatchNorm guard (models with BatchNorm only);
* ``fd-reuse-input``  -- experimental: the clean term's weight gradients formed from the input-gradient pass
                         (BatchNorm-free models only; :func:`paperlib.regularizers.finite_difference_loss_reusing_input_pass`);
* ``dbp``             -- double backpropagation;
* ``pgd-at``          -- 7-step PGD adversarial training;
* ``free-at``         -- free adversarial training, per replay (one optimizer step; a minibatch costs m of them),

interleaving the methods round by round so that a changing machine load hits all of them alike, and prints
the median step time, its ratio to the standard step, peak memory (CUDA: ``max_memory_allocated``; CPU: peak
resident memory above the level before the step, sampled every millisecond) and the split of the FD step into
its four passes.

Usage::

    python benchmarks/bench_training.py                       # both models, batch 128, 3 rounds
    python benchmarks/bench_training.py --models fmnist-cnn --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

# Large CPU allocations go straight to mmap, so freed memory leaves the resident set and the per-method peak
# above the starting level is meaningful. Must be set before the process starts: re-exec once.
if os.name == "posix" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paperlib.losses import cross_entropy  # noqa: E402
from paperlib.models import build_model  # noqa: E402
from paperlib.regularizers import GradientPenalty, fd_direction, penalty_coefficient  # noqa: E402
from paperlib.training.methods import (  # noqa: E402
    FreeAdversarialTraining,
    PGDAdversarialTraining,
    Regularized,
    Standard,
)

SHAPES = {"fmnist-cnn": (1, 28, 28), "resnext34-2x32": (3, 32, 32), "linear": (1, 28, 28), "resnet50": (3, 224, 224)}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled resident memory above the starting level."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self._rss()
            self.top = self.base
            self.stop = False

            def sample():
                while not self.stop:
                    self.top = max(self.top, self._rss())
                    time.sleep(0.001)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop = True
            self.thread.join()
            self.peak = max(self.top, self._rss()) - self.base
        return False


class FDNoReuse:
    """FD with the input gradient from its own forward (the clean forward is computed twice)."""

    replays = 1

    def __init__(self, lam: float, h: float) -> None:
        self.lam, self.h = lam, h

    def step(self, model, optimizer, x, y, **kw):
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(cross_entropy(model(xg), y).sum(), xg)
        d = fd_direction(g, "l2")
        optimizer.zero_grad(set_to_none=True)
        clean = cross_entropy(model(x), y)
        D = (cross_entropy(model(x + self.h * d), y) - clean) / self.h
        loss = clean.mean() + penalty_coefficient(self.lam, "eq8", "l2", x[0].numel()) * D.pow(2).mean()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}


class PerReplay:
    """Free AT timed per optimizer step (replay): the step time divided by m."""

    def __init__(self, m: int, eps: float) -> None:
        self.inner = FreeAdversarialTraining(eps=eps, m=m)
        self.replays = m

    def step(self, *a, **k):
        return self.inner.step(*a, **k)


def fd_breakdown(model, x, y, h: float, lam: float, sync) -> dict[str, float]:
    """Wall time of the FD step's passes (same code path as finite_difference_penalty)."""
    t = {}
    sync(); t0 = time.perf_counter()
    xg = x.detach().requires_grad_(True)
    clean = cross_entropy(model(xg), y)
    sync(); t1 = time.perf_counter()
    (g,) = torch.autograd.grad(clean.sum(), xg, retain_graph=True)
    d = fd_direction(g, "l2")
    sync(); t2 = time.perf_counter()
    D = (cross_entropy(model(xg.detach() + h * d), y) - clean) / h
    loss = clean.mean() + lam / 2 * D.pow(2).mean()
    sync(); t3 = time.perf_counter()
    loss.backward()
    sync(); t4 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    t.update({"clean forward": t1 - t0, "input-gradient backward": t2 - t1, "perturbed forward": t3 - t2,
              "backward through both graphs": t4 - t3})
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fmnist-cnn,resnext34-2x32")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per method per round")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--free-m", type=int, default=2, help="replays per minibatch in the free-AT timing")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method before the rounds")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--h", type=float, default=0.01)
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the table as JSON (the book's performance chapter reads "
                         "runs/fmnist/benchmarks/training.json)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores visible"
    print(f"# bench_training: torch {torch.__version__}, {where}, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} step(s), lam {args.lam}, h {args.h}")

    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name).to(device).train()
        x = torch.rand(args.batch_size, *SHAPES[name], device=device)
        y = torch.randint(10, (args.batch_size,), device=device)
        bn = has_batchnorm(model)
        methods: dict[str, object] = {
            "standard": Standard(),
            "fd": Regularized(GradientPenalty(norm="l2", lam=args.lam, h=args.h)),
            "fd-no-reuse": FDNoReuse(args.lam, args.h),
        }
        if bn:
            methods["fd-bn-guard"] = Regularized(GradientPenalty(norm="l2", lam=args.lam, h=args.h, bn_guard=True))
        else:
            methods["fd-reuse-input"] = Regularized(GradientPenalty(norm="l2", lam=args.lam, h=args.h,
                                                                    reuse_input_pass=True))
        methods["dbp"] = Regularized(GradientPenalty(norm="l2", method="dbp", lam=args.lam))
        methods["pgd-at"] = PGDAdversarialTraining(eps=8 / 255, steps=7, step_size=2 / 255)
        methods["free-at"] = PerReplay(args.free_m, 8 / 255)
        if args.methods:
            keep = ["standard"] + [k for k in args.methods.split(",") if k != "standard"]
            unknown = sorted(set(keep) - set(methods))
            if unknown:
                ap.error(f"unknown or inapplicable method(s) {unknown} for {name}; choose from {sorted(methods)}")
            methods = {k: methods[k] for k in keep}
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        times: dict[str, list[float]] = {k: [] for k in methods}
        mem: dict[str, int] = {k: 0 for k in methods}
        breakdown: list[dict[str, float]] = []
        gen = torch.Generator(device=device).manual_seed(0)
        for _ in range(args.warmup):  # warm-up (allocator, kernels)
            for k, meth in methods.items():
                meth.step(model, opt, x, y, generator=gen)
        for r in range(args.rounds):
            for k, meth in methods.items():
                with PeakMemory(device) as pm:
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        meth.step(model, opt, x, y, generator=gen)
                    sync()
                    dt = (time.perf_counter() - t0) / args.steps / getattr(meth, "replays", 1)
                times[k].append(dt)
                mem[k] = max(mem[k], pm.peak)
            breakdown.append(fd_breakdown(model, x, y, args.h, args.lam, sync))
            print(f"#   {name} round {r + 1}/{args.rounds}: " +
                  ", ".join(f"{k} {times[k][-1] * 1e3:.0f} ms" for k in methods), flush=True)
        base_t = statistics.median(times["standard"])
        base_m = max(mem["standard"], 1)
        for k in methods:
            med = statistics.median(times[k])
            rows.append((name, k, med * 1e3, med / base_t, mem[k] / 2**20, mem[k] / base_m))
        parts = {p: statistics.median(b[p] for b in breakdown) for p in breakdown[0]}
        total = sum(parts.values())
        rows.append((name, "__breakdown__", parts, total, None, None))

    print()
    print(f"{'model':<16} {'method':<15} {'ms/step':>9} {'x standard':>10} {'peak MiB':>9} {'mem x std':>9}")
    print("-" * 73)
    for name, k, ms, ratio, mib, mratio in rows:
        if k == "__breakdown__":
            continue
        print(f"{name:<16} {k:<15} {ms:>9.1f} {ratio:>10.2f} {mib:>9.1f} {mratio:>9.2f}")
    print()
    for name in dict.fromkeys(r[0] for r in rows):
        r = {k: ratio for n, k, ms, ratio, *_ in rows if n == name and k != "__breakdown__"}
        labels = {"dbp": "DBP/FD", "fd-no-reuse": "FD without graph reuse/FD", "pgd-at": "PGD-AT/FD",
                  "fd-reuse-input": "FD reusing the input pass/FD", "fd-bn-guard": "FD with BN guard/FD"}
        if "fd" in r:
            print(f"{name}: FD/standard {r['fd']:.2f}" + "".join(f", {lab} {r[k] / r['fd']:.2f}"
                                                                  for k, lab in labels.items() if k in r))
        parts, total = next((ms, ratio) for n, k, ms, ratio, *_ in rows if n == name and k == "__breakdown__")
        print(f"  FD step split: " + ", ".join(f"{p} {100 * v / total:.0f}%" for p, v in parts.items()))
    if args.json:
        import datetime
        import json

        from paperlib.runs import atomic_write_text

        record = {
            "machine": where, "torch": torch.__version__, "batch_size": args.batch_size, "rounds": args.rounds,
            "steps": args.steps, "lam": args.lam, "h": args.h, "free_m": args.free_m,
            "date": datetime.date.today().isoformat(),
            "rows": [dict(model=n, method=k, ms_per_step=ms, x_standard=ratio, peak_mib=mib, mem_x_standard=mr)
                     for n, k, ms, ratio, mib, mr in rows if k != "__breakdown__"],
            "fd_split": {n: {p: v / total for p, v in parts.items()}
                         for n, k, parts, total, *_ in rows if k == "__breakdown__"},
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
