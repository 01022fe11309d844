"""Output files are written whole or not at all, and never in place of anything genvl should not replace.

A write goes to a hidden temporary name beside its target that holds the host and process id of the writer,
`.<name>.<host>-<pid>.tmp`, and is renamed into place: two runs writing one file never mix their lines, each
renames a whole file and the last one wins. A temporary of that pattern whose process has died (killed before it
could clean up) is removed when the next write to the same target starts; nothing else is ever removed.
"""

import errno
import os
import re
import shutil
import signal
import socket
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

from .paths import kind_of

# what a failed write raises with no file name attached (a full disk is noticed by write() or close(), not open())
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def check_output_file(path, flag: str, inputs=()) -> Path:
    """`path` as a Path if genvl may write it; else, before any work is done, an error naming `flag` and `path`.

    Refused: an existing symlink (replacing it would either write through it or swap it out from under whoever
    made it), anything existing but a regular file (a folder, a device such as /dev/null, a FIFO, a socket), the
    same file as one of `inputs` (paths of files, or of folders standing for every file under them, e.g. a model
    folder), and a missing or unwritable parent folder. An existing regular file is replaced: re-running a command
    must keep working.
    """
    path = Path(path)
    where = f"{flag} {path}"
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        status = None  # nothing there (or a parent that is not a folder, reported below)
    except OSError as err:
        raise type(err)(f"{where}: cannot look at it ({err.strerror})") from None
    if status is not None:
        if stat.S_ISLNK(status.st_mode):
            raise ValueError(f"{where}: is a symlink (to {os.readlink(path)}); expected a regular file or a new name")
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(f"{where}: is a folder; expected a file name")
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{where}: is {kind_of(status.st_mode)}; expected a regular file or a new name")
        same = _same_file_among(status, inputs)
        if same is not None:
            raise ValueError(f"{where}: is the same file as the input {same}; expected a name that is no input")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{where}: no such folder {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{where}: cannot write in {path.parent}")
    return path


def check_export_folder(folder, flag: str, parts=(), inputs=(), pipeline: str | None = None) -> Path:
    """`folder` as a Path if an export may write there; else, before any work is done, an error naming `flag` and
    `folder`. Written: a new or empty folder; one holding nothing but `parts` (the folders the export saves);
    and, for the export of a `pipeline` class, a folder of that pipeline (its `model_index.json` names the class),
    whose components the export replaces and whose other files it leaves. Refused: anything else that exists, and
    a folder that is one of the `inputs` or holds one (the export would write over what it reads)."""
    folder = Path(folder)
    where = f"{flag} {folder}"
    if os.path.lexists(folder) and not folder.is_dir():
        raise FileExistsError(f"{where}: exists and is not a folder")
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{where}: is or holds the input {given}; expected a folder that is no input")
    held = {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()
    if held and not held <= set(parts) and not (pipeline and _names_pipeline(folder / "model_index.json", pipeline)):
        kind = f"a {pipeline} folder" if pipeline else "a folder this export wrote"
        raise FileExistsError(f"{where}: holds files and is not {kind}; choose a new or empty folder")
    return folder


def _names_pipeline(index_file: Path, pipeline: str) -> bool:
    """Whether `index_file` is a regular file, a model_index.json whose `_class_name` is `pipeline`."""
    import json

    if index_file.is_symlink() or not index_file.is_file():
        return False
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == pipeline


def _same_file_among(status: os.stat_result, inputs):
    """The first of `inputs` (a folder standing for the files under it) that is the file `status` describes."""

    def same(candidate) -> bool:
        try:
            other = os.stat(candidate)
        except OSError:
            return False
        return (other.st_dev, other.st_ino) == (status.st_dev, status.st_ino)

    for item in inputs:
        if os.path.isdir(item):
            for folder, _, files in os.walk(item):
                found = next((Path(folder) / name for name in files if same(Path(folder) / name)), None)
                if found is not None:
                    return found
        elif same(item):
            return Path(item)
    return None


def cannot_write(err: OSError, where: str) -> OSError:
    """`err` (of the same type) reworded to name `where` rather than a temporary file."""
    return type(err)(f"{where}: cannot write it ({err.strerror or err})")


def failed_writing(err: OSError, *paths) -> bool:
    """Whether `err` is a failure to write one of `paths` (or something under one, for a folder) rather than, say, an
    input that failed to read: it names one of them, or it names no file and is what a failed write raises."""
    if err.filename is None:
        return err.errno in WRITE_ERRNOS
    name = str(err.filename)
    return any(name == str(path) or name.startswith(str(path) + os.sep) for path in paths)


def process_tag() -> str:
    """`<host>-<pid>` of this process: what makes a temporary name its own, and tells later runs whether the
    process that wrote it is still alive."""
    return f"{socket.gethostname()}-{os.getpid()}"


def temporary_name(path, role: str = "", owner: str | None = None) -> Path:
    """The hidden name beside `path` that `owner` (a `process_tag()`, default this process's) writes it under:
    `.<name>.<host>-<pid>.tmp`, or `.<name>.<host>-<pid>.<role>.tmp` for one of several (e.g. `part0`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{owner or process_tag()}{'.' + role if role else ''}.tmp")


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporaries of `path` (files, or folders genvl builds aside) left by processes of this host that
    are no longer running; returns them. Nothing but genvl's own pattern is touched, and no symlink."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)(\.[a-z]+\d*)?\.tmp")
    host = socket.gethostname()
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed  # the folder's own problems are reported by the write that follows
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or match["host"] != host or _is_running(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
        except FileNotFoundError:  # another run cleaned it up first
            continue
        removed.append(Path(entry.path))
    return removed


def _is_running(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id genvl writes: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def weights_files(folder) -> dict[Path, tuple[int, int]]:
    """The safetensors files in `folder` and in its subfolders (a model folder's components), each with its inode
    and modification time, which tell a file written since from one left as it was."""
    files = {}
    for file in [*Path(folder).glob("*.safetensors"), *Path(folder).glob("*/*.safetensors")]:
        status = file.lstat()
        if stat.S_ISREG(status.st_mode):
            files[file] = (status.st_ino, status.st_mtime_ns)
    return files


def open_weights(folder, before: dict) -> None:
    """Give the safetensors files of `folder` written since `weights_files(folder)` returned `before` the mode the
    umask gives a new file (0644 under the usual 022), where safetensors wrote them readable by their owner alone
    (0600), whatever the umask. Files with another mode, and files that were there before, are left as they are."""
    mode = 0o666 & ~current_umask()
    for file, state in weights_files(folder).items():
        if state != before.get(file) and stat.S_IMODE(file.lstat().st_mode) == 0o600:
            file.chmod(mode)


def current_umask() -> int:
    """The process's umask, read from /proc/self/status where the system has it. Elsewhere it can only be read by
    setting another and restoring it; the one set meanwhile is 077, so that a file another thread makes in that
    instant is private rather than open to all."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def weights_readable_as_umask(folder):
    """Open the weights files the block writes in `folder` (see `open_weights`), so that a saved model folder can
    be read by whoever may read its configs."""
    before = weights_files(folder)
    yield
    open_weights(folder, before)


@contextmanager
def temporary_file(path, flag: str | None = None, tmp=None):
    """Yield a temporary name beside `path` to write (default `temporary_name(path)`), after removing the stale
    temporaries of `path`. If the block fails the temporary is removed, and a failure to write it is reported
    under the name of `path` (and of `flag`, when given), e.g. `--output x.jsonl: cannot write it (No space left on
    device)`. The caller decides what becomes of the temporary when the block succeeds."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else temporary_name(path)
    remove_stale_temporaries(path)
    try:
        if tmp.is_symlink() or tmp.is_file():  # our own name, left by an earlier process with this pid
            tmp.unlink()
        yield tmp
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if not failed_writing(err, tmp, path):
            raise  # not about this file, e.g. an input that failed to read
        raise cannot_write(err, f"{flag} {path}" if flag else str(path)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def written_atomically(path, flag: str | None = None):
    """Yield the temporary path to write; it replaces `path` when the block ends, and is removed if it fails.
    A failure to write or rename is reported under the name of `path` (and of `flag`, when given)."""
    with temporary_file(path, flag) as tmp:
        yield tmp
        os.replace(tmp, path)


def terminate_cleanly() -> None:
    """Make SIGTERM (what `kill`, job schedulers and container runtimes send) raise SystemExit(143) in the main
    thread. Python's default is to die on the spot, skipping the cleanups above, which leaves temporaries behind;
    as an exception it unwinds through them. Call it once, from the main thread, before any work starts."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("terminate_cleanly() must be called from the main thread")

    def exit_on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
