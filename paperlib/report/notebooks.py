"""Execute the book's notebooks in place, the way nbval re-checks them.

``python -m paperlib.report.notebooks book/*.ipynb`` runs each notebook top to bottom with its directory as
the working directory (as nbval and Jupyter do) and writes the outputs back atomically. Progress bars are
disabled through ``TQDM_DISABLE=1`` both here and under nbval (see ``tests/conftest.py``), so the committed
outputs compare cleanly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from paperlib.runs import atomic_write_text


def execute_notebook(path: str | os.PathLike, timeout: int = 1800, kernel: str = "python3") -> float:
    """Execute ``path`` in place; return the wall time in seconds. A failing cell raises."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute()
    for cell in nb.cells:  # execution timestamps would make every re-run a diff
        cell.get("metadata", {}).pop("execution", None)
    atomic_write_text(path, nbformat.writes(nb) + "\n")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    for nb in args.notebooks:
        print(f"executing {nb} ...", flush=True)
        seconds = execute_notebook(nb, args.timeout)
        print(f"  done in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
