"""The exceptions b2cal raises for problems a user can fix.

Anything raised as :class:`B2CalError` is shown to the user as a one-line message (no
traceback) by the command line; everything else is a bug and is logged in full.
"""


class B2CalError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class BadInputFile(B2CalError):
    """An input data file that cannot be used (corrupt, truncated, missing branches)."""
