"""How strong must the adversarial omega ascent be for its per-image omega-bound to hold? (issue 13)

    python benchmarks/bench_omega_ascent.py --run runs/fmnist/undefended-rc1ca23 --attack attack-c83b6ec2 \\
        --norm l2 --n 150 --out benchmarks/records/omega_ascent-undefended-l2.json

Runs the bound stage (:func:`paperlib.bounds.run_bounds`) on the first ``--n`` of the model's evaluation images
(the draw :func:`paperlib.report.experiments.evaluation_images` makes at the paper scale) once per ascent setting
of ``--variants`` (``steps:starts:warm[:refine]``; warm 1 = ``BoundConfig.omega_ascent_warm``, refine =
``BoundConfig.omega_refine_steps``, default 0),
everything else as the paper-scale :class:`~paperlib.bounds.BoundConfig` of :func:`paperlib.reproduce.
evaluation_configs`. Each result is audited (:func:`paperlib.bounds.audit_bounds`) against the attack suite's
best distances of the finished attack sub-run ``--attack`` on the same images: per bound column the images whose
bound exceeds an adversarial the suite found, with a 95% Wilson interval, the median ``bound / attack`` ratio of
those, and the ascent's forward-and-backward passes and seconds per image (``metrics['cost']``).

All settings run in one process, one after the other, so their seconds are comparable (one torch thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def parse_variants(text: str) -> list[tuple[int, int, bool, int]]:
    """``'10:4:0,20:3:1:30'`` -> ``[(10, 4, False, 0), (20, 3, True, 30)]`` (steps, starts, warm, refine)."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (3, 4) or not all(p.strip().isdigit() for p in parts) or parts[2] not in ("0", "1"):
            raise SystemExit(f"--variants item {item!r} must be steps:starts:warm[:refine] with warm 0 or 1")
        out.append((int(parts[0]), int(parts[1]), parts[2] == "1", int(parts[3]) if len(parts) == 4 else 0))
    return out


def main() -> None:
    from paperlib.bounds import audit_bounds, run_bounds
    from paperlib.metrics import wilson_interval
    from paperlib.report.experiments import evaluation_images
    from paperlib.reproduce import evaluation_configs
    from paperlib.training import load_trained

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished fmnist training run")
    ap.add_argument("--attack", required=True, help="its finished attack sub-run (directory name)")
    ap.add_argument("--norm", default="l2", choices=("l2", "linf"))
    ap.add_argument("--n", type=int, default=150, help="evaluation images (the first n of the paper-scale draw)")
    ap.add_argument("--variants", default="10:4:0,10:4:1,20:4:1,10:4:1:20,10:4:1:50",
                    help="steps:starts:warm[:refine], comma-separated")
    ap.add_argument("--out", default=None, help="write the record here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = parse_variants(args.variants)
    run, attack = Path(args.run), Path(args.run) / args.attack
    if not (attack / "FINISHED.json").exists():
        raise SystemExit(f"--attack {attack} is not a finished attack sub-run")
    model, _ = load_trained(run)
    base = evaluation_configs("fmnist", "paper")[f"bound-{args.norm}"]
    if not 1 <= args.n <= base.n_images:
        raise SystemExit(f"--n={args.n} must be in 1..{base.n_images} (the paper-scale image count)")
    x, y, idx = evaluation_images("fashion-mnist", base.n_images, base.image_seed)
    x, y, idx = x[: args.n].float(), y[: args.n], idx[: args.n]
    best = pd.read_csv(attack / "best.csv")
    rows = []
    for steps, starts, warm, refine in variants:
        cfg = dataclasses.replace(base, n_images=args.n, omega_ascent_steps=steps, omega_ascent_starts=starts,
                                  omega_ascent_warm=warm, omega_refine_steps=refine)
        t0 = time.perf_counter()
        res = run_bounds(model, x, y, idx, cfg, progress=False)
        seconds = time.perf_counter() - t0
        audit = audit_bounds(res.table, best, args.norm).set_index("bound")
        merged = res.table.merge(best[best["norm"] == args.norm][["image", "best"]], on="image")
        cost = res.metrics["cost"]["omega_adversarial"]
        ref = res.metrics["cost"].get("omega_refine", {"forward_backward_per_image": 0.0, "seconds": 0.0})
        row = {"steps": steps, "starts": starts, "warm": warm, "refine_steps": refine, "seconds": round(seconds, 1),
               "ascent_passes_per_image": cost["forward_backward_per_image"],
               "refine_passes_per_image": round(ref["forward_backward_per_image"], 1),
               "ascent_seconds_per_image": round((cost["seconds"] + ref["seconds"]) / cost["images"], 4)}
        for col in ("omega_distance", "omega_distance_adversarial", "omega_distance_adversarial_per_image"):
            a = audit.loc[col]
            k, n = int(a["n_violations"]), int(a["n_compared"])
            lo, hi = wilson_interval(k, n)
            viol = merged[col] > merged["best"] + 1e-9
            ratio = (merged[col] / merged["best"])[viol]
            row[col] = {"violations": k, "compared": n, "violation_rate": round(100.0 * k / n, 2),
                        "wilson95": [round(lo, 2), round(hi, 2)],
                        "median_ratio_of_violations": round(float(np.median(ratio)), 4) if k else None,
                        "mean_bound": round(float(a["mean_bound"]), 4)}
        rows.append(row)
        pi = row["omega_distance_adversarial_per_image"]
        print(f"steps {steps:>3} starts {starts} warm {int(warm)} refine {refine:>3}: per-image omega-bound violated on "
              f"{pi['violations']}/{pi['compared']} = {pi['violation_rate']:.1f}% (95% {pi['wilson95']}), "
              f"sup {row['omega_distance_adversarial']['violation_rate']:.1f}% (mean bound "
              f"{row['omega_distance_adversarial']['mean_bound']:.3f}), paper's {row['omega_distance']['violation_rate']:.1f}%; "
              f"{row['ascent_passes_per_image']:.0f} + {row['refine_passes_per_image']:.0f} ascent + refine passes/image, "
              f"{seconds:.0f} s", flush=True)
    record = {"run": run.as_posix(), "attack": args.attack, "norm": args.norm, "n_images": args.n,
              "torch_threads": 1, "base_config": dataclasses.asdict(base), "variants": rows}
    if args.out:
        out = Path(args.out)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(out)
        print(f"record: {out}")


if __name__ == "__main__":
    main()
