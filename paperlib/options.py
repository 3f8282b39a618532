"""Command-line options generated from the config dataclasses, and the options every computing command shares.

``paperlib train``, ``attack``, ``bound`` and ``certify`` take the same execution options, added here once
(:func:`~paperlib.options.add_stage_options`): ``--device``, ``--n-images``, ``--no-progress`` and ``--force``.
An option that sets a config field is made from the field (:func:`~paperlib.options.add_config_option`): its
flag is the field's name with dashes, its type the field's annotation, its help the field's entry in the config's
docstring, and its default the dataclass's, stated once in the dataclass: the option's value is ``None`` unless
given, and the command leaves a field it was not given to the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any

from pathlib import Path

import torch

from paperlib.config import ConfigError, check_device, get_profile, parse_number
from paperlib.data import check_split_count, load_dataset, sample_images

__all__ = ["field_docs", "field_default", "add_config_option", "add_stage_options", "config_overrides",
           "resolve_device", "renamed_option", "check_renamed", "trained_model", "draw_images"]

_SECTIONS = ("Args:", "Other Parameters:", "Attributes:")


def _plain(text: str) -> str:
    """Docstring markup as plain text for ``--help``: ``x`` -> x, :func:`~a.b.c` -> c, :class:`a.B` -> a.B."""
    text = re.sub(r":[a-z]+:`~[\w.]*?\.?(\w+)`", r"\1", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", text)
    text = text.replace("``", "").replace("*", "")
    text = re.sub(r"\s+\[[\w, -]+\]$", "", text)  # TrainConfig's '[penalty, AT]' tags
    return " ".join(text.split()).replace("%", "%%")  # argparse formats help with %


def field_docs(cls: type) -> dict[str, str]:
    """Each field's entry in the Napoleon docstring of the dataclass ``cls`` (``Args``, ``Other Parameters``,
    ``Attributes``), as plain text; an entry naming several fields (``a, b: ...``) belongs to each of them."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    current: list[str] = []
    in_section = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in _SECTIONS:
            in_section, current = True, []
            continue
        if not line.startswith(" "):
            in_section, current = stripped == "" and in_section, []
            continue
        if not in_section:
            continue
        entry = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if entry and not line.startswith("     "):
            current = [n.strip() for n in entry.group(1).split(",") if n.strip() in names]
            for n in current:
                out[n] = entry.group(2)
        else:
            for n in current:
                out[n] += " " + stripped
    # Inline entries ("lam: ...; h: ...") and parallel ones ("pgd_steps, pgd_search_steps: a; b").
    for key in list(out):
        parts = re.split(r";\s+(\w+):\s+", out[key])
        if len(parts) > 1 and all(n in names for n in parts[1::2]):
            out[key] = parts[0]
            for n, text in zip(parts[1::2], parts[2::2]):
                out.setdefault(n, text)
    shared: dict[str, list[str]] = {}
    for key, text in out.items():
        shared.setdefault(text, []).append(key)
    for text, keys in shared.items():
        pieces = [p.strip() for p in text.rstrip(".").split(";")]
        if len(keys) > 1 and len(pieces) == len(keys):
            for k, piece in zip(keys, pieces):
                out[k] = piece
    return {k: _plain(v) for k, v in out.items()}


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (a ConfigError if it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ConfigError(f"{cls.__name__}.{name} has no default")
    raise ConfigError(f"{cls.__name__} has no field {name!r}")


def _option_type(cls: type, name: str) -> Any:
    """The argparse type of a field from its annotation: int, a number (float or fraction such as 8/255), str,
    bool (``--x/--no-x``), or a tuple of numbers (several values)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else hint
    if base is bool:
        return bool
    if base is int:
        return int
    if base is float:
        return parse_number
    if typing.get_origin(base) is tuple:
        inner = typing.get_args(base)[0]
        return ("nargs", int if inner is int else parse_number if inner is float else str)
    return str


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_config_option(group: Any, cls: type, name: str, *, flag: str | None = None, help: str | None = None,
                      default_text: str | None = None, type: Any = None, nargs: str | None = None) -> argparse.Action:
    """Add the option of field ``name`` of the config dataclass ``cls`` to ``group``.

    Args:
        group: an argparse parser or argument group.
        cls: the config dataclass.
        name: the field; the option's ``dest``.
        flag: the option string (default ``--<name with dashes>``).
        help: the help text (default: the field's docstring entry, :func:`~paperlib.options.field_docs`).
        default_text: what the help says the default is (default: the dataclass's default of the field).
        type: the argparse type (default: from the field's annotation).
        nargs: argparse's ``nargs`` (default: one value; several for a tuple field without ``type``).

    The option's value is None unless given (:func:`~paperlib.options.config_overrides` leaves it out).
    """
    kind = _option_type(cls, name) if type is None else type
    text = help if help is not None else field_docs(cls).get(name, "")
    shown = default_text if default_text is not None else _default_text(field_default(cls, name))
    text = f"{text.rstrip('.')} (default: {shown})".strip()
    flag = flag or "--" + name.replace("_", "-")
    if kind is bool:
        return group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    if isinstance(kind, tuple):
        return group.add_argument(flag, dest=name, type=kind[1], nargs="+", default=None, help=text)
    return group.add_argument(flag, dest=name, type=kind, nargs=nargs, default=None, help=text)


def config_overrides(args: argparse.Namespace, names: typing.Iterable[str]) -> dict[str, Any]:
    """The config fields among ``names`` given on the command line (not None), lists as tuples."""
    out = {}
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            out[n] = tuple(v) if isinstance(v, list) else v
    return out


class _Renamed(argparse.Action):
    """An option that was renamed: using it is a one-line error naming the new option."""

    def __init__(self, option_strings, dest, *, message: str, **kw):
        super().__init__(option_strings, dest, nargs=kw.pop("nargs", None), default=None, help=argparse.SUPPRESS)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "_renamed_error", self.message.format(value=values))


def renamed_option(group: Any, old: str, message: str) -> None:
    """Keep the renamed option ``old`` as a hidden one whose use is the one-line error ``message`` (``{value}``:
    the value given); ``paperlib.cli.main`` raises it (:func:`~paperlib.options.check_renamed`) before the
    command runs."""
    group.add_argument(old, dest="_renamed_" + old.strip("-").replace("-", "_"), action=_Renamed, message=message)


def check_renamed(args: argparse.Namespace) -> None:
    """Raise the one-line error of a renamed option that was used (:func:`~paperlib.options.renamed_option`)."""
    message = getattr(args, "_renamed_error", None)
    if message:
        raise ConfigError(message)


def add_stage_options(parser: Any, *, n_images: str, force: str) -> argparse._ArgumentGroup:
    """Add the execution options every computing command shares, in one ``execution`` group.

    ``--device`` (default: CUDA if this machine has it, else the CPU), ``--n-images`` (``n_images``: what it
    counts and its default, per command, in ``n_images``), ``--no-progress`` (``progress`` False) and ``--force``
    (what it recomputes, in ``force``).
    """
    g = parser.add_argument_group("execution (the same for train, attack, bound and certify)")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available, else cpu)")
    g.add_argument("--n-images", type=int, default=None, help=n_images)
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--force", action="store_true", help=force)
    return g


def resolve_device(device: str | None) -> str:
    """``--device`` as given, or ``'cuda'`` when it was left out and this machine has CUDA, else ``'cpu'``."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def trained_model(run_path: str | Path, device: str, load: Any) -> tuple[Any, Any, Any, str]:
    """What an evaluation command loads first: the trained model of the run directory ``run_path`` (on
    ``device``), its training config, its profile (or None) and its dataset's name. ``load`` is the loader,
    :func:`~paperlib.training.engine.load_trained` (passed in, so this module imports no stage). A missing directory or
    a device this machine lacks is a one-line :class:`~paperlib.config.ConfigError` before anything is loaded."""
    path = Path(run_path)
    if not path.is_dir():
        raise ConfigError(f"run {str(path)!r} does not exist as a directory; pass a training run such as "
                          "runs/fmnist/undefended")
    check_device(device, "--device")
    model, tcfg = load(path, device=device)
    profile = None
    if isinstance(getattr(tcfg, "profile", None), str):
        try:
            profile = get_profile(tcfg.profile)
        except ConfigError:
            profile = None
    dataset = getattr(tcfg, "dataset", None) or (profile.dataset if profile is not None else None)
    if dataset is None:
        raise ConfigError(f"cannot tell which dataset the model of {run_path} was trained on")
    return model, tcfg, profile, dataset


def draw_images(dataset: str, n: int, image_seed: int, data_root: str | None, device: str, *,
                flag: str = "--n-images") -> tuple[Any, Any, Any]:
    """The attack suite's draw of ``n`` test images, ``(x, y, idx)`` with x and y on ``device``; ``n`` larger
    than the test set is a one-line error naming ``flag``."""
    check_split_count(flag, n, dataset, "test")
    x, y, idx = sample_images(load_dataset(dataset, "test", root=data_root), n, image_seed)
    return x.to(device), y.to(device), idx
