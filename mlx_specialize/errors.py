"""The one exception type users see.

Anything raised as `SpecializeError` is a problem with the user's input or
environment (missing file, empty corpus, corrupt checkpoint, ...). The command line
prints its message as one line and exits with status 2, never a traceback.
"""


class SpecializeError(Exception):
    """A user-facing error whose message is one complete sentence."""


class Interrupted(SpecializeError):
    """Ctrl-C during a job, after what it had done was saved: the command line exits 130
    (the shell's code for an interrupt), not 2, since the input was not at fault."""
