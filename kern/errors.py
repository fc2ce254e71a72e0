"""The one exception type for problems with what the user gave us."""


class KernError(Exception):
    """Bad input or an unavailable resource, worded as one line for the user.

    Command-line tools print the message and exit with status 2; no traceback.
    """
