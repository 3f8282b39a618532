"""Per-attack time per image on a Fashion-MNIST model (CPU), with the attacks' default settings.

    python benchmarks/bench_attacks.py --run runs/fmnist/undefended --n 20
    python benchmarks/bench_attacks.py --n 8          # trains a small fmnist-cnn on 3000 images first

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        from paperlib.training import load_trained

        model, _ = load_trained(args.run)
    else:
        model = quick_model(args.seed)
    x, y, idx = sample_images(load_dataset("fashion-mnist", "test"), args.n, seed=args.seed)
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


if __name__ == "__main__":
    main()
