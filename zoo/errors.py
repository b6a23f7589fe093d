"""The one exception type that command-line tools report as a single line."""


class ZooError(Exception):
    """Bad input from the user (a file, a flag, a workdir); its message is one line naming it."""
