"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt file, a diverging run) raises a
:class:`GenlabError` whose message says what was wrong, with which input, and what to do.
The CLI prints the message without a traceback; the Python API lets it propagate.
"""


class GenlabError(Exception):
    """An error caused by the user's input or environment, with a message meant for them."""


class DataError(GenlabError, ValueError):
    """A dataset could not be found, read or validated."""


class RunError(GenlabError):
    """A run folder, checkpoint or training run is unusable (missing, corrupt, diverged)."""
