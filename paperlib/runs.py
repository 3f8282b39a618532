"""The run store: every experiment is run once, written atomically, and loaded thereafter.

Layout (DESIGN.md section 8)::

    runs/<profile>/<name>/            a run (e.g. a trained model)
        config.json                   the config, its hash, seed, versions, git commit, start time
        log.txt                       human-readable log (appended)
        checkpoint.pt                 resumable state while the run is partial
        <tables>.csv, <files>.json    results
        weights.pt                    model state_dict
        metrics.json                  final metrics
        FINISHED.json                 the finished marker: config hash and finish time, written last
        <sub>/                        nested runs of the same shape (attacks, bounds, certificates of a model)

A run is *finished* iff ``FINISHED.json`` exists and names the same config hash as ``config.json`` and as
the config asked for. Every file is written to a temporary file in the same directory and then renamed
(``os.replace`` is atomic on POSIX), and the marker is written last, so a run killed at any point never looks
finished and never leaves a half-written file. The design asks for "write to a temporary directory, then
rename"; per-file atomic writes plus a last-written marker give the same guarantee while letting a
long run checkpoint and resume *in place*, which a whole-directory rename cannot.

A run directory that holds a *different* config is ``stale``: it is never loaded, and starting over it
raises :class:`StaleRunError` (naming the fields that differ) unless ``force=True``, which moves the old
directory aside to ``<name>.stale-<hash>`` (nothing is deleted).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from paperlib.config import ConfigError, config_hash, config_to_dict

__all__ = ["RunStore", "Run", "StaleRunError", "RunCorruptError", "load_or_run", "environment_info",
           "atomic_write_bytes", "atomic_write_text", "default_runs_dir"]

FINISHED = "FINISHED.json"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"


class StaleRunError(ConfigError):
    """A run directory holds a different config than the one asked for."""


class RunCorruptError(ConfigError):
    """A run file is corrupt, truncated or not what it claims to be."""


# --------------------------------------------------------------------------------------------------
# Atomic file writes
# --------------------------------------------------------------------------------------------------


def default_runs_dir() -> Path:
    """Where results live unless told otherwise: ``$PAPERLIB_RUNS`` if set; else the ``runs/`` folder of the
    checkout paperlib was installed from (editable install: the committed ``runs/fmnist`` the book reads); else
    ``./runs``. Notebooks use it so they find the same runs whatever directory they execute in."""
    env = os.environ.get("PAPERLIB_RUNS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists() and (checkout / "runs").is_dir():
        return checkout / "runs"
    return Path("runs")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def _dumps(obj: Any) -> str:
    return json.dumps(_sanitize_floats(obj), indent=2, sort_keys=True, default=_json_default) + "\n"


def _sanitize_floats(obj: Any) -> Any:
    """JSON has no inf/nan: write them as the strings 'inf', '-inf', 'nan' (read back by read_json)."""
    if isinstance(obj, float):
        if obj != obj:
            return "nan"
        if obj in (float("inf"), float("-inf")):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Mapping):
        return {k: _sanitize_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize_floats(v) for v in obj]
    return obj


def _restore_floats(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("inf", "-inf", "nan"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _restore_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_floats(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Environment record
# --------------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(here)], cwd=here, capture_output=True,
                               text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    import numpy

    import paperlib

    info: dict[str, Any] = {
        "paperlib": paperlib.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


class Run:
    """One experiment's directory. Use :meth:`RunStore.run` or :meth:`Run.subrun` to get one.

    Args:
        path: the run directory.
        config: the experiment's config (a dataclass or a mapping).
    """

    def __init__(self, path: str | os.PathLike, config: Any) -> None:
        self.path = Path(path)
        self.config = config
        self.config_dict = config_to_dict(config) if not isinstance(config, Mapping) else dict(config)
        self.hash = config_hash(self.config_dict)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, hash={self.hash!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- status ------------------------------------------------------------------------------------

    def stored_config(self) -> dict[str, Any] | None:
        """The ``config.json`` record on disk (config, hash, env), or None if absent."""
        p = self.path / CONFIG
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise RunCorruptError(f"{p} is not valid JSON ({exc}); delete the run directory to recompute it") from None

    @property
    def status(self) -> str:
        """``'missing'``, ``'partial'`` (started, not finished), ``'finished'`` or ``'stale'`` (other config)."""
        stored = self.stored_config()
        if stored is None:
            return "missing"
        if stored.get("hash") != self.hash:
            return "stale"
        marker = self.path / FINISHED
        if marker.exists():
            try:
                if json.loads(marker.read_text()).get("hash") == self.hash:
                    return "finished"
            except (OSError, ValueError):
                pass
        return "partial"

    def is_finished(self) -> bool:
        return self.status == "finished"

    def _stale_message(self, stored: dict[str, Any]) -> str:
        old, new = stored.get("config", {}), self.config_dict
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        return (f"run {self.path} holds a different config (hash {stored.get('hash')} vs {self.hash}; {shown}); "
                "pass --force (force=True) to move it aside and recompute, or choose another runs directory")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, force: bool = False) -> "Run":
        """Create the directory and write ``config.json`` (config, hash, seed, versions, git commit).

        An existing partial run with the same config is kept as is (so it can resume). A stale one raises
        :class:`StaleRunError`, or with ``force`` is moved aside to ``<name>.stale-<oldhash>``.
        """
        stored = self.stored_config()
        if stored is not None and stored.get("hash") != self.hash:
            if not force:
                raise StaleRunError(self._stale_message(stored))
            _move_aside(self.path, f"stale-{stored.get('hash', 'unknown')}")
            stored = None
        if stored is None:
            record = {
                "config": self.config_dict,
                "hash": self.hash,
                "seed": self.config_dict.get("seed"),
                "type": type(self.config).__name__ if not isinstance(self.config, Mapping) else "dict",
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "env": environment_info(),
            }
            atomic_write_text(self.path / CONFIG, _dumps(record))
        return self

    def finish(self, metrics: Mapping[str, Any] | None = None) -> "Run":
        """Write ``metrics.json`` and then the finished marker; drop the resume checkpoint."""
        if metrics is not None:
            self.write_json("metrics.json", metrics)
        ck = self.path / CHECKPOINT
        if ck.exists():
            ck.unlink()
        atomic_write_text(self.path / FINISHED, _dumps({
            "hash": self.hash,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }))
        return self

    def subrun(self, name: str, config: Any) -> "Run":
        """A run nested inside this one's directory (e.g. ``attack``, ``bounds-l2`` of a trained model)."""
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"sub-run name {name!r} must be a plain directory name")
        return Run(self.path / name, config)

    def subruns(self) -> Iterator[Path]:
        """Directories of nested runs (those holding a config.json)."""
        if self.path.is_dir():
            for p in sorted(self.path.iterdir()):
                if p.is_dir() and (p / CONFIG).exists():
                    yield p

    # -- files -------------------------------------------------------------------------------------

    def file(self, fname: str) -> Path:
        return self.path / fname

    def exists(self, fname: str) -> bool:
        return (self.path / fname).exists()

    def write_json(self, fname: str, obj: Any) -> Path:
        """Write ``obj`` as JSON (inf/nan as strings) atomically."""
        atomic_write_text(self.path / fname, _dumps(obj))
        return self.path / fname

    def read_json(self, fname: str) -> Any:
        p = self.path / fname
        try:
            return _restore_floats(json.loads(p.read_text()))
        except FileNotFoundError:
            raise RunCorruptError(f"{p} does not exist (status of {self.path}: {self.status})") from None
        except ValueError as exc:
            raise RunCorruptError(f"{p} is not valid JSON ({exc})") from None

    def write_table(self, fname: str, table) -> Path:
        """Write a pandas DataFrame as CSV (no index) atomically. Floats keep full precision."""
        text = table.to_csv(index=False, float_format="%.10g")
        atomic_write_text(self.path / fname, text)
        return self.path / fname

    def read_table(self, fname: str):
        import pandas as pd

        p = self.path / fname
        try:
            return pd.read_csv(p)
        except FileNotFoundError:
            raise RunCorruptError(f"{p} does not exist (status of {self.path}: {self.status})") from None
        except (ValueError, pd.errors.ParserError) as exc:
            raise RunCorruptError(f"{p} is not a valid CSV table ({exc})") from None

    def save_weights(self, state_dict: Mapping[str, torch.Tensor], fname: str = "weights.pt", *,
                     architecture: str | None = None) -> Path:
        """Save a model ``state_dict`` (tensors only) atomically.

        ``architecture`` (see :func:`paperlib.models.architecture_fingerprint`) is recorded in
        ``<fname>.json`` so :meth:`load_weights` can refuse weights trained with another architecture.
        """
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
        if architecture is not None:
            self.write_json(fname + ".json", {"architecture": architecture})
        atomic_write_bytes(self.path / fname, buf.getvalue())
        return self.path / fname

    def load_weights(self, fname: str = "weights.pt", *, architecture: str | None = None) -> dict[str, torch.Tensor]:
        """Load a ``state_dict`` with ``weights_only=True``; corrupt or foreign files raise RunCorruptError.

        With ``architecture``, weights recorded with a different architecture fingerprint raise
        :class:`StaleRunError` (the model's code changed since training).
        """
        if architecture is not None and self.exists(fname + ".json"):
            stored = self.read_json(fname + ".json").get("architecture")
            if stored is not None and stored != architecture:
                raise StaleRunError(
                    f"{self.path / fname} was trained with another architecture of this model (fingerprint "
                    f"{stored}, the code now builds {architecture}): the model's code changed since training; "
                    "retrain with --force")
        return load_state_dict_file(self.path / fname)

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path:
        """Save resumable state (tensors, numbers, strings, lists, dicts; RNG states as tensors) atomically."""
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        atomic_write_bytes(self.path / CHECKPOINT, buf.getvalue())
        return self.path / CHECKPOINT

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if there is none."""
        p = self.path / CHECKPOINT
        if not p.exists():
            return None
        return _torch_load(p)

    def log(self, message: str) -> None:
        """Append a timestamped line to ``log.txt``."""
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {message}\n")


def _move_aside(path: Path, tag: str) -> Path:
    """Rename a run directory to ``<name>.<tag>`` (``-1``, ``-2``, ... if taken): nothing is ever deleted."""
    aside = path.with_name(f"{path.name}.{tag}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.{tag}-{n}")
        n += 1
    path.rename(aside)
    return aside


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunCorruptError(f"{path} does not exist") from None
    except Exception as exc:  # torch raises several unrelated types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunCorruptError(
            f"{path} is not a loadable PyTorch weights file (corrupt, truncated, or not saved by paperlib: "
            f"{first[:200]}); delete it to recompute"
        ) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` file saved by :meth:`Run.save_weights` (``weights_only=True``)."""
    obj = _torch_load(Path(path))
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunCorruptError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(obj)


