"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""

__all__ = ["UserError"]


class UserError(Exception):
    """A problem with the user's input (a missing folder, a wrong option), not a bug in resnetlab."""
