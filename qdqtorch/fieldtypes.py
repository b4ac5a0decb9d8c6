"""Strict type checks of plain data (a YAML/JSON config) against a dataclass's field annotations.

Why: YAML gives `export: "no"` as a non-empty string (truthy), `batch: 16.5` as a float and `imgsz: "256px"` as a
string; without a check they are silently misread or fail deep inside torch with no file or field named.
"""
from __future__ import annotations

import collections.abc as cabc
import dataclasses
import typing
from typing import Any, Mapping

from .errors import UsageError

_NONE = type(None)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        parts = [_describe(a) for a in args if a is not _NONE]
        return " or ".join(parts) + (" or null" if _NONE in args else "")
    if origin in (list, cabc.Sequence):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin in (dict, cabc.Mapping):
        return "a mapping"
    if origin is cabc.Callable:
        return "a callable"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(
        tp, f"a {getattr(tp, '__name__', tp)}")


def matches(value: Any, tp: Any) -> bool:
    """Whether `value` (plain data) fits annotation `tp`: bools are not ints, ints are numbers, a string stands for
    a one-item list of strings, a mapping for a dataclass; unknown annotations accept anything."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return any(matches(value, a) for a in args)
    if tp is _NONE:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, cabc.Sequence):
        if args and args[0] is str and isinstance(value, str):
            return True
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin in (dict, cabc.Mapping):
        return isinstance(value, cabc.Mapping) and (not args or all(
            matches(k, args[0]) and matches(v, args[1]) for k, v in value.items()))
    if origin is cabc.Callable:
        return callable(value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, cabc.Mapping))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_field_types(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise UsageError naming `where` (the file), the field and the expected type for the first value of `data`
    that does not fit `cls`'s field annotation; keys that are not fields are left to the caller."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name in hints and not matches(value, hints[name]):
            raise UsageError(f"{where}: `{name}` must be {_describe(hints[name])}, got {value!r} "
                             f"({type(value).__name__})")
