"""How `mlxspec` fails: one plain-text `error:` line on stderr, never a traceback.

Exit codes: 2 for bad input (a `SpecializeError`, a missing file, a usage error of
Click's), 1 for a system failure (a full disk) or a bug, 130 for Ctrl-C, 141 (quietly)
when the reader of stdout has gone. A value echoed
in the line shows its line breaks and terminal escapes as `\\n`, `\\x1b`: one line, always.
"""

from __future__ import annotations

import functools
import os
import re
import sys

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException, MissingParameter, NoArgsIsHelpError
from typer.core import TyperGroup

from mlx_specialize import ui
from mlx_specialize.errors import Interrupted, SpecializeError


class OneLineErrors(TyperGroup):
    """`mlxspec`'s command group. Click's own usage errors (a value out of range, an
    unknown option, a missing argument) come out like every other bad input: one
    `error:` line and exit 2, not Click's multi-line usage box. A command's exit code
    (`typer.Exit`) is the process's."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # the caller handles Click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:  # a bare `mlxspec` or `mlxspec data`: the help, as Click prints it
            err.show()
            sys.exit(err.exit_code)
        except ClickException as err:
            print_error(usage_message(err))
            sys.exit(2)
        except typer.Abort:  # end of input at a prompt
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Typer's own range and type messages, in the words of ours (`--top-k: at least 0`)
TYPER_WORDS = ((re.compile(r"^Input should be greater than or equal to (\S+)$"), r"at least \1"),
               (re.compile(r"^Input should be less than or equal to (\S+)$"), r"at most \1"),
               (re.compile(r"^Input should be greater than (\S+)$"), r"more than \1"),
               (re.compile(r"^Input should be less than (\S+)$"), r"less than \1"),
               (re.compile(r"^Input should be a valid integer.*$"), "not a whole number in digits (1000, not 1e3)"),
               (re.compile(r"^Input should be a valid number.*$"), "not a number"))


def usage_message(err: ClickException) -> str:
    """Click's message as one line, the option first: `--domain-tokens: at least 1, not 0`."""
    param = getattr(err, "param", None)
    if isinstance(err, typer.BadParameter) and not isinstance(err, MissingParameter) and param is not None:
        name = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
        message = " ".join(err.message.split()).rstrip(".")
        for pattern, words in TYPER_WORDS:
            message = pattern.sub(words, message)
        return f"{name}: {message}"
    return " ".join(err.format_message().split())


def handle_errors(fn):
    """Run a command; report user errors as one line (exit 2), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecializeError as err:
            # Raised while handling Ctrl-C (training checkpoints, then says how to resume):
            # still an interruption, exit 130.
            fail(str(err), code=130 if isinstance(err, Interrupted) or isinstance(err.__context__, KeyboardInterrupt) else 2)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
            fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except BrokenPipeError:  # the reader left (`mlxspec plan | head -1`): stop quietly, as `yes | head` does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            raise typer.Exit(141) from None  # 128 + SIGPIPE, what a shell reports for a Unix tool
        except OSError as err:  # a full disk, a lost mount: the system's words and the file, exit 1
            if os.environ.get("MLXSPEC_DEBUG"):
                raise
            fail(f"{err.strerror or err}: {err.filename}" if err.filename else f"{err.strerror or err}", code=1)
        except Exception as err:  # a bug: still one line, traceback on request
            if os.environ.get("MLXSPEC_DEBUG"):
                raise
            from mlx_specialize.runtime import distributed as dist

            if dist.is_peer_lost(err):  # under mlx.launch: another process died
                fail(dist.peer_lost_message(dist.world(), err))
            fail(f"internal error: {type(err).__name__}: {err} (set MLXSPEC_DEBUG=1 for the traceback)", code=1)

    return wrapper


def print_error(message: str) -> None:
    # escaped: a message may hold brackets, e.g. pip install 'mlx-specialize[bf16]'; and a
    # value it echoes may hold a line break or a terminal escape: shown as \n, \x1b, so
    # the error stays one line and the terminal's state is left alone
    ui.console.print(f"[bold red]error:[/bold red] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def one_line(text: str) -> str:
    """`text` with its control characters (line breaks, tabs, escapes) written as Python writes them."""
    return "".join(repr(c)[1:-1] if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in text)


def fail(message: str, code: int = 2):
    """Print `message` as the command's one error line and exit with `code`."""
    print_error(message)
    raise typer.Exit(code)
