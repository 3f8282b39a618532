"""Which attack gains when every budget doubles? The attack suite's convergence check, per attack.

    python benchmarks/bench_convergence.py --run runs/fmnist/fd-l2-lam1-h0.01-rc1ca23 --norm l2 \\
        --out benchmarks/records/convergence-fd-l2-lam1-l2.json

The suite's ``attacks_converged`` check (:mod:`paperlib.attacks.checks`) re-attacks the first
``convergence_n`` images with every iteration budget doubled and compares the *best* distance. When it fails it
does not say which attack was short of budget. This runs the paper-scale suite
(:func:`paperlib.reproduce.evaluation_configs`, convergence check off) on the same first ``--n`` evaluation
images in one norm, at the budgets and at twice them (``AttackConfig.scaled(2)``), and prints per attack the
median distance of its successes, its success rate and passes per image, before and after (Boundary is left
out, as in the check's subsample it runs on every 10th image only; ``--attacks`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from paperlib.attacks.suite import run_attack_suite
    from paperlib.report.experiments import evaluation_images
    from paperlib.reproduce import evaluation_configs
    from paperlib.training import load_trained

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished fmnist training run")
    ap.add_argument("--norm", default="l2", choices=("l2", "linf"))
    ap.add_argument("--n", type=int, default=50, help="evaluation images (the first n; the check's 50 by default)")
    ap.add_argument("--attacks", default="pgd,cw,logbarrier", help="comma-separated suite attacks")
    ap.add_argument("--out", default=None, help="write the record here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = evaluation_configs("fmnist", "paper")["attack"]
    if not 1 <= args.n <= base.n_images:
        raise SystemExit(f"--n={args.n} must be in 1..{base.n_images}")
    model, _ = load_trained(args.run)
    x, y, idx = evaluation_images("fashion-mnist", base.n_images, base.seed)
    x, y, idx = x[: args.n].float(), y[: args.n], idx[: args.n]
    cfg = dataclasses.replace(base, n_images=args.n, norms=(args.norm,), attacks=tuple(args.attacks.split(",")),
                              convergence_n=0, escalate=0)  # each factor measured on its own
    col = f"dist_{args.norm}"
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for factor in (1, 2):
        c = cfg if factor == 1 else cfg.scaled(2)
        t0 = time.perf_counter()
        res = run_attack_suite(model, x, y, idx, c, progress=False)
        seconds = time.perf_counter() - t0
        for attack, g in res.attacks.groupby("attack"):
            ok = g[g["success"].astype(bool)]
            job = res.summary["jobs"].get(f"{attack}-{args.norm}", {})
            rows.setdefault(attack, {})[f"x{factor}"] = {
                "median": float(ok[col].median()), "success_pct": float(100 * g["success"].astype(bool).mean()),
                "passes_per_image": float(job.get("forward_passes_per_image", 0)
                                          + job.get("backward_passes_per_image", 0))}
        rows.setdefault("best", {})[f"x{factor}"] = {"median": float(res.best["best"].median()),
                                                     "seconds": round(seconds, 1)}
    for attack, r in rows.items():
        a, b = r["x1"]["median"], r["x2"]["median"]
        print(f"{attack:>12}: median {args.norm} {a:.4g} -> {b:.4g} with doubled budgets ({100 * (a - b) / a:+.1f}%)"
              + (f", passes/image {r['x1']['passes_per_image']:.0f} -> {r['x2']['passes_per_image']:.0f}"
                 if "passes_per_image" in r["x1"] else ""))
    if args.out:
        out = Path(args.out)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run": args.run, "norm": args.norm, "n_images": args.n, "torch_threads": 1,
                                   "attacks": rows}, indent=1) + "\n")
        tmp.replace(out)
        print(f"record: {out}")


if __name__ == "__main__":
    main()
