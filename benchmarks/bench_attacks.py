"""Per-attack time per image on a Fashion-MNIST model (CPU), with the attacks' default settings.

    python benchmarks/bench_attacks.py --run runs/fmnist/undefended --n 20
    python benchmarks/bench_attacks.py --n 8          # trains a small fmnist-cnn on 3000 images first
    python benchmarks/bench_attacks.py --reference --run runs/fmnist/undefended --n 200
    python benchmarks/bench_attacks.py --reference --run runs/fmnist/undefended --n 200 --after pgd_loss=margin>ce

With ``--reference`` (issue 12's cross-check): the paper's suite at the budgets of the paper-scale grid
(:func:`~paperlib.reproduce.evaluation_configs` with ``--scale paper``, the default; its first phase: no
convergence check, no escalation; ``--scale profile``: the fmnist profile's own budgets) and the reference attacks of
:mod:`paperlib.attacks.reference` (not in the paper; AutoAttack's settings) on the same ``--n`` images, then per
attack model passes (forward + backward) and seconds per image, and per norm the cross-check: the share of
images whose suite best is within 1% of the references' minimum (and more than 10% behind it), the median
ratio, and per radius the empirical % error of the suite, of AutoAttack (APGD-CE, APGD-T, Square) and of the
best over both. ``--eps-linf`` / ``--eps-l2`` set the radii (in units of 1/255 for linf). ``--after``
(comma-separated ``field=value`` of :class:`~paperlib.attacks.suite.AttackConfig`; a tuple field's items
separated by ``/``, e.g. ``attacks=pgd/cw/boundary/logbarrier/fmn-refine``) runs the suite a second
time with those budgets on the same images (several changes separated by ``;``: one suite each) and prints its passes, its median best distances beside the
first's, and per norm how many images it leaves more than 1 % farther (the budget change's cost in strength).
``--store`` keeps the references as a sub-run ``reference-<hash>`` of ``--run``, keyed by the images and the
reference settings only (34-54 min on 200 images of one core, most of it Square's 5,000 queries on the images
left robust), computed before the suites, resumable per job and loaded once finished (their seconds are then
those of the run that computed them); the suites, minutes each, are recomputed, so a suite change is
cross-checked without redoing them.
``--suites-only`` stops after the suites. ``--before profile`` runs the first suite at the fmnist profile's
budgets (the suite before issue 12's changes) and the ``--after`` ones at ``--scale``'s with their changes, so
a cheaper suite is compared image by image with the one it replaces.

Prints, per attack and norm: seconds per image (wall time of one batched call divided by the images),
success rate and median l2/linf distance of the successes. ``--threads`` sets torch's CPU threads (default
1: on a shared 2-core machine two threads contend and run several times slower).
"""

from __future__ import annotations

import argparse
import time

import torch


def quick_model(seed: int = 0):
    """fmnist-cnn trained for 2 epochs on 3000 real Fashion-MNIST images (about a minute on one core)."""
    from paperlib.data import load_dataset, subset
    from paperlib.models import build_model
    from paperlib.theory import quick_train

    torch.manual_seed(seed)
    model = build_model("fmnist-cnn")
    xs, ys = subset(load_dataset("fashion-mnist", "train"), 3000, seed=seed).tensors()
    return quick_train(model, xs, ys, epochs=2, batch_size=100, lr=0.05, seed=seed)


