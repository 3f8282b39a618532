"""The ``paperlib`` command line (also ``python -m paperlib`` and ``torchrun ... -m paperlib``).

Sub-commands map one-to-one to library functions:

=============  ==============================================================
``train``      train one model of the paper's grid (:mod:`paperlib.training`)
``attack``     the attack suite on a trained model (:mod:`paperlib.attacks`)
``bound``      L-bound, omega-bound, EVT estimates (:mod:`paperlib.bounds`)
``certify``    randomized-smoothing certificates (:mod:`paperlib.bounds`)
``reproduce``  the whole grid of a profile (:mod:`paperlib.reproduce`)
``runs``       list the run store with each run's status
``data``       which datasets are present, where, and their sizes
=============  ==============================================================

Bad input (a :class:`~paperlib.config.ConfigError`) is printed as one line ``paperlib: error: ...`` with exit
status 2, never as a traceback; so is a full disk, a read-only or forbidden path, or a file where a
directory should be. ``Ctrl-C`` exits with status 130; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import Sequence

from paperlib import __version__, data
from paperlib.config import ConfigError, check_runs_dir
from paperlib.options import check_renamed
from paperlib.runs import RunStore

# Each area registers its own sub-commands through ``add_parser(subparsers)`` in these modules.
AREA_CLIS = ("paperlib.training.cli", "paperlib.attacks.cli", "paperlib.bounds.cli", "paperlib.reproduce")


def _cmd_data(args: argparse.Namespace) -> int:
    if args.download:
        data.load_dataset(args.download, "train", download=True)
        data.load_dataset(args.download, "test", download=True)
    for name in args.datasets:
        data.dataset_info(name)  # unknown names are a ConfigError
    if args.root is not None:
        for name in args.datasets or ("fashion-mnist",):
            data.load_dataset(name, "test", root=args.root)  # missing or unreadable: DataNotFoundError
    rows = data.dataset_status(args.datasets or ("fashion-mnist", "cifar10", "imagenet"), root=args.root)
    width = max(len(r["dataset"]) for r in rows)
    for r in rows:
        if r["found"]:
            print(f"{r['dataset']:<{width}}  found    train {r['train']:>7}  test {r['test']:>6}  {r['where'] or ''}")
        else:
            print(f"{r['dataset']:<{width}}  missing  {r['note']}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    if args.runs_dir is not None:
        check_runs_dir(args.runs_dir, "--runs-dir", writable=False)
    store = RunStore(args.runs_dir)
    rows = store.list_runs(args.profile)
    if not rows:
        print(f"no runs under {store.root / (args.profile or '')}")
        return 0
    width = max(len(r["path"]) for r in rows)
    print(f"{'run':<{width}}  {'status':<9} {'type':<14} hash")
    for r in rows:
        print(f"{r['path']:<{width}}  {r['status']:<9} {r['type']:<14} {r['hash']}")
        if r.get("problem"):
            print(f"{'':<{width}}    {r['problem']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" (store: {store.root})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paperlib",
        description="Reproduce Finlay & Oberman (2021): input-gradient regularization for adversarial robustness.",
    )
    parser.add_argument("--version", action="version", version=f"paperlib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("data", help="which datasets are present, where, and their sizes")
    p.add_argument("datasets", nargs="*", help="datasets to check (default: fashion-mnist cifar10 imagenet)")
    p.add_argument("--root", default=None, help="look in this directory first")
    p.add_argument("--download", metavar="NAME", help="download NAME with torchvision first (network needed)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("runs", help="list runs in the run store with their status")
    p.add_argument("--runs-dir", default=None, help="run store root (default: $PAPERLIB_RUNS or ./runs)")
    p.add_argument("--profile", default=None, help="only this profile's runs")
    p.set_defaults(func=_cmd_runs)

    for module in AREA_CLIS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # an area not installed in this checkout is left out; any other missing module is a real error
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        mod.add_parser(sub)
    return parser


#: errors of the machine rather than of paperlib: reported in one line, never as a traceback
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                       errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                       errno.EPERM: "operation not permitted", errno.ENOTDIR: "not a directory",
                       errno.EEXIST: "a file is in the way"}


def _os_error_message(exc: OSError) -> str | None:
    """One line for an :class:`OSError` the machine caused (a full disk, a read-only or forbidden path)."""
    what = _ENVIRONMENT_ERRNOS.get(exc.errno)
    if what is None:
        return None
    where = f": {exc.filename}" if exc.filename else ""
    advice = ("; free some space and run the same command again (a run resumes from its last checkpoint)"
              if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
    return f"{what}{where}{advice}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_renamed(args)  # a renamed option: one line naming the new one
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"paperlib: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = _os_error_message(exc)
        if message is None:
            raise
        print(f"paperlib: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paperlib: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
