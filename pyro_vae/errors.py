"""The one exception the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a name, a file, a size. Its message is the whole story."""
