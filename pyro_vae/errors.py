"""The exceptions the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a name, a file, a size. Its message is the whole story."""


class Diverged(UserError):
    """The loss became NaN or infinite during training (exit status 2, like any UserError)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which checkpoint was kept (exit status 130)."""
