"""Helpers the tests share: what a folder holds, by content, to assert that nothing changed."""

import hashlib
import os
from pathlib import Path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hashes(folder, skip=()):
    """sha256 of every file below `folder` (a link as its target's name, not followed), by path
    relative to `folder`, except those in `skip`."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if name in skip:
            continue
        if p.is_symlink():
            out[name] = "link:" + os.readlink(p)
        elif p.is_file():
            out[name] = sha256(p)
    return out
