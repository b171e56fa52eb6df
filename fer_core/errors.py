"""The one error type users see from the library.

Every bad input (file, key, value) raises `FerError` with a one-line message that names the
culprit and says what to do; the CLI turns it into `error: ...` and exit status 2.
"""


class FerError(ValueError):
    """A user-facing error: bad input, missing file or invalid configuration."""
