"""Today's fmnist attack budgets vs the cheap ones (:meth:`~paperlib.attacks.suite.AttackConfig.cheap`), side by side.

    python benchmarks/bench_attack_budget.py --n 100 --record benchmarks/records/attack_budget.json
    python benchmarks/bench_attack_budget.py --n 60 --cache /tmp/budget-cache --set pgd_steps=30

For each committed model (default ``runs/fmnist/undefended`` and ``runs/fmnist/fd-l2-lam1-h0.01``) and the
first ``--n`` images of the profile's seeded test draw, it runs the whole suite (every attack and norm, the
suite's own batch loop and :class:`~paperlib.attacks.suite.PassCounter`) twice: with the fmnist profile's
budgets (today's settings, ``paperlib.reproduce.evaluation_configs('fmnist')``) and with the cheap config.
It prints per attack and norm the forward + backward passes and the seconds per image (averaged over all
images, so an attack run on a subsample counts its passes over every image), the whole suite's passes per
image, the median best distance per norm before and after, and the worst per-image ratio after / before
(``> 1``: the cheap suite is farther on that image). With ``--doubled`` it also runs the cheap config with
every budget doubled (:meth:`~paperlib.attacks.suite.AttackConfig.scaled`) on the same images and prints the
convergence check's verdict (median change and the share of images improving by more than 5%).

``--cache DIR`` stores each suite's table per (model, config hash, images) and reuses it (the record says which
tables were reused); ``--threads`` sets torch's CPU threads (default 1: on a shared 2-core machine two threads
contend). The machine load (``os.getloadavg``) is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import platform
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_RUNS = ("runs/fmnist/undefended", "runs/fmnist/fd-l2-lam1-h0.01")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _finite(value):
    """The record with non-finite floats written as strings ('inf', 'nan'): strict JSON."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def run_suite(model, x, y, idx, cfg, cache: Path | None, tag: str):
    """The suite's attack table and ``{stats, seconds, passes}`` for ``cfg`` (from ``cache`` if stored there)."""
    from paperlib.attacks.suite import _attack_batches
    from paperlib.config import config_hash

    path = None
    if cache is not None:
        key = f"{tag}-{config_hash(cfg, 12)}-n{len(x)}-{int(idx.sum())}.pkl"
        path = cache / key
        if path.exists():
            with open(path, "rb") as fh:
                table, info = pickle.load(fh)
            return table, info, True
    table, info = _attack_batches(model, x, y, idx, cfg, run=None, progress=False, tag="suite")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump((table, info), fh)
    return table, info, False


def per_job(info: dict, n: int) -> dict:
    out = {}
    for job, (fwd, bwd) in info["passes"].items():
        out[job] = {"forward": fwd / n, "backward": bwd / n, "passes": (fwd + bwd) / n,
                    "seconds": info["seconds"][job] / n}
    return out


def compare_best(before, after, norms) -> dict:
    out = {}
    for nrm in norms:
        b = before[before["norm"] == nrm].set_index("image")["best"]
        a = after[after["norm"] == nrm].set_index("image")["best"].reindex(b.index)
        bv, av = b.to_numpy(np.float64), a.to_numpy(np.float64)
        both = np.isfinite(bv) & np.isfinite(av) & (bv > 0)
        ratio = av[both] / bv[both]
        worst_i = int(np.argmax(ratio)) if ratio.size else None
        out[nrm] = {
            "median_before": float(np.median(bv)), "median_after": float(np.median(av)),
            "median_ratio": float(np.median(av) / np.median(bv)) if np.median(bv) > 0 else float("nan"),
            "worst_ratio": float(ratio.max()) if ratio.size else float("nan"),
            "worst_image": int(b.index[both][worst_i]) if worst_i is not None else None,
            "share_worse_1pct": float(np.mean(ratio > 1.01)) if ratio.size else float("nan"),
            "n_worse_1pct": int(np.sum(ratio > 1.01)),
            "median_per_image_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
            "unbroken_before": int(np.isinf(bv).sum()), "unbroken_after": int(np.isinf(av).sum()),
            "n": int(len(bv)),
        }
    return out


