"""The run store: every experiment is run once, written atomically, sealed, and loaded thereafter.

Layout::

    runs/<profile>/<name>/            a run (e.g. a trained model)
        config.json                   the config, its hash, seed, versions, git commit, start time
        log.txt                       human-readable log (appended)
        checkpoint.pt                 resumable state while the run is partial
        <tables>.csv, <files>.json    results
        weights.pt                    model state_dict
        metrics.json                  final metrics
        FINISHED.json                 the finished marker: config hash, finish time, and the size, sha256 and
                                      (CSV) row count of every result file; written last
        <sub>/                        nested runs of the same shape (attacks, bounds, certificates of a model)
    runs/<profile>/.<name>.lock       the writer lock while a process computes the run

A run is *finished* iff ``FINISHED.json`` names the same config hash as ``config.json`` and as the config
asked for, and every file it sealed is unchanged. Every file is written to a temporary file in the same
directory and then renamed (``os.replace`` is atomic on POSIX), and the marker is written last, so a run killed
at any point never looks finished and never leaves a half-written file; per-file atomic writes plus a
last-written marker let a long run checkpoint and resume *in place*.

A run directory that holds a *different* config is ``stale`` and one whose sealed files changed (truncated,
edited, swapped in from another run) is ``corrupt``: neither is ever loaded, and computing over it raises
:class:`StaleRunError` / :class:`RunCorruptError` (one line naming the difference) unless ``force=True``,
which moves the old directory aside to ``<name>.stale-<hash>`` / ``<name>.corrupt`` (nothing is deleted).
Only one process writes a run at a time (:meth:`Run.lock`); a second one stops naming the holder, or waits.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy
import torch

import paperlib
from paperlib.config import ConfigError, check_runs_dir, config_hash, config_to_dict

__all__ = ["RunStore", "Run", "StaleRunError", "RunCorruptError", "RunLockedError", "load_or_run",
           "environment_info", "atomic_write_bytes", "atomic_write_text", "default_runs_dir", "FINISHED",
           "finished_dir"]

FINISHED = "FINISHED.json"
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"
#: Files of a run directory that are not results, so the finished marker does not seal them: the marker
#: itself, the appended log, the resume checkpoint and the divergence record of :mod:`paperlib.reproduce`.
UNSEALED = frozenset({FINISHED, LOG, CHECKPOINT, "DIVERGED.json"})


class StaleRunError(ConfigError):
    """A run directory holds a different config than the one asked for."""


class RunCorruptError(ConfigError):
    """A run file is corrupt, truncated or not what it claims to be."""


class RunLockedError(ConfigError):
    """Another process holds the run's lock (the message names it: pid, host, start time)."""


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
# Config records, finished markers and their seals
# --------------------------------------------------------------------------------------------------


def _read_config_record(path: Path) -> dict[str, Any] | None:
    """``<path>/config.json`` as a dict with a string ``hash`` (None if absent); anything else is corrupt."""
    p = path / CONFIG
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunCorruptError(f"{p} cannot be read ({exc}); recompute the run with --force") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise RunCorruptError(f"{p} is not valid JSON ({exc}); recompute the run with --force") from None
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str) \
            or not isinstance(record.get("config", {}), dict):
        raise RunCorruptError(f"{p} is not a run record (expected an object with 'config' and 'hash', got "
                              f"{type(record).__name__}); recompute the run with --force")
    return record


