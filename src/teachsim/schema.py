"""Declarative parameter checks for config tables and plugin parameters.

A plugin (task, protocol, method, strategy) declares ``PARAMS = {"name": Param(...)}``;
:func:`resolve` checks a user table against it once, before any work starts, fills
defaults, and names the field, what was expected and what came on any problem.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One parameter: its default, a test, and the words for what it accepts."""

    default: Any
    expect: str
    ok: Callable[[Any], bool]
    doc: str = ""
    convert: Callable[[Any], Any] = lambda v: v
    late: bool = False   # valid values depend on what is registered: checked when used, not when declared


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _within(v: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def Int(default: int, lo: int | None = None, hi: int | None = None, doc: str = "") -> Param:
    """An integer, optionally bounded (inclusive)."""
    return Param(default, f"an integer{_bounds(lo, hi)}",
                 lambda v: _is_int(v) and _within(v, lo, hi), doc)


def Float(default: float, lo: float | None = None, hi: float | None = None, doc: str = "",
          above: float | None = None) -> Param:
    """A finite number, optionally bounded (``lo``, ``hi`` inclusive; ``above``: strictly
    greater than); integers are accepted."""
    if above is not None:
        if lo is not None:
            raise ValueError("Float takes lo or above, not both")
        return Param(default, f"a number > {above}" + (f" and <= {hi}" if hi is not None else ""),
                     lambda v: _is_num(v) and v > above and _within(v, None, hi), doc, float)
    return Param(default, f"a number{_bounds(lo, hi)}",
                 lambda v: _is_num(v) and _within(v, lo, hi), doc, float)


def Bool(default: bool, doc: str = "") -> Param:
    """true or false."""
    return Param(default, "true or false", lambda v: isinstance(v, bool), doc)


def Str(default: str, doc: str = "") -> Param:
    """Any non-empty string."""
    return Param(default, "a non-empty string", lambda v: isinstance(v, str) and v != "", doc)


def Choice(default: str, options: tuple[str, ...] | list[str], doc: str = "") -> Param:
    """One of a fixed set of strings."""
    opts = tuple(options)
    return Param(default, "one of " + ", ".join(repr(o) for o in opts),
                 lambda v: isinstance(v, str) and v in opts, doc)


def Table(doc: str = "") -> Param:
    """A table (dict) of settings, checked by whoever uses it; default empty."""
    return Param({}, "a table of settings", lambda v: isinstance(v, dict), doc, dict)


def IntList(default: list[int], lo: int | None = None, doc: str = "", empty: bool = True) -> Param:
    """A list of integers, each optionally bounded below."""
    what = f"a {'' if empty else 'non-empty '}list of integers{_bounds(lo, None)}"
    return Param(list(default), what,
                 lambda v: isinstance(v, list) and (empty or len(v) > 0)
                 and all(_is_int(x) and _within(x, lo, None) for x in v), doc, list)


def StrList(default: list[str], options: tuple[str, ...] | None = None, doc: str = "") -> Param:
    """A non-empty list of strings, optionally each from a fixed set."""
    what = "a non-empty list of strings"
    if options is not None:
        what += " from " + ", ".join(repr(o) for o in options)
    return Param(list(default), what,
                 lambda v: isinstance(v, list) and len(v) > 0 and all(
                     isinstance(x, str) and (options is None or x in options) for x in v),
                 doc, list)


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(where: str, key: str, known: list[str] | tuple[str, ...]) -> ConfigError:
    """The error for a key that no schema declares."""
    field = f"{where}.{key}" if where else key
    listing = ", ".join(sorted(known)) or "none"
    return ConfigError(field, f"unknown key{suggest(key, known)}; known keys: {listing}")


def resolve(schema: Mapping[str, Param], given: Mapping[str, Any], where: str,
            ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``given`` against ``schema`` and return it with defaults filled in.

    Keys in ``ignore`` are passed through unchecked (the caller owns them).

    Raises:
        ConfigError: for the first unknown key or bad value, naming its dotted path.

    Example:
        >>> resolve({"dim": Int(50, lo=1)}, {}, "task")
        {'dim': 50}
        >>> resolve({"dim": Int(50, lo=1)}, {"dimm": 3}, "task")
        Traceback (most recent call last):
        ...
        teachsim.errors.ConfigError: task.dimm: unknown key (did you mean 'dim'?); known keys: dim
    """
    for key in given:
        if key not in schema and key not in ignore:
            raise unknown_key(where, key, list(schema))
    out: dict[str, Any] = {}
    for key, param in schema.items():
        if key not in given:
            out[key] = param.default
            continue
        value = given[key]
        if not param.ok(value):
            raise ConfigError.expected(f"{where}.{key}" if where else key, param.expect, value)
        out[key] = param.convert(value)
    for key in ignore:
        if key in given:
            out[key] = given[key]
    return out
