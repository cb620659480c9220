"""``rtautoplan train NAME [--field value …]``: the command line of every trainer, read off its ``Args``.

Each trainer module (``policies.TRAINERS``) has an ``Args`` dataclass, documented field by field,
and ``train(args)``; the command offers one ``--field-name`` option per field with the field's
default, so no option list is written twice. The defaults are the committed runs' except the phantom
population (and SARSA's goals): new runs draw the calibrated "v2" population (issue 16); the README's
commands add ``--population v1`` (``--goals paper``) to reproduce the committed weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing
from pathlib import Path


def _parse_optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _option(field: dataclasses.Field, hint) -> dict:
    """argparse keywords for one Args field (bool flags, tuples, optional floats, plain scalars)."""
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction, "default": default}
    if origin is tuple:
        return {"nargs": "+", "type": args[0], "default": default, "metavar": args[0].__name__.upper()}
    if type(None) in args:  # X | None
        inner = next(a for a in args if a is not type(None))
        return {"type": _parse_optional_float if inner is float else inner, "default": default}
    return {"type": hint, "default": default}


def parser_for(args_class, prog: str) -> argparse.ArgumentParser:
    """An argument parser with one option per field of the dataclass ``args_class``."""
    parser = argparse.ArgumentParser(prog=prog, description=(args_class.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(args_class)
    for field in dataclasses.fields(args_class):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, **_option(field, hints[field.name]))
    return parser


def parse(args_class, argv: list[str], prog: str):
    """``args_class`` filled from ``argv`` (tuples converted back from argparse's lists)."""
    namespace = vars(parser_for(args_class, prog).parse_args(argv))
    hints = typing.get_type_hints(args_class)
    values = {k: tuple(v) if typing.get_origin(hints[k]) is tuple and v is not None else v for k, v in namespace.items()}
    return args_class(**values)


def run(name: str, argv: list[str]):
    """Train the planner ``name`` with options ``argv``; returns its training record."""
    from rtautoplan.policies import TRAINERS

    if name not in TRAINERS:
        raise ValueError(f"no trainer {name!r}; available: {sorted(TRAINERS)}")
    module = importlib.import_module(TRAINERS[name])
    return module.train(parse(module.Args, argv, f"rtautoplan train {name}"))


def jsonable(d: dict) -> dict:
    """A training record's dict: tuples as lists, paths inside the repository relative to it (a committed
    record names no machine)."""
    root = str(Path(__file__).resolve().parents[1]) + "/"
    return {k: list(v) if isinstance(v, tuple) else v.removeprefix(root) if isinstance(v, str) else v
            for k, v in d.items()}