def main() -> None:
    from paperlib.attacks import BoundaryAttack, CarliniWagnerL2, LogBarrierAttack, MinimalPGD
    from paperlib.data import load_dataset, sample_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a finished fmnist training run (default: train a quick model)")
    ap.add_argument("--n", type=int, default=8, help="test images, attacked as one batch (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated subset of the attack labels below")
    ap.add_argument("--reference", action="store_true", help="the cross-check against the reference attacks")
    ap.add_argument("--eps-linf", default="2,8", help="--reference: linf radii in units of 1/255 (default 2,8)")
    ap.add_argument("--eps-l2", default="0.5,1", help="--reference: l2 radii (default 0.5,1)")
    ap.add_argument("--scale", default="paper", choices=("paper", "profile"),
                    help="--reference: the suite's budgets (default: the paper-scale grid's)")
    ap.add_argument("--before", default=None, choices=("paper", "profile"),
                    help="--reference: the budgets of the first suite, which --after's are compared with "
                         "(default: --scale's; 'profile': the suite as issue 12 found it)")
    ap.add_argument("--after", default="", help="--reference: field=value,... of a second suite to compare "
                                                "(several: separated by ';')")
    ap.add_argument("--store", action="store_true",
                    help="--reference with --run: keep the references as a resumable sub-run reference-<hash> of "
                         "the model's run (a finished one is loaded, an interrupted one resumes)")
    ap.add_argument("--suites-only", action="store_true",
                    help="--reference: stop after the suites (and --after's), without the hours-long references")
    args = ap.parse_args()
    args.before = args.before or args.scale
    torch.set_num_threads(args.threads)
    if args.run:
        from paperlib.training import load_trained

        model, _ = load_trained(args.run)
    else:
        model = quick_model(args.seed)
    model.eval()
    x, y, idx = sample_images(load_dataset("fashion-mnist", "test"), args.n, seed=args.seed)
    if args.reference:
        reference_mode(model, x, y, idx, args)
        return
    attacks = {
        "pgd-l2": MinimalPGD(norm="l2"), "pgd-linf": MinimalPGD(norm="linf"), "cw-l2": CarliniWagnerL2(),
        "boundary-l2": BoundaryAttack(), "logbarrier-l2": LogBarrierAttack(norm="l2"),
        "logbarrier-linf": LogBarrierAttack(norm="linf"),
    }
    if args.only:
        attacks = {k: v for k, v in attacks.items() if k in args.only.split(",")}
    print(f"{args.n} images, torch {torch.__version__}, {args.threads} thread(s), defaults of each attack")
    print(f"{'attack':<16} {'s/image':>8} {'success':>8} {'median l2':>10} {'median linf':>12}")
    for name, atk in attacks.items():
        t0 = time.perf_counter()
        res = atk(model, x, y, seed=args.seed, keys=idx)
        dt = (time.perf_counter() - t0) / args.n
        ok = res.success & res.clean_correct
        rate = float(res.success[res.clean_correct].float().mean()) if bool(res.clean_correct.any()) else float("nan")
        med2 = float(res.dist_l2[ok].median()) if bool(ok.any()) else float("inf")
        medi = float(res.dist_linf[ok].median()) if bool(ok.any()) else float("inf")
        print(f"{name:<16} {dt:8.3f} {100 * rate:7.1f}% {med2:10.4f} {medi:12.4f}", flush=True)