def _read_marker(path: Path) -> Any:
    try:
        return json.loads((path / FINISHED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"


def _result_files(path: Path) -> list[Path]:
    """The files a finished marker seals: the directory's own plain files, not hidden or temporary ones, not
    :data:`UNSEALED`, not nested runs."""
    return sorted(p for p in path.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in UNSEALED)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _csv_rows(path: Path) -> int:
    """Data rows of a CSV written by :meth:`Run.write_table` (one line per row after the header)."""
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return max(lines - 1, 0)


def _file_record(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    if path.suffix == ".csv":
        record["rows"] = _csv_rows(path)
    return record


def _check_file(path: Path, record: Any) -> str | None:
    """Why ``path`` no longer matches its sealed ``record`` (one line), or None."""
    if not isinstance(record, dict) or "sha256" not in record:
        return f"the finished marker's record of {path.name} is malformed"
    if not path.is_file():
        return f"{path} is missing (the finished run recorded it)"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{path} has {size} bytes where the finished run recorded {record.get('bytes')} (truncated or replaced)"
    if _sha256(path) != record["sha256"]:
        return f"{path} differs from the file the finished run recorded (sha256 mismatch: edited or another run's)"
    return None


def _marker_status(path: Path, expected_hash: str) -> tuple[str, str | None]:
    """``('finished', None)``, ``('partial', None)`` or ``('corrupt', why)`` for a run directory whose config
    record has ``expected_hash``."""
    marker = _read_marker(path)
    if marker is None:
        return "partial", None
    if not isinstance(marker, dict):
        return "corrupt", f"{path / FINISHED} is not a valid finished marker"
    if marker.get("hash") != expected_hash:
        return "partial", None  # a marker of an earlier config: the current one has not finished
    files = marker.get("files")
    if not isinstance(files, dict):
        return "corrupt", (f"{path / FINISHED} seals no result files (it predates checksummed markers, or was "
                           "edited)")
    for name in sorted(files):
        problem = _check_file(path / name, files[name])
        if problem:
            return "corrupt", problem
    extra = sorted(p.name for p in _result_files(path) if p.name not in files)
    if extra:
        return "corrupt", f"{path} holds result files the finished run did not record: {', '.join(extra[:5])}"
    return "finished", None


def finished_dir(path: str | os.PathLike) -> bool:
    """Whether the directory ``path`` holds a finished run of the config it records (sealed files intact),
    whatever that config is: for readers that find runs by walking the store."""
    try:
        stored = _read_config_record(Path(path))
    except RunCorruptError:
        return False
    return stored is not None and _marker_status(Path(path), stored["hash"])[0] == "finished"


def _lock_holder(path: Path) -> str:
    try:
        rec = json.loads(path.read_text())
        return f"pid {rec['pid']} on {rec['host']} (since {rec['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


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
        return _read_config_record(self.path)

    @property
    def status(self) -> str:
        """``'missing'``, ``'partial'`` (started, not finished), ``'finished'``, ``'stale'`` (other config) or
        ``'corrupt'`` (marked finished, but a result file differs from what the marker sealed; see
        :meth:`problem`)."""
        stored = self.stored_config()
        if stored is None:
            return "missing"
        if stored.get("hash") != self.hash:
            return "stale"
        return _marker_status(self.path, self.hash)[0]

    def problem(self) -> str | None:
        """Why a run marked finished is ``'corrupt'`` (one line), else None."""
        stored = self.stored_config()
        if stored is None or stored.get("hash") != self.hash:
            return None
        return _marker_status(self.path, self.hash)[1]

    def is_finished(self) -> bool:
        return self.status == "finished"

    def require_finished(self, hint: str) -> "Run":
        """Return the run if it is finished; otherwise raise a one-line error: :class:`RunCorruptError` naming
        the damaged file (recompute with ``--force``), or :class:`~paperlib.config.ConfigError` with ``hint``
        (how to compute it)."""
        status = self.status
        if status == "finished":
            return self
        if status == "corrupt":
            raise RunCorruptError(f"run {self.path}: {self.problem()}; recompute it with --force")
        if status == "stale":
            raise StaleRunError(self._stale_message(self.stored_config() or {}))
        raise ConfigError(f"run {self.path} is {status}, not finished; {hint}")

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
        try:
            stored = self.stored_config()
        except RunCorruptError:
            if not force:
                raise
            _move_aside(self.path, "corrupt")
            stored = None
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
        """Write ``metrics.json``, then the finished marker, then drop the resume checkpoint.

        The marker seals every result file of the directory (not the log, the checkpoint or nested runs): its
        size, sha256 and, for CSV tables, its row count. Loading verifies them, so a truncated, edited or
        swapped-in file makes the run ``'corrupt'`` instead of loading. The checkpoint goes only after the marker
        is on disk: a crash in between leaves a finished run with a spare checkpoint, never an unfinished run
        without one.
        """
        if metrics is not None:
            self.write_json("metrics.json", metrics)
        files = {p.name: _file_record(p) for p in _result_files(self.path)}
        atomic_write_text(self.path / FINISHED, _dumps({
            "hash": self.hash,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }))
        ck = self.path / CHECKPOINT
        if ck.exists():
            ck.unlink()
        return self

    @contextlib.contextmanager
    def lock(self, *, wait: bool | float = False) -> Iterator["Run"]:
        """Hold the run's exclusive writer lock (``.<name>.lock`` beside the directory) for the ``with`` block.

        One process writes a run at a time: train, attack, bound, certify and reproduce all take this lock
        before they compute. The lock is an ``flock`` on a file that records the holder (pid, host, start
        time): the kernel drops it when the holder dies, so a lock left by a killed process is taken over, not
        waited on. Another live holder raises :class:`RunLockedError` naming it, or with ``wait`` (True, or a
        number of seconds) the call waits for it.
        """
        path = self.path.parent / f".{self.path.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if wait is True else time.monotonic() + (float(wait) if wait else 0.0)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise RunLockedError(f"run {self.path} is being written by {_lock_holder(path)}; wait for it "
                                         "to finish (or stop that process) and try again") from None
                time.sleep(0.5)
                continue
            try:  # the file we locked must still be the one at the path (a releasing holder unlinks it)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            yield self
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(fd)

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
        self._verify_file(fname)
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
        record = self._verify_file(fname)
        try:
            table = pd.read_csv(p)
        except FileNotFoundError:
            raise RunCorruptError(f"{p} does not exist (status of {self.path}: {self.status})") from None
        except (ValueError, pd.errors.ParserError) as exc:
            raise RunCorruptError(f"{p} is not a valid CSV table ({exc}); recompute the run with --force") from None
        if record is not None and "rows" in record and len(table) != record["rows"]:
            raise RunCorruptError(f"{p} has {len(table)} rows where the finished run recorded {record['rows']}; "
                                  "recompute the run with --force")
        return table

    def _verify_file(self, fname: str) -> dict[str, Any] | None:
        """The sealed record of ``fname`` if the run is finished, after checking the file still matches it."""
        marker = _read_marker(self.path)
        files = marker.get("files") if isinstance(marker, dict) else None
        if not isinstance(files, dict) or fname not in files:
            return None
        problem = _check_file(self.path / fname, files[fname])
        if problem:
            raise RunCorruptError(f"{problem}; recompute the run with --force")
        return files[fname]

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
        self._verify_file(fname)
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
            f"{first[:200]}); recompute the run with --force"
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
        env = os.environ.get("PAPERLIB_RUNS")
        self.root = Path(root if root is not None else env or "runs")
        check_runs_dir(self.root, "runs_dir" if root is not None or not env else "$PAPERLIB_RUNS", writable=False)

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
            rel = str(d.relative_to(self.root))
            try:
                stored = _read_config_record(d)
            except RunCorruptError as exc:
                rows.append({"path": rel, "status": "corrupt", "type": "?", "hash": None, "problem": str(exc)})
                continue
            h, kind = stored["hash"], str(stored.get("type", "?"))
            status, problem = _marker_status(d, h)
            rows.append({"path": rel, "status": status, "type": kind, "hash": h, "problem": problem})
        return rows


def load_or_run(run: Run, fn: Callable[[Run], Mapping[str, Any] | None], *, force: bool = False,
                wait: bool | float = False) -> Run:
    """Return ``run`` if it is finished with the same config; otherwise compute it under the run's lock.

    ``fn(run)`` does the work (resuming from the run's checkpoint if it wrote one) and returns the final
    metrics (or None); then the run is marked finished. A stale directory raises :class:`StaleRunError` and a
    corrupt one :class:`RunCorruptError` unless ``force``, which moves either aside (and recomputes a finished
    run too). Another process writing the run raises :class:`RunLockedError` (``--force`` included), or with
    ``wait`` waits for it and then returns its result.
    """
    if run.status == "finished" and not force:
        return run
    with run.lock(wait=wait):
        status = run.status  # again: the run may have finished while we waited for the lock
        if status == "finished" and not force:
            return run
        if status == "corrupt" and not force:
            raise RunCorruptError(f"run {run.path}: {run.problem()}; recompute it with --force")
        if status in ("finished", "corrupt"):
            _move_aside(run.path, f"old-{run.hash}" if status == "finished" else "corrupt")
        run.start(force=force)
        metrics = fn(run)
        run.finish(metrics)
    return run
