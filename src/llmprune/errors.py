"""The one exception type users see: a clear one-line message, no traceback."""


class LLMPruneError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""