def _overrides(text: str, cfg) -> dict:
    """``field=value,...`` as AttackConfig keyword arguments, each value parsed as its field's current type."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not hasattr(cfg, key):
            raise SystemExit(f"--after {item!r}: expected field=value with a field of AttackConfig")
        cur = getattr(cfg, key)
        if isinstance(cur, tuple):  # tuple fields: items separated by '/', e.g. attacks=pgd/cw/fmn-refine
            out[key] = tuple(filter(None, value.split("/")))
        else:
            out[key] = value if isinstance(cur, str) or cur is None else type(cur)(value)
    return out


def _behind(best, reference, norm, tol=0.01):
    """The images whose suite best in ``norm`` is more than ``tol`` farther than the closest successful reference
    adversarial: one row each, with the ratio and the reference attack that found that point."""
    import pandas as pd

    b = best[best["norm"] == norm].set_index("image")["best"].astype(float)
    ref = reference[(reference["norm"] == norm) & reference["success"].astype(bool)]
    closest = ref.loc[ref.groupby("image")[f"dist_{norm}"].idxmin()].set_index("image")
    both = closest.index.intersection(b.index[b > 0])
    ratio = b.loc[both] / closest.loc[both, f"dist_{norm}"].astype(float)
    out = pd.DataFrame({"ratio": ratio, "attack": closest.loc[both, "attack"]})
    return out[out["ratio"] > 1 + tol]


def reference_mode(model, x, y, idx, args) -> None:
    """The paper's suite and the reference attacks on the same images; passes, seconds and the cross-check."""
    import dataclasses

    from paperlib.attacks.reference import REFERENCE_ATTACKS
    from paperlib.attacks.suite import (
        ATTACK_COLUMNS,
        _reference_batches,
        _summarize_reference,
        best_distances,
        run_attack_suite,
    )
    from paperlib.reproduce import evaluation_configs

    import pandas as pd

    n = len(x)
    def first_phase(scale):  # the grid's attack config at that scale: its first phase only, on these n images
        return dataclasses.replace(evaluation_configs("fmnist", scale=scale)["attack"], n_images=n, convergence_n=0,
                                   escalate=0, escalate_norms=(), seed=args.seed)

    paper = first_phase(args.scale)
    cfg = dataclasses.replace(paper, reference_attacks=REFERENCE_ATTACKS,
                              reference_eps_linf=tuple(float(e) / 255 for e in args.eps_linf.split(",") if e),
                              reference_eps_l2=tuple(float(e) for e in args.eps_l2.split(",") if e))
    import os

    print(f"{n} images of {args.run or 'a quick fmnist-cnn'}, torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; paper suite: the {args.scale}-scale "
          f"fmnist budgets; references (not in the paper): AutoAttack's settings")
    head = f"{'attack':<26} {'fwd/image':>10} {'bwd/image':>10} {'s/image':>8} {'success':>8}"

    def print_jobs(out, label):
        print(head)
        total = 0.0
        for job, r in out.summary["jobs"].items():
            f, b = r.get("forward_passes_per_image", 0.0), r.get("backward_passes_per_image", 0.0)
            total += f + b
            print(f"{job:<26} {f:10.0f} {b:10.0f} {r['seconds_per_image']:8.3f} {r['success_pct']:7.1f}%", flush=True)
        print(f"{label + ', all jobs':<26} {total:21.0f} passes per image (forward + backward)", flush=True)

    def run_suite(cfg, label):
        t0 = time.perf_counter()
        out = run_attack_suite(model, x, y, idx, cfg, progress=True)
        print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
        print_jobs(out, label)
        return out

    if not args.suites_only:  # first, so that a stored (resumable) reference run is not queued behind the suites
        t0 = time.perf_counter()
        if args.store:  # the references alone, as a resumable sub-run of the model's run (keyed by their settings)
            from paperlib.config import config_hash
            from paperlib.runs import Run, load_or_run

            if not args.run:
                raise SystemExit("--store needs --run: the references are stored as a sub-run of the model's run")
            fields = ("n_images", "seed", "batch_size", "top_k", "norms", "reference_attacks", "reference_eps_l2",
                      "reference_eps_linf", "reference_steps", "reference_queries", "reference_targets")
            record = {"draw": "fashion-mnist test, sample_images(seed)", **{f: getattr(cfg, f) for f in fields}}
            sub = Run(f"{args.run}/reference-{config_hash(record, 8)}", record)

            def compute(r):
                table, info = _reference_batches(model, x, y, idx, cfg, run=r, progress=True)
                r.write_table("reference.csv", table)
                r.write_json("reference_info.json", info)
                return {"seconds": sum(info["seconds"].values())}

            load_or_run(sub, compute)
            reference, info = sub.read_table("reference.csv"), sub.read_json("reference_info.json")
            print(f"reference attacks (stored in {sub.path}; their seconds are those of the run that computed them): "
                  f"{time.perf_counter() - t0:.0f} s to load or compute", flush=True)
        else:
            reference, info = _reference_batches(model, x, y, idx, cfg, progress=True)
            print(f"reference attacks: {time.perf_counter() - t0:.0f} s", flush=True)
    first = first_phase(args.before)  # the --after suites are --scale's budgets with their changes
    suites = [("paper suite", run_suite(first, f"paper suite ({args.before} budgets)"))]
    for k, change in enumerate(filter(None, args.after.split(";"))):
        label = "after" if ";" not in args.after else f"after {k + 1} ({change})"
        after = run_suite(dataclasses.replace(paper, **_overrides(change, paper)), label)  # --scale's budgets
        suites.append((label, after))
        for norm in paper.norms:
            d0, d1 = (t.best[t.best["norm"] == norm].set_index("image")["best"].astype(float)
                      for t in (suites[0][1], after))
            d1 = d1.reindex(d0.index)
            ok = (d0 > 0) & (d0 < float("inf"))
            ratio = d1[ok] / d0[ok]
            print(f"{label}, {norm}: median best {d0[ok].median():.4f} -> {d1[ok].median():.4f}; after / before median "
                  f"{ratio.median():.4f}, worst {ratio.max():.4f}, best {ratio.min():.4f}; more than 1 % farther on "
                  f"{int((ratio > 1.01).sum())} and more than 1 % closer on {int((ratio < 0.99).sum())} of "
                  f"{int(ok.sum())} images", flush=True)
            farther = ratio.index[ratio > 1.01]
            if len(farther):  # which attack of the first suite found what the second missed
                before = suites[0][1].best
                won = before[(before["norm"] == norm) & before["image"].isin(farther)]["best_attack"].value_counts()
                print(f"  the first suite's best attack on those {len(farther)}: "
                      + ", ".join(f"{a} {c}" for a, c in won.items()), flush=True)
    if args.suites_only:
        return
    for label, suite in suites:
        best_all = best_distances(pd.concat([suite.attacks, reference[ATTACK_COLUMNS]], ignore_index=True), cfg.norms)
        summary = _summarize_reference(suite.attacks, suite.best, reference, best_all, cfg, info)
        if label == "paper suite":
            print(head + "   (not in the paper; fixed-eps attacks run on the images the previous ones left robust)")
            for job, r in summary["jobs"].items():
                ok = f"{r['success_pct']:7.1f}%" if r["success_pct"] is not None else f"{'-':>8}"
                print(f"{job:<26} {r['forward_passes_per_image']:10.0f} {r['backward_passes_per_image']:10.0f} "
                      f"{r['seconds_per_image']:8.3f} {ok}")
        print(f"cross-check of the {label}:")
        for norm, c in summary["cross_check"].items():
            med = summary[f"median_best_{norm}"]
            print(f"{norm}: suite best within 1% of the references' minimum on {c['within_pct']:.1f}% of "
                  f"{c['n_images']} images (needed: 95%); a reference more than 10% closer on "
                  f"{c['closer_by_10pct']:.1f}%; median suite / reference {c['median_ratio']:.4f}; median best: "
                  f"suite {med['paper_suite']:.4f}, best of all {med['best_of_all']:.4f}")
            behind = _behind(suite.best, reference, norm)
            if len(behind):  # where the suite is more than 1 % behind: which reference found the closer point
                print(f"  more than 1 % behind on {len(behind)} images (suite / reference median "
                      f"{behind['ratio'].median():.3f}, worst {behind['ratio'].max():.3f}); closest reference there: "
                      + ", ".join(f"{a} {k}" for a, k in behind["attack"].value_counts().items()))
            for eps, e in c["errors"].items():
                flag = "ok" if e["suite"] >= e["autoattack"] - 0.5 else "SUITE BELOW AUTOATTACK - 0.5"
                shown = f"{float(eps) * 255:.3g}/255" if norm == "linf" else eps
                print(f"  % error at {shown}: suite {e['suite']:.1f}, AutoAttack {e['autoattack']:.1f}, best of all "
                      f"{e['best_of_all']:.1f}  [{flag}]")


if __name__ == "__main__":
    main()
