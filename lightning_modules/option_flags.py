"""Command-line flags for the options of ``zoo.common.predict``: one flag per field of an options class,
named after it, so that ``rnnzoo generate``, ``translate`` and ``zoo predict`` take what the Python
and HTTP entry points take, with the same defaults (an unset flag leaves the class's default)."""

import argparse
import dataclasses
import sys


class DeprecatedFlag(argparse.Action):
    """An option's old flag: it sets the option and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated: use --{self.dest}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_option_flags(parser: argparse.ArgumentParser, *options: type, old_names: dict[str, str] | None = None) -> None:
    """A flag per field of the ``options`` classes (a field they share, once); ``old_names``: a
    field's earlier flag, still accepted for one release with a warning."""
    old_names = old_names or {}
    defaults: dict[str, list[str]] = {}  # a field -> "Class: default" of each class that has it
    kinds = {}
    for cls in options:
        for field in dataclasses.fields(cls):
            defaults.setdefault(field.name, []).append(f"{cls.__name__} {field.default}")
            kinds[field.name] = field.type
    for name, kind in kinds.items():
        help = f"default: {'; '.join(defaults[name])}"
        if kind is bool:
            parser.add_argument(f"--{name}", action="store_true", default=None, help=help)
            continue
        kind = float if "float" in str(kind) else int
        parser.add_argument(f"--{name}", type=kind, default=None, help=help)
        if name in old_names:
            parser.add_argument(old_names[name], dest=name, type=kind, action=DeprecatedFlag, help=argparse.SUPPRESS)


def given_options(args: argparse.Namespace, *options: type) -> dict:
    """The values the flags of ``add_option_flags`` were given."""
    names = {field.name for cls in options for field in dataclasses.fields(cls)}
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name) is not None}


def options_from_flags(args: argparse.Namespace, options: type):
    """``options`` from the flags; a value it refuses is a ``ValueError`` naming the flag."""
    try:
        return options(**given_options(args, options))
    except ValueError as err:  # "beam_size must be >= 1": name the flag
        message = str(err)
        known = {field.name for field in dataclasses.fields(options)}
        raise ValueError(f"--{message}" if message.split()[0] in known else message) from None
