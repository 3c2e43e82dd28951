"""The exceptions the CLI turns into a one-line message and a non-zero exit, and the checks of
single values that every layer shares (layer 0: imports nothing of the package)."""

import math
import os


class UserError(Exception):
    """Bad input from the user: a name, a file, a size. Its message is the whole story."""


class BadValue(UserError, ValueError):
    """An argument of the right type with a value that cannot be used (a `ValueError` too)."""


class BadType(UserError, TypeError):
    """An argument of the wrong type (a `TypeError` too)."""


class Diverged(UserError):
    """The loss became NaN or infinite during training (exit status 2, like any UserError)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which checkpoint was kept (exit status 130)."""

    status = 130


class Terminated(Interrupted):
    """SIGTERM during training (a scheduler's notice); the message says which checkpoint was kept
    (exit status 143, as for a process ended by SIGTERM)."""

    status = 143


def first_line(error):
    """The first line of an exception's message, or its type's name where it has no message: what a
    one-line report quotes of an error raised deeper down."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def finite(value):
    """math.isfinite, False for an integer too large for a float (10**400) instead of OverflowError."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def one_of(name, value, choices):
    """`value` if it is one of `choices` (names), else a BadValue naming `name` and the choices."""
    if value not in tuple(choices):  # a tuple: an unhashable value is refused, not a TypeError
        raise BadValue(f"{name} is {' or '.join(choices)}, got {value!r}")
    return value


def counted(n, noun):
    """"1 seed", "3 seeds": a count and its noun, for messages and labels."""
    return f"{n} {noun}{'s' * (n != 1)}"


def positive_int(name, value):
    """`value` if it is a whole number above 0, else a BadType or BadValue naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadType(f"{name} must be a positive whole number, got {value!r}")
    if value <= 0:
        raise BadValue(f"{name} must be a positive whole number, got {value!r}")
    if value >= 1 << 62:
        raise BadValue(f"{name} must be a positive whole number below 2**62, got {str(value)[:40]}...")
    return value


def positive_number(name, value):
    """`value` if it is a finite number above 0, else a BadType or BadValue naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadType(f"{name} must be a positive finite number, got {value!r}")
    if not finite(value) or value <= 0:
        raise BadValue(f"{name} must be a positive finite number, got {str(value)[:40]}")
    return value


def share_or_count(name, value):
    """`value` if it is a share in (0, 1) or a whole number of at least 1 (a float such as 10000.0
    counts), else a BadType or BadValue naming `name`: e.g. the validation split's size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadType(f"{name} must be a share in (0, 1) or a whole number of examples, got {value!r}")
    if not finite(value) or not value > 0 or (value >= 1 and value != int(value)):
        raise BadValue(f"{name} must be a share in (0, 1) or a whole number of examples, got {value!r}")
    return value


def count(name, value):
    """`value` if it is a whole number not below 0 (a number of epochs that may be none), else a
    BadType or BadValue naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadType(f"{name} must be a whole number not below 0, got {value!r}")
    if value < 0:
        raise BadValue(f"{name} must be a whole number not below 0, got {value!r}")
    return value


def cpu_threads(name, value):
    """`value` if it is a whole number from 1 to the CPUs this process may run on (more threads than
    that only wait for each other; 100,000 of them exhaust memory), else a BadType or BadValue."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    positive_int(name, value)
    if value > available:
        raise BadValue(f"{name} must be at most {available}, the CPUs this process may use, got {str(value)[:40]}")
    return value


def machine_memory():
    """This machine's physical memory in bytes, or None where the system does not say (sizes that
    cannot fit in it are refused before they are allocated)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: the allocator decides
        return None


def random_seed(name, value):
    """`value` if it is a whole number in 0..2**32-1 (what torch, NumPy and Pyro all take as a seed),
    else a BadType or BadValue naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadType(f"{name} must be a whole number in 0..2**32-1, got {value!r}")
    if not 0 <= value < 2 ** 32:
        raise BadValue(f"{name} must be a whole number in 0..2**32-1, got {str(value)[:40]}")
    return value


def non_negative_number(name, value):
    """`value` if it is a finite number not below 0, else a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadType(f"{name} must be a finite number not below 0, got {value!r}")
    if not finite(value) or value < 0:
        raise BadValue(f"{name} must be a finite number not below 0, got {str(value)[:40]}")
    return value
