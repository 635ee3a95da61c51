"""How `mlxspec`'s command groups are made and its commands registered, the same way for
each: plain-text help, Click's usage errors and every command's own errors as one
`error:` line (errors.py), and the output options last (options.output_options)."""

from __future__ import annotations

import typer

from .errors import OneLineErrors, handle_errors
from .options import output_options


def command_group(**kwargs) -> typer.Typer:
    """A Typer app (`mlxspec` or one of its sub-commands) with `mlxspec`'s settings."""
    # Plain help (rich_markup_mode=None): option help is text, so "[default: the
    # preset's]" prints its brackets, and a flag shows as a flag (`--json`), not `<bool>`.
    return typer.Typer(cls=OneLineErrors, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False, **kwargs)


def command(group: typer.Typer, name: str | None = None, quiet: bool = True):
    """Register a function as a command of `group` (its name by default): its output
    options last (--json, and --quiet unless `quiet` is False), its errors reported as
    one line (`handle_errors`)."""
    return lambda fn: group.command(name)(handle_errors(output_options(quiet)(fn)))
