"""Pass discovery (entry-point group ``onnxslim.passes``) and pipeline specs from CLI or TOML.

Built-in passes are declared in ``pyproject.toml`` like any third-party pass, so the core never
imports them and a plugin becomes usable from the CLI by name once installed.
"""

from __future__ import annotations

import functools
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UsageError, arg, did_you_mean
from .pass_api import Pass

ENTRY_POINT_GROUP = "onnxslim.passes"
#: What runs when no passes are named.
DEFAULT_PIPELINE = ("simplify",)

_extra: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Register a pass class at runtime (tests, notebooks); entry points are the normal route."""
    _extra[cls.name] = cls
    return cls


@functools.cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, type[Pass]]:
    """Every pass that loads, by name. A plugin that fails to import is warned about and skipped."""
    passes: dict[str, type[Pass]] = {}
    for name in sorted(_entry_points()):
        try:
            passes[name] = get(name)
        except UsageError as exc:
            warnings.warn(str(exc), stacklevel=2)
    passes.update(_extra)
    return passes


def get(name: str) -> type[Pass]:
    if name in _extra:
        return _extra[name]
    ep = _entry_points().get(name)
    if ep is None:
        names = sorted(set(_entry_points()) | set(_extra))
        raise UsageError(f"unknown pass {name!r}{did_you_mean(name, names)} (available: {', '.join(names)})")
    try:
        cls = ep.load()
    except Exception as exc:
        raise UsageError(f"pass {name!r} failed to load from {ep.value}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise UsageError(f"entry point {name!r} ({ep.value}) is not an onnxslim Pass")
    return cls


def parse_pipeline(text: str) -> list[Pass]:
    """``"prune:ratio=0.3:criterion=l2,sparsify"`` → pass objects, options typed and validated."""
    passes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, *opts = item.split(":")
        values: dict[str, str] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            if not sep or not key:
                raise UsageError(f"pass {name!r}: expected key=value, got {opt!r}")
            if key.strip() in values:
                raise UsageError(f"pass {name!r}: option {key.strip()!r} given twice")
            values[key.strip()] = value.strip()
        passes.append(get(name.strip()).from_strings(values))
    if not passes:
        raise UsageError(f"{arg('passes')} is empty")
    return passes


def load_recipe(path: str | Path) -> list[Pass]:
    """A TOML recipe: ``[[pass]]`` tables in order, each with ``name`` and its options.

    ```toml
    [[pass]]
    name = "prune"
    ratio = 0.3
    criterion = "l2"

    [[pass]]
    name = "sparsify"
    ```
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such recipe file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a valid TOML recipe ({exc})") from None
    entries = data.get("pass")
    if not isinstance(entries, list) or not entries:
        found = next((f" (found [[{k}]]: did you mean [[pass]]?)" for k in data if did_you_mean(k, ["pass"])), "")
        raise UsageError(f"{path}: a recipe lists passes as [[pass]] tables with a name{found}")
    return build_all(entries, where=str(path))


def build(entry: Mapping[str, Any] | str | Pass, where: str = "pipeline") -> Pass:
    """A pass from a name (with options: ``"prune:ratio=0.3"``), a ``{"name": ..., **options}``
    mapping, or a Pass (returned as is)."""
    if isinstance(entry, Pass):
        return entry
    if isinstance(entry, str):
        passes = parse_pipeline(entry)
        if len(passes) > 1:
            raise UsageError(f"{where}: {entry!r} names {len(passes)} passes, expected one")
        return passes[0]
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise UsageError(f"{where}: each pass needs a name")
    options = {k: v for k, v in entry.items() if k != "name"}
    return get(str(entry["name"]))(**options)


def build_all(entries: Sequence[Mapping[str, Any] | str | Pass] | str | None, where: str = "pipeline") -> list[Pass]:
    """The pipeline: a CLI-style string, or a list whose strings may each hold several passes
    (``["prune:ratio=0.3,sparsify", "cleanup"]``). None is :data:`DEFAULT_PIPELINE`."""
    if entries is None:
        return [get(name)() for name in DEFAULT_PIPELINE]
    if isinstance(entries, str):
        return parse_pipeline(entries)
    if not isinstance(entries, Sequence):
        raise UsageError(f"{where}: passes are a string or a list of passes, got {type(entries).__name__}")
    return [p for e in entries for p in (parse_pipeline(e) if isinstance(e, str) else [build(e, where)])]
