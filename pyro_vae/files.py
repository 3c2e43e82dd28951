"""Writing files so that none is ever half-written or written through a link (layer 0, beside
errors: every layer that writes a file uses it).

`atomic_write` writes to a temporary file beside the target, flushes it to disk and renames it
into place: a killed process leaves the previous complete version, and a symlink at the target
is replaced, not followed. The new file gets the permissions the file it replaces had, and a new
one those the process's umask gives (as `open` would: 0644 under the usual umask 022), not the
temporary file's private 0600. Temporary files carry a name no user file has
(`.pyro-vae-tmp.<target>.<random>`), so cleaning up after a killed process never touches
anything else. Every failure to write (a full disk, a read-only or missing folder, a directory
where the file should be, no permission) is a one-line `UserError` naming the path.
"""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import UserError

TEMP_PREFIX = ".pyro-vae-tmp."


def atomic_write(path, write):
    """Call write(binary file object) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch's zip writer reports a full disk as RuntimeError
            raise write_error(path, e) from None
        raise


def file_mode(path):
    """The permission bits a file written at `path` gets: those of the file already there (a
    symlink is replaced, not followed: the umask's then), else what the umask leaves of 0666."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~current_umask()


def current_umask():
    """The process's umask, read without changing it where Linux says it (/proc/self/status), else
    set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path, error):
    """The UserError for a failed write of `path`, in words a user can act on."""
    return UserError(f"cannot write {path}: {write_reason(error)}")


def write_reason(error):
    """Why a write failed (an OSError, or torch's RuntimeError for a full disk), in a few words."""
    code = getattr(error, "errno", None)
    text = str(error)
    if code == errno.ENOSPC or "No space left" in text or "file write failed" in text:
        why = "the disk is full"
    elif code == errno.EROFS:
        why = "the file system is read-only"
    elif code in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    elif code == errno.ENOENT:
        failed = getattr(error, "filename", None)  # what the system call was given
        folder = Path(failed).parent if isinstance(failed, (str, os.PathLike)) else None
        why = (f"its folder {folder} takes no new files" if folder is not None and folder.is_dir()  # e.g. /proc
               else "its folder does not exist")
    elif code == errno.EEXIST:  # a folder asked for where a file is
        why = "a file of that name is in the way of the folder"
    elif code in (errno.EISDIR, errno.ENOTDIR):
        why = "a directory and a file are in each other's way"
    else:
        why = getattr(error, "strerror", None) or (text.strip().splitlines() or [type(error).__name__])[0]
    return why


def write_json(path, obj):
    """`obj` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def is_temporary(path):
    """Whether `path` is a temporary file this package made (and may delete)."""
    return Path(path).name.startswith(TEMP_PREFIX)


def check_writable(folder):
    """Refuse, before any long work, a folder that cannot take a new file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}probe.")
    except OSError as e:
        raise write_error(Path(folder) / "*", e) from None
    os.close(fd)
    os.unlink(tmp)


def cache_dir():
    """The per-user cache of this package: downloaded data sets, reference classifiers, the CLI's facts."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro-vae"
