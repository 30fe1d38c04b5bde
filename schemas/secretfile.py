"""The one writer of secret files: identity seeds, the master key, NATS seeds and creds.

Each secret used to go through its own ``open`` — an identity seed through the
predictable ``<name>.tmp`` with ``O_TRUNC`` and no ``O_EXCL``/``O_NOFOLLOW``, so
anyone who could write the directory could plant a symlink there and have the
seed written through it into a file of their choosing (or read it from a file
they keep open), issue #10 hole 9e. ``write_secret`` instead:

1. refuses a target that is a symlink (the seed must land where it was asked);
2. creates a temporary file with an unpredictable name in the same directory,
   ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (``fchmod`` too, whatever the
   umask), so nothing planted beforehand is opened or followed;
3. writes everything, ``fsync``s, and moves it into place — ``rename`` (replace)
   or, with ``exclusive=True``, ``link`` (fails if the target exists, so two
   processes creating the same key cannot overwrite each other's); neither
   follows a symlink at the target;
4. ``fsync``s the directory, so the new name survives a crash.

On any failure the temporary file is removed. Errors: ``InsecureKeyFile`` for a
symlinked target, ``FileExistsError`` for an exclusive write to an existing
path, ``OSError`` for the rest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from schemas.errors import InsecureKeyFile

SECRET_MODE = 0o600
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_FLAGS |= getattr(os, "O_CLOEXEC", 0)


def temp_name(target: Path) -> Path:
    """A fresh, unguessable sibling of ``target`` (hidden, so globs skip it)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")


def write_secret(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically, mode 0600; see the module docstring."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _refuse_symlink(target)
    if exclusive and os.path.lexists(target):
        raise FileExistsError(f"{target} exists")
    tmp = temp_name(target)
    fd = os.open(tmp, _FLAGS, SECRET_MODE)
    try:
        try:
            os.fchmod(fd, SECRET_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, target, follow_symlinks=False)  # EEXIST if someone won the race
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def _refuse_symlink(target: Path) -> None:
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise InsecureKeyFile(f"{target} is a symlink; refusing to write a secret through it")


def _fsync_dir(directory: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:  # e.g. a platform without directory fds: the data is already synced
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
