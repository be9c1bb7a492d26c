"""Errors a user can cause and fix. The CLI prints these as one line; anything else is a bug."""


class FlorenceVLError(Exception):
    """Base class for mistakes in the user's input: a missing file, an unknown task, a bad checkpoint."""


class InputError(FlorenceVLError, ValueError):
    """A bad argument: unknown task, missing task input, unreadable image, malformed region."""


class CheckpointError(FlorenceVLError):
    """A checkpoint that cannot be loaded as asked: missing files, wrong shapes, unknown keys."""