def main() -> None:
    from paperlib.attacks.checks import check_convergence, _tail_share
    from paperlib.attacks.suite import AttackConfig, best_distances
    from paperlib.data import load_dataset, sample_images
    from paperlib.reproduce import evaluation_configs
    from paperlib.training import load_trained

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="finished fmnist training runs")
    ap.add_argument("--n", type=int, default=100, help="images: the first n of the profile's seeded draw (100)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--doubled", action="store_true", help="also run the convergence check on the cheap config")
    ap.add_argument("--doubled-n", type=int, default=50,
                    help="images re-attacked with doubled budgets: the first k (50, the check's tail minimum)")
    ap.add_argument("--cache", type=Path, default=None, help="store/reuse each suite's table in this folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override fields of the cheap config (JSON values), to explore budgets")
    ap.add_argument("--record", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    today = dataclasses.replace(evaluation_configs("fmnist")["attack"], n_images=args.n)
    # the first phase of the suite (its escalation would re-attack where the convergence check fails)
    cheap = AttackConfig.cheap(n_images=args.n, **{"escalate": 0, **_parse_set(args.set)})
    test = load_dataset("fashion-mnist", "test")
    x, y, idx = sample_images(test, args.n, seed=today.seed)
    record = {"n_images": args.n, "threads": args.threads, "load_start": list(os.getloadavg()),
              "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
              "today": dataclasses.asdict(today), "cheap": dataclasses.asdict(cheap), "models": {}}
    print(f"{args.n} images, {args.threads} thread(s), load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for run_path in args.runs:
        model, _ = load_trained(run_path)
        tag = Path(run_path).name
        t0 = time.perf_counter()
        before, info_b, reused_b = run_suite(model, x, y, idx, today, args.cache, tag)
        after, info_a, reused_a = run_suite(model, x, y, idx, cheap, args.cache, tag)
        jb, ja = per_job(info_b, args.n), per_job(info_a, args.n)
        best_b, best_a = best_distances(before, today.norms), best_distances(after, cheap.norms)
        cmp = compare_best(best_b, best_a, today.norms)
        rec = {"jobs_today": jb, "jobs_cheap": ja, "reused_today": reused_b, "reused_cheap": reused_a,
               "suite_passes_today": sum(v["passes"] for v in jb.values()),
               "suite_passes_cheap": sum(v["passes"] for v in ja.values()),
               "suite_seconds_today": sum(v["seconds"] for v in jb.values()),
               "suite_seconds_cheap": sum(v["seconds"] for v in ja.values()),
               "best": cmp}
        print(f"\n== {run_path}")
        print(f"{'job':<16} {'passes today':>13} {'passes cheap':>13} {'s/img today':>12} {'s/img cheap':>12}")
        for job in jb:
            a = ja.get(job, {"passes": 0.0, "seconds": 0.0})
            print(f"{job:<16} {jb[job]['passes']:13.0f} {a['passes']:13.0f} {jb[job]['seconds']:12.3f} "
                  f"{a['seconds']:12.3f}")
        print(f"{'whole suite':<16} {rec['suite_passes_today']:13.0f} {rec['suite_passes_cheap']:13.0f} "
              f"{rec['suite_seconds_today']:12.3f} {rec['suite_seconds_cheap']:12.3f}")
        for nrm, c in cmp.items():
            print(f"{nrm:<5} median best {c['median_before']:.5g} -> {c['median_after']:.5g} "
                  f"(x{c['median_ratio']:.4f}); per image after/before: median x{c['median_per_image_ratio']:.4f}, "
                  f"worst x{c['worst_ratio']:.4f} (image {c['worst_image']}), {c['n_worse_1pct']} of {c['n']} "
                  f"images worse by > 1%; unbroken {c['unbroken_before']} -> {c['unbroken_after']}")
        if args.doubled:
            m = min(args.doubled_n, args.n)
            doubled, info_d, reused_d = run_suite(model, x[:m], y[:m], idx[:m],
                                                  dataclasses.replace(cheap.scaled(2), n_images=m), args.cache, tag)
            best_d = best_distances(doubled, cheap.norms)
            sub = best_a[best_a["image"].isin(set(idx[:m].tolist()))]
            conv = {"n": m}
            for nrm in cheap.norms:
                b = sub[sub["norm"] == nrm].set_index("image")["best"]
                d = best_d[best_d["norm"] == nrm].set_index("image")["best"].reindex(b.index)
                conv[nrm] = (float(b.median()), float(d.median()))
                conv[f"per_image_{nrm}"] = [b.tolist(), d.tolist()]
            tail = cheap.convergence_tail if cheap.convergence_tail is not None else 0.05
            check = check_convergence(conv, cheap.convergence_tol, tail=tail)
            shares = {nrm: _tail_share(*conv[f"per_image_{nrm}"], cheap.convergence_tol) for nrm in cheap.norms}
            rec["convergence"] = {"passed": bool(check[1]), "message": check[2], "reused": reused_d, "n": m,
                                  "tail": tail, "improved_of": {k: list(v) for k, v in shares.items()},
                                  "doubled_passes_per_image": sum(v["passes"] for v in per_job(info_d, m).values())}
            print(f"convergence check (cheap config, budgets doubled, first {m} images, tail {tail}): "
                  f"{'PASSED' if check[1] else 'FAILED'}: {check[2]}")
        rec["wall_seconds"] = time.perf_counter() - t0
        record["models"][run_path] = rec
    record["load_end"] = list(os.getloadavg())
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(_finite(record), indent=1, allow_nan=False) + "\n")
        print(f"\nrecord written to {args.record}")


if __name__ == "__main__":
    main()
