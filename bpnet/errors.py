"""The one exception type a user sees.

Every bad input (file, spec field, option value) raises `BpnetError` with a message that names the
file or field, the value and what is allowed. The CLI prints it without a traceback and exits 2;
the worker stores it as the stage's readable error.
"""


class BpnetError(Exception):
    """A problem with the user's input or environment, explained in plain words."""


class RunCancelled(Exception):
    """Raised by a progress callback to stop a long-running verb at its next step."""
