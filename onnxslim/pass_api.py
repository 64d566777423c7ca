"""The pass contract: what a pass declares, what it receives, what it returns.

A pass is a small class with a name, a one-line summary, a lossless flag and a typed
``Options`` dataclass. ``run(model, ctx)`` changes the ``onnx_ir.Model`` in place and returns a
``PassResult`` saying whether anything changed. Passes never mutate tensor data in place (they
put new tensors in ``Value.const_value`` or node attributes): the pass manager's rollback
snapshot shares tensors with the model and relies on that.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal

import onnx_ir as ir

from .errors import UsageError, did_you_mean

if typing.TYPE_CHECKING:  # pragma: no cover
    from .calibration import Calibration


@dataclasses.dataclass
class PassResult:
    """What a pass did. ``modified`` False means the model is exactly as it was."""

    modified: bool
    summary: str = ""
    #: Machine-readable facts for the report (channels removed, bytes saved, ...).
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Human-readable remarks (e.g. why a group was frozen), shown in the report.
    notes: list[str] = dataclasses.field(default_factory=list)


class Progress(typing.Protocol):
    def __call__(self, items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]: ...


def _no_progress(items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    yield from items


@dataclasses.dataclass
class PassContext:
    """What the pass manager hands to every pass besides the model."""

    #: Calibration samples and the means to capture intermediate tensors; None if not given.
    calibration: Calibration | None = None
    #: Wrap a per-layer loop to show progress: ``for node in ctx.progress(nodes, "layers")``.
    progress: Progress = _no_progress
    #: Seed for passes with randomness (``random`` criteria).
    seed: int = 0
    #: Concrete input shapes the model is validated at (``--input-shape`` or the validation
    #: data's); passes that predict MACs use them. Empty when unknown.
    input_shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    #: The validation samples (held out from calibration) the run is judged on, the original
    #: model's outputs on them (None without validation), and the run's accuracy budget
    #: (:class:`onnxslim.budget.Budget`): for passes that search within the budget.
    validation: list = dataclasses.field(default_factory=list)
    reference: list | None = None
    budget: Any = None
    #: One validation sample (None when there is none): shapes that inference cannot resolve are
    #: measured on it, as the report's statistics measure them, so predicted MACs count the same.
    sample: dict[str, Any] | None = None
    #: onnx shape inference (an ``onnx.ModelProto``: strict, data propagation, at the declared
    #: shapes) of the model exactly as handed to the pass, when the manager has it; else None.
    inferred: Any = None
    #: The validation samples (held out from calibration) the run is judged on, the original
    #: model's outputs on them (None without validation), and the run's accuracy budget
    #: (:class:`onnxslim.budget.Budget`): for passes that search within the budget.
    validation: list = dataclasses.field(default_factory=list)
    reference: list | None = None
    budget: Any = None


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool]

    @dataclasses.dataclass
    class Options:
        pass

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ``class Options(Pass.Options)`` need not repeat @dataclass: apply it once here.
        if "Options" in cls.__dict__ and "__dataclass_fields__" not in cls.Options.__dict__:
            cls.Options = dataclasses.dataclass(cls.Options)

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        if options is None:
            options = _build_options(type(self), kwargs)
        elif kwargs:
            options = dataclasses.replace(options, **kwargs)
        if not isinstance(options, self.Options):
            raise UsageError(f"pass {self.name!r}: options must be {self.Options.__qualname__}")
        self.options = options
        self.validate_options()

    def validate_options(self) -> None:
        """Raise ``UsageError`` for option values that are well-typed but out of range."""

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> Pass:
        """Build the pass from ``key=value`` strings (the CLI's ``name:key=value`` form)."""
        hints = _option_hints(cls)
        typed = {}
        for key, text in values.items():
            if key not in hints:
                raise UsageError(_unknown_option(cls, key))
            typed[key] = parse_value(text, hints[key], f"{cls.name}:{key}")
        return cls(**typed)

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        hints = _option_hints(cls)
        specs = []
        for field in dataclasses.fields(cls.Options):
            default = field.default
            if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            specs.append(OptionSpec(field.name, type_name(hints[field.name]), default, field.metadata.get("help", "")))
        return specs


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    name: str
    type: str
    default: Any
    help: str


def option(default: Any, help: str) -> Any:
    """Declare an option field with a default and a one-line help text."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _option_hints(cls: type[Pass]) -> dict[str, Any]:
    return typing.get_type_hints(cls.Options)


def _unknown_option(cls: type[Pass], key: str) -> str:
    names = [f.name for f in dataclasses.fields(cls.Options)]
    return f"pass {cls.name!r} has no option {key!r}{did_you_mean(key, names)} (options: {', '.join(names) or 'none'})"


def _build_options(cls: type[Pass], kwargs: dict[str, Any]) -> Any:
    hints = _option_hints(cls)
    for key, value in kwargs.items():
        if key not in hints:
            raise UsageError(_unknown_option(cls, key))
        kwargs[key] = coerce_value(value, hints[key], f"{cls.name}:{key}")
    return cls.Options(**kwargs)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"map {type_name(k)}->{type_name(v)}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, tp: Any, where: str) -> Any:
    """Parse a command-line string into the declared type (lists use '|', maps 'k=v|k=v')."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg, where)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[-1] if errors else f"{where}: bad value {text!r}")
    if origin in (list, tuple):
        items = [t for t in text.split("|") if t != ""]
        return [parse_value(t, args[0], where) for t in items]
    if origin is dict:
        result = {}
        for item in filter(None, text.split("|")):
            key, sep, val = item.rpartition("=")
            if not sep:
                raise UsageError(f"{where}: expected key=value entries separated by '|', got {item!r}")
            result[parse_value(key, args[0], where)] = parse_value(val, args[1], where)
        return result
    return coerce_value(text, tp, where)


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Check (and convert where unambiguous) a Python value against the declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, where)
            except UsageError:
                continue
        raise UsageError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            hint = did_you_mean(value, map(str, args)) if isinstance(value, str) else ""
            raise UsageError(f"{where}: expected one of {', '.join(map(str, args))}, got {value!r}{hint}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            return parse_value(value, tp, where)
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        return [coerce_value(v, args[0], where) for v in value]
    if origin is dict:
        if isinstance(value, str):
            return parse_value(value, tp, where)
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return {coerce_value(k, args[0], where): coerce_value(v, args[1], where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    return value
