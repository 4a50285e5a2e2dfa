"""Command-line options generated from a dataclass, and the parser and help formatter of every script.

    parser = ArgumentParser(prog="finetune.py", description="...")
    add_dataclass_options(parser, TrainConfig)      # one --field-name per field
    config = TrainConfig(**vars(parser.parse_args()))

Each field declares its option in its metadata: "help" and "group" (required),
"choices", "metavar", "default_text" (what "(default: ...)" says instead of
the value, e.g. for None), "repeat" (a list option given once per value, ``--gguf a --gguf b``,
instead of ``--x a b``) and "range" (a ``RANGES`` key, for ``check_ranges``). The type comes
from the annotation: int, float, str, Path, ``X | None``, ``list[X]`` or ``tuple[X, ...]``
(nargs="+"), bool (``--flag/--no-flag``); a field without a default is a required option.
Validation stays in the dataclass's ``__post_init__``, worded by ``check_range`` (the one wording
of every script's range errors: ``--max-new-tokens must be a positive integer, got 0``).

A config takes another dataclass's fields as its own with ``include_fields`` and gets that
dataclass back with ``included``: evaluate.py's and make_preferences.py's sampling options are
``SamplingSettings``' fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

HELP, GROUP, CHOICES, METAVAR, DEFAULT_TEXT, REPEAT = "help", "group", "choices", "metavar", "default_text", "repeat"
RANGE = "range"
_SCALARS = (int, float, str, Path)
T = TypeVar("T")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What a value of each range must be: check_range's ``kind``.
RANGES = {
    "positive integer": lambda v: _is_int(v) and v >= 1,
    "non-negative integer": lambda v: _is_int(v) and v >= 0,
    "positive number": lambda v: _is_number(v) and v > 0,
    "non-negative number": lambda v: _is_number(v) and v >= 0,
    "number in (0, 1]": lambda v: _is_number(v) and 0 < v <= 1,
    # Bounds read as they are ("must be at least 1"): app.py's counts and port.
    "at least 1": lambda v: _is_int(v) and v >= 1,
    "from 1 to 65535": lambda v: _is_int(v) and 1 <= v <= 65535,
}


def check_range(option: str, value: Any, kind: str, *, none_ok: bool = False) -> None:
    """A one-line ``ValueError`` "``option`` must be a ``kind``, got ``value``" unless ``value`` is one.

    ``option`` is named as the user typed it (``--max-new-tokens``; ``option_name`` of a field);
    ``kind`` is a key of ``RANGES`` (a bound, "at least 1", takes no article); ``none_ok``: None
    (an option's "off") is accepted.
    """
    if value is None and none_ok:
        return
    if not RANGES[kind](value):
        article = "" if kind.split()[0] in ("at", "from") else "a "
        raise ValueError(f"{option} must be {article}{kind}, got {value!r}")


def check_ranges(config: Any) -> None:
    """``check_range`` for every field of the dataclass instance ``config`` whose metadata has a "range",
    named as its option (``--top-p``); a field whose default is None accepts None (its "off")."""
    for f in dataclasses.fields(config):
        if RANGE in f.metadata:
            check_range(option_name(f.name), getattr(config, f.name), f.metadata[RANGE], none_ok=f.default is None)


def option_name(field_name: str) -> str:
    """The command-line option of a dataclass field: ``max_steps`` -> ``--max-steps``."""
    return "--" + field_name.replace("_", "-")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wrapped option help ending in "(default: X)", the same way in every script.

    The description keeps its own line breaks (the scripts' docstrings show
    commands). A help that already says "(default: ...)" is left as it is; an
    option whose default is None (or an empty list) or a plain on/off flag (``store_true``) shows none.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "(default:" in help_ or action.default is argparse.SUPPRESS:
            return help_
        text = getattr(action, DEFAULT_TEXT, None)
        if text is None:
            if action.default in (None, [], ()) or isinstance(
                action, (argparse._StoreTrueAction, argparse._StoreFalseAction)
            ):
                return help_
            text = "%(default)s"
        return f"{help_} (default: {text})"


class ArgumentParser(argparse.ArgumentParser):
    """The scripts' parser: one-line errors, no abbreviations, and a suggestion for an unknown option.

    ``--max-step 3`` is an error (``allow_abbrev=False``): an abbreviation would
    silently change meaning the day an option with a longer name is added.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the project's convention for bad input (exit status 2).
        self.exit(2, f"error: {message}\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized_message(extras))
        return namespace

    def unrecognized_message(self, extras: Sequence[str]) -> str:
        """ "unrecognized argument --maxsteps; did you mean --max-steps? (see --help)".

        Names the unknown options (their values would only add noise), or the
        stray words when no option is unknown.
        """
        unknown = [e.split("=", 1)[0] for e in extras if e.startswith("-")] or list(extras)
        message = f"unrecognized argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}"
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6) if unknown[0][:1] == "-" else []
        if close:
            message += f"; did you mean {close[0]}?"
        return message + " (see --help)"


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls``, in field order, under each field's group."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if HELP not in f.metadata or GROUP not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} needs 'help' and 'group' in its field metadata")
        group = f.metadata[GROUP]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        action = groups[group].add_argument(option_name(f.name), **_argument_kwargs(f, hints[f.name]))
        setattr(action, DEFAULT_TEXT, _default_text(f, action.default))


def _argument_kwargs(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """add_argument's keywords for the field ``f`` annotated ``hint``."""
    meta = f.metadata
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kwargs: dict[str, Any] = {"help": meta[HELP].replace("%", "%%")}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    if METAVAR in meta:
        kwargs["metavar"] = meta[METAVAR]
    if CHOICES in meta:
        kwargs["choices"] = tuple(meta[CHOICES])
    base = strip_none(hint)
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif meta.get(REPEAT) and typing.get_origin(base) is list and typing.get_args(base)[0] in _SCALARS:
        kwargs.update(action="append", type=typing.get_args(base)[0])  # argparse appends to a copy of the default
    elif typing.get_origin(base) in (list, tuple) and typing.get_args(base)[0] in _SCALARS:  # list[X], tuple[X, ...]
        kwargs.update(nargs="+", type=typing.get_args(base)[0])
    elif base in _SCALARS:
        kwargs["type"] = base
    else:
        raise TypeError(f"{f.name}: no command-line option for the type {hint!r}")
    return kwargs


def strip_none(hint: Any) -> Any:
    """``X | None`` (or ``Optional[X]``) -> ``X``; any other annotation as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default_text(f: dataclasses.Field, default: Any) -> str | None:
    """What "(default: ...)" says: the field's "default_text", else its default (a list space-separated)."""
    text = f.metadata.get(DEFAULT_TEXT)
    if text is None and isinstance(default, (list, tuple)):
        text = " ".join(map(str, default)) or None  # an empty list: nothing, as for None
    elif text is None and default is not None:
        text = str(default)
    return None if text is None else text.replace("%", "%%")


def include_fields(source: type, *, group: str, after: str) -> Callable[[type], type]:
    """A class decorator, under ``@dataclass``: every field of the dataclass ``source`` becomes a field of
    the class (and so an option), placed after its field ``after``, in ``group``.

        @dataclass
        @include_fields(SamplingSettings, group=GENERATION, after="limit")
        class EvalConfig: ...

    Type, default and metadata (help, range...) are ``source``'s: a field added there is an option of
    every config that includes it. ``included(source, config)`` builds the ``source`` they fill.
    """

    def include(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        if after not in own:
            raise TypeError(f"{cls.__name__} has no field {after!r} to put the fields of {source.__name__} after")
        hints = typing.get_type_hints(source)
        added = {}
        for f in dataclasses.fields(source):
            if f.name in own:
                raise TypeError(f"{cls.__name__}.{f.name} is also a field of {source.__name__}")
            added[f.name] = hints[f.name]
            default = (
                {"default_factory": f.default_factory}
                if f.default_factory is not dataclasses.MISSING
                else {"default": f.default}
            )
            setattr(cls, f.name, dataclasses.field(**default, metadata={**f.metadata, GROUP: group}))
        names = list(own)
        at = names.index(after) + 1
        cls.__annotations__ = {**{n: own[n] for n in names[:at]}, **added, **{n: own[n] for n in names[at:]}}
        return cls

    return include


def included(source: type[T], config: Any) -> T:
    """The ``source`` that the fields ``include_fields(source, ...)`` put into ``config`` hold."""
    return source(**{f.name: getattr(config, f.name) for f in dataclasses.fields(source)})
