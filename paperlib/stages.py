"""Stages: one run-or-load for training, the attack suite, the bounds and certification.

Each stage of the data path turns a config into a run of the run store (:mod:`paperlib.runs`): training writes
``runs/<profile>/<run name>/``, the evaluation stages write a sub-run of a trained model's run
(``attack-<config hash>/``, ``bounds-<norm>/``, ``certify-sigma<sigma>/``). What every stage does with its run is
the same and lives here once:

* **naming**: :func:`~paperlib.stages.stage_subrun` finds the sub-run of an evaluation config, from the rule its
  stage registered (:func:`~paperlib.stages.register_stage`); the grid, the command line, the table pages and the
  experiment notebooks all go through it, so they agree;
* **hash check**: a run handed in must have been made for the config asked for
  (:func:`~paperlib.stages.check_run_config`);
* **resume, write, load**: :func:`~paperlib.stages.run_or_load` loads a finished run, or computes it under the
  run's lock (a partial run keeps its checkpoint, so the stage's computation resumes from it), seals it, and
  returns the stage's result.

The stage modules (:mod:`paperlib.training.engine`, :mod:`paperlib.attacks.suite`,
:mod:`paperlib.bounds.stage`, :mod:`paperlib.bounds.smoothing`) import this module and register their
stage; this module imports none of them, so the layers above (the grid, the command line, the report) find a
result without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from paperlib.config import ConfigError, config_hash
from paperlib.runs import Run, RunStore, load_or_run

__all__ = ["Stage", "register_stage", "stages", "stage_of", "stage_subrun", "stage_run", "check_run_config",
           "run_or_load"]



@dataclass(frozen=True)
class Stage:
    """One stage of the data path: its config type and how its runs are named and read back.

    Args:
        name: the stage, also its sub-command (``'train'``, ``'attack'``, ``'bound'``, ``'certify'``).
        config_type: the stage's config dataclass.
        run_name: the directory name of the run of a config (for ``nested`` stages, inside the trained model's
            run).
        load: reads a finished run's result back (e.g. :func:`~paperlib.attacks.suite.load_suite`).
        nested: whether the stage's runs are sub-runs of a trained model's run (every stage but training).
    """

    name: str
    config_type: type
    run_name: Callable[[Any], str]
    load: Callable[[Run], Any]
    nested: bool = True


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Register ``stage`` (once per name; registering the same config type again replaces it, so a reloaded
    module re-registers) and return it."""
    old = _STAGES.get(stage.name)
    if old is not None and old.config_type.__qualname__ != stage.config_type.__qualname__:
        raise ConfigError(f"stage {stage.name!r} is already registered for {old.config_type.__name__}, not "
                          f"{stage.config_type.__name__}")
    _STAGES[stage.name] = stage
    return stage


def stages() -> dict[str, Stage]:
    """The registered stages by name (those whose modules are imported)."""
    return dict(_STAGES)


def stage_of(cfg: Any) -> Stage:
    """The stage whose config type ``cfg`` is; a :class:`~paperlib.config.ConfigError` for any other object."""
    for stage in _STAGES.values():
        if isinstance(cfg, stage.config_type):
            return stage
    known = ", ".join(s.config_type.__name__ for s in _STAGES.values()) or "none registered"
    raise ConfigError(f"no stage has a config of type {type(cfg).__name__}; expected one of {known}")


def stage_subrun(run: Run | str | os.PathLike, cfg: Any) -> Run:
    """The sub-run of a trained model's run (a :class:`~paperlib.runs.Run` or its directory) that holds the
    evaluation stage with config ``cfg``: ``attack-<config hash>``
    (:class:`~paperlib.attacks.suite.AttackConfig`), ``bounds-<norm>``
    (:class:`~paperlib.bounds.stage.BoundConfig`) or ``certify-sigma<sigma>``
    (:class:`~paperlib.bounds.smoothing.CertifyConfig`; ``certify-sigma<sigma>-n<n>`` when ``n`` is at least
    :data:`~paperlib.bounds.smoothing.CERTIFY_NAME_N`). The one place the evaluation stages' runs are found, so
    the grid, the command line, the table pages and the experiment notebooks agree."""
    stage = stage_of(cfg)
    if not stage.nested:
        raise ConfigError(f"a {type(cfg).__name__} run is not a sub-run of a model's run; use "
                          "paperlib.stages.stage_run(store, cfg)")
    return Run(Path(getattr(run, "path", run)) / stage.run_name(cfg), cfg)


