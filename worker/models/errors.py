"""The one exception type model loading raises for expected failures."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model could not be resolved, converted or loaded.

    The message is one human-readable line meant for the user (the worker prints
    it instead of a traceback): what went wrong and, where possible, what to do.
    """

    def __init__(self, message: str) -> None:
        # Keep it to one line even when a wrapped library error spans several.
        super().__init__(" ".join(str(message).split()))
