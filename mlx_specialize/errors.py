"""The one exception type users see.

Anything raised as `SpecializeError` is a problem with the user's input or
environment (missing file, empty corpus, corrupt checkpoint, ...). The command line
prints its message as one line and exits with status 2, never a traceback.
"""


class SpecializeError(Exception):
    """A user-facing error whose message is one complete sentence."""


class Interrupted(SpecializeError):
    """Ctrl-C during a job, after what it had done was saved: the command line exits 130
    (the shell's code for an interrupt), not 2, since the input was not at fault. A
    training says where it stopped (`step`, `run_dir`)."""

    def __init__(self, message: str, step: int | None = None, run_dir=None):
        super().__init__(message)
        self.step, self.run_dir = step, run_dir


def check_choice(option: str, value, allowed) -> None:
    """Refuse, naming the option, a value outside `allowed` (None: the option was not
    given): `--sampler: 'topk' is not one of cluster, gumbel`."""
    if value is not None and value not in allowed:
        raise SpecializeError(f"{option}: '{value}' is not one of {', '.join(map(str, allowed))}")
