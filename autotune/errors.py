"""Errors a user can cause and fix; the CLI prints them as one line and exits non-zero."""


class AutotuneError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class ModelFileError(AutotuneError):
    """The model file is missing, not a GGUF, truncated, or of an unsupported kind."""
