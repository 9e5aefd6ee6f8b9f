"""The one exception type meant for users, in a module that imports nothing heavy: the CLI can
then catch Ctrl-C and errors while torch and pandas are still being imported."""


class CtrkitError(Exception):
    """A user-facing error: the CLI prints it as one line and exits with 2."""
