"""One exception type for every failure a user should read as a single clear line."""


class RemusError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits non-zero."""
