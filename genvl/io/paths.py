"""What a path names, checked before genvl reads it: a regular file, or else an error that says what is there.

`Path.is_file()` is False for a FIFO, a device, a symlink loop and a file it may not read alike, so "no such file"
would name the wrong problem; and opening a FIFO blocks until something writes to it.
"""

import errno
import os
import stat
from pathlib import Path

KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def kind_of(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for a `st_mode` that is not a regular file's."""
    return next((name for test, name in KINDS.items() if test(mode)), "not a regular file")


def path_status(path) -> os.stat_result:
    """`os.stat(path)` (following symlinks), its errors reworded to name `path` and what is wrong."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(f"{path}: a symlink to {os.readlink(path)}, which does not exist") from None
        raise FileNotFoundError(f"{path}: no such file or folder") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(f"{path}: a symlink loop") from None
        raise type(err)(f"{path}: cannot read it ({err.strerror})") from None


def check_input_file(path, what: str = "file") -> Path:
    """`path` if it is a regular file (or a symlink to one); else an error naming it and what it is instead."""
    mode = path_status(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path}: is a folder; expected {what}")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: is {kind_of(mode)}, not a regular file; expected {what}")
    return Path(path)
