"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """A mistake in a user's input (a file, a flag, a folder). The CLI prints its message as
    one line and exits non-zero instead of showing a traceback."""
