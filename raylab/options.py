"""Command-line options derived from the typed configs, so every default and help text lives in one place.

A config field declared with :func:`raylab.config.option` becomes ``--field-name`` (or its ``flag``); its type
gives argparse's: ``bool`` a switch, ``int``/``float``/``str``/``Path`` a value, ``X | None`` an optional value,
``tuple[X, ...]`` one or more values, ``dict`` a JSON object. Fields declared without a help text are not options.
:func:`build` turns the parsed namespace back into the config, which validates itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _word_type(tp: Any) -> Any:
    """The argparse ``type`` for one word of a field of type ``tp``."""
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        return str
    if tp in (int, float, str, Path):
        return tp
    if tp is dict or typing.get_origin(tp) is dict:
        return _json_object
    return str


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, skip: Iterable[str] = (),
                only: Iterable[str] | None = None, title: str | None = None) -> None:
    """Add ``cls``'s options to ``parser`` (in an argument group named ``title`` when given)."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(title) if title else parser
    skipped, wanted = set(skip), None if only is None else set(only)
    fields = cli_fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for f in required + [f for f in fields if f not in required]:  # what a run needs first, then its settings
        if f.name in skipped or (wanted is not None and f.name not in wanted):
            continue
        tp = hints[f.name]
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"]}
        if _unwrap_optional(tp) is bool:
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kw["default"] = bool(default)
        else:
            inner = _unwrap_optional(tp)
            many = typing.get_origin(inner) is tuple
            word = typing.get_args(inner)[0] if many else tp
            kw["type"] = f.metadata.get("parse") or _word_type(word)
            if many:
                kw["nargs"] = "+"
            if f.metadata.get("choices"):
                kw["choices"] = list(f.metadata["choices"])
            else:
                kw["metavar"] = flag_of(f).lstrip("-").replace("-", "_").upper()
            if has_default:
                kw["default"] = list(default) if many and default is not None else default
                if default not in (None, (), {}):
                    shown = " ".join(map(str, default)) if many else default
                    kw["help"] += f" (default {shown})"
            else:
                kw["required"] = True
        target.add_argument(flag_of(f), **kw)


def build(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """``cls`` from the parsed options it declares (lists become tuples), plus ``fixed`` values."""
    values: dict[str, Any] = {}
    for f in cli_fields(cls):
        if f.name in fixed or not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values, **fixed)  # type: ignore[call-arg]