class RunStore:
    """The root of the run store (``runs/`` by default, or ``$PAPERLIB_RUNS``).

    Args:
        root: directory of the store.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get("PAPERLIB_RUNS", "runs"))

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run(self, profile: str, name: str, config: Any) -> Run:
        """The run ``<root>/<profile>/<name>`` for ``config`` (not created until :meth:`Run.start`)."""
        for label, part in (("profile", profile), ("run name", name)):
            if not part or "/" in part or part.startswith("."):
                raise ConfigError(f"{label} {part!r} must be a plain directory name")
        return Run(self.root / profile / name, config)

    def list_runs(self, profile: str | None = None) -> list[dict[str, Any]]:
        """Every run directory under the store (nested ones included): path, status, type, hash."""
        rows = []
        base = self.root / profile if profile else self.root
        if not base.exists():
            return rows
        for cfg in sorted(base.rglob(CONFIG)):
            d = cfg.parent
            try:
                stored = json.loads(cfg.read_text())
                h = stored.get("hash")
                kind = stored.get("type", "?")
            except (OSError, ValueError):
                rows.append({"path": str(d), "status": "corrupt", "type": "?", "hash": None})
                continue
            status = "partial"
            marker = d / FINISHED
            if marker.exists():
                try:
                    if json.loads(marker.read_text()).get("hash") == h:
                        status = "finished"
                except (OSError, ValueError):
                    status = "corrupt"
            rows.append({"path": str(d.relative_to(self.root)), "status": status, "type": kind, "hash": h})
        return rows


def load_or_run(run: Run, fn: Callable[[Run], Mapping[str, Any] | None], *, force: bool = False) -> Run:
    """Return ``run`` if it is finished with the same config; otherwise compute it.

    ``fn(run)`` does the work (resuming from the run's checkpoint if it wrote one) and returns the final
    metrics (or None); then the run is marked finished. A stale directory raises :class:`StaleRunError`
    unless ``force``. With ``force`` a finished run is recomputed too (after moving it aside).
    """
    status = run.status
    if status == "finished" and not force:
        return run
    if status == "finished" and force:
        _move_aside(run.path, f"old-{run.hash}")
    run.start(force=force)
    metrics = fn(run)
    run.finish(metrics)
    return run
