"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""

__all__ = ["UserError", "user_message"]


class UserError(Exception):
    """A problem with the user's input (a missing folder, a wrong option), not a bug in resnetlab."""


def user_message(err: UserError) -> str:
    """The one-line message of ``err``. A UserError raised in a DataLoader worker reaches the main process
    re-raised with the worker's traceback in its text ("Caught UserError in DataLoader worker process 0 ...
    Original Traceback ..."); its last line holds the original message."""
    message = str(err)
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(f"{UserError.__name__}: ", 1)[-1]