def stage_run(where: Run | RunStore | str | os.PathLike | None, cfg: Any) -> Run:
    """The run of a top-level stage's config (training): ``where`` is a :class:`~paperlib.runs.RunStore`, a runs
    directory (None: the default store), or a :class:`~paperlib.runs.Run`, which must be one of ``cfg``
    (:func:`~paperlib.stages.check_run_config`). In a store the run is ``<root>/<cfg.profile>/<run name>``."""
    if isinstance(where, Run):
        return check_run_config(where, cfg)
    stage = stage_of(cfg)
    if stage.nested:
        raise ConfigError(f"a {type(cfg).__name__} run lives inside a model's run; use "
                          "paperlib.stages.stage_subrun(model_run, cfg)")
    if isinstance(where, RunStore):
        return where.run(cfg.profile, stage.run_name(cfg), cfg)
    if isinstance(where, (str, os.PathLike)) or where is None:
        return RunStore(where).run(cfg.profile, stage.run_name(cfg), cfg)
    raise TypeError(f"expected a RunStore, a Run or a runs directory, got {type(where).__name__}")


def check_run_config(run: Any, cfg: Any) -> Run:
    """``run`` if it was made for ``cfg`` (same config hash); else a one-line
    :class:`~paperlib.config.ConfigError` naming both hashes."""
    if not isinstance(run, Run):
        raise ConfigError(f"expected a run of the run store (paperlib.runs.Run), got {type(run).__name__}")
    want = config_hash(cfg)
    if run.hash != want:
        raise ConfigError(f"run {run.path} was made for another config (hash {run.hash}, this one {want}); "
                          "create it with this config (paperlib.stages.stage_subrun(model_run, cfg), or the "
                          "RunStore for a training run)")
    return run


def run_or_load(run: Run, cfg: Any, compute: Callable[[Run], Any], *, metrics: Callable[[Any], Mapping[str, Any] | None],
                load: Callable[[Run], Any], force: bool = False, wait: bool | float = False,
                reload: bool = False) -> Any:
    """The stage's result for ``cfg`` in ``run``: loaded if the run is finished, else computed and sealed.

    Args:
        run: the stage's run; it must have been made for ``cfg`` (:func:`~paperlib.stages.check_run_config`).
        cfg: the stage's config.
        compute: ``compute(run) -> result`` does the work and writes the result files into the run; it resumes
            from the run's checkpoint where it wrote one (a partial run is kept as it is).
        metrics: ``metrics(result)``: what the finished run records as ``metrics.json`` (or None).
        load: ``load(run) -> result`` reads a finished run back.
        force: recompute a finished run and move a stale or corrupt one aside.
        wait: if another process is writing the run, wait for it (True, or seconds) instead of raising
            :class:`~paperlib.runs.RunLockedError`.
        reload: return what ``load`` reads back even when the result was computed now (so a caller always gets
            the stored precision); otherwise a result computed now is returned as it is.

    A stale run (another config in the directory) raises :class:`~paperlib.runs.StaleRunError` and a corrupt
    one :class:`~paperlib.runs.RunCorruptError` unless ``force`` (:func:`~paperlib.runs.load_or_run`).
    """
    check_run_config(run, cfg)
    computed: list[Any] = []

    def work(r: Run) -> Mapping[str, Any] | None:
        result = compute(r)
        computed.append(result)
        return metrics(result)

    load_or_run(run, work, force=force, wait=wait)
    if computed and not reload:
        return computed[0]
    return load(run)
