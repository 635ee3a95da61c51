"""The one exception type users see.

Anything raised as `SpecializeError` is a problem with the user's input or
environment (missing file, empty corpus, corrupt checkpoint, ...). The command line
prints its message as one line and exits with status 2, never a traceback.
"""


class SpecializeError(Exception):
    """A user-facing error whose message is one complete sentence."""
