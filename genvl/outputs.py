"""Output files are written whole or not at all: to `<name>.tmp` beside them, then renamed into place."""

import os
from contextlib import contextmanager
from pathlib import Path


def check_output_file(path, flag: str) -> Path:
    """Refuse, before any work is done, an output file that could not be written: `flag` names it in the error."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder; expected a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {path.parent}")
    return path


def cannot_write(err: OSError, where: str) -> OSError:
    """`err` (of the same type) reworded to name `where` rather than a temporary file."""
    return type(err)(f"{where}: cannot write it ({err.strerror or err})")


def temporary_name(path, suffix: str = ".tmp") -> Path:
    path = Path(path)
    return path.with_name(path.name + suffix)


@contextmanager
def written_atomically(path, flag: str | None = None):
    """Yield the temporary path to write; it replaces `path` when the block ends, and is removed if it fails.
    A failure to write or rename is reported under the name of `path` (and of `flag`, when given)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None or str(err.filename) not in (str(tmp), str(path)):
            raise  # not about this file, e.g. an input that failed to read
        raise cannot_write(err, f"{flag} {path}" if flag else str(path)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
