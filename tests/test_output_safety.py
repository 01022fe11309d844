"""No genvl command destroys a user's files: outputs that are symlinks, devices, FIFOs, sockets, folders or the
command's own inputs are refused before any work; writes go to a temporary of the writing process's own, so that
concurrent runs never mix and failures (a full disk, SIGTERM) leave no temporary behind; `data scenes` replaces
only a split folder genvl wrote."""

import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genvl.cli.image import slug
from genvl.io.outputs import process_tag
from genvl.world.dataset import MANIFEST, write_imagefolder

from .test_bad_input import assert_one_line_error, run, scene

HIDDEN_TEMPORARY = re.compile(r"\..+\.tmp")  # genvl's `.<name>.<host>-<pid>[.<role>].tmp`


def snapshot(root: Path) -> dict:
    """Everything under `root`: its kind, its modification time (a folder's changes when anything is made or removed
    in it, even for a moment), and its bytes (a file) or target (a symlink), not following links."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            status = os.lstat(path)
            mode = status.st_mode
            content = os.readlink(path) if stat.S_ISLNK(mode) else path.read_bytes() if stat.S_ISREG(mode) else None
            found[path] = (stat.S_IFMT(mode), status.st_mtime_ns, content)
    return found


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if HIDDEN_TEMPORARY.fullmatch(p.name))


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def genvl_process(*argv, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "genvl", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


# ---- refusals of --output, before any work -----------------------------------------------------------------------


def fake_folders(tmp_path):
    """Stand-ins for what the commands read: refusals come before any of them is loaded, so none need be real."""
    images = tmp_path / "images"
    images.mkdir()
    scene().save(images / "x.png")
    data = tmp_path / "data"
    data.mkdir()
    scene().save(data / "000000.png")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "000000.png", "text": "a red apple"}) + "\n")
    for name in ("model", "judge", "captioner"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    return images, data


OUTPUT_COMMANDS = {
    "caption": ["caption", "IMAGES", "--model", "MODEL"],
    "eval caption": ["eval", "caption", "--data", "DATA", "--model", "MODEL"],
    "eval vqa": ["eval", "vqa", "--data", "DATA", "--model", "MODEL"],
    "eval attention": ["eval", "attention", "--data", "DATA", "--model", "MODEL"],
    "eval retrieval": ["eval", "retrieval", "--data", "DATA", "--model", "MODEL"],
    "eval t2i": ["eval", "t2i", "--data", "DATA", "--model", "MODEL", "--judge", "JUDGE", "--captioner", "CAPTIONER"],
}

# what is at the output's name -> what the error says about it
REFUSALS = {
    "symlink": "is a symlink",
    "dangling symlink": "is a symlink",
    "device": "is a character device",
    "fifo": "is a FIFO",
    "socket": "is a socket",
    "folder": "is a folder",
    "input": "is the same file as the input",
    "hardlinked input": "is the same file as the input",
    "model file": "is the same file as the input",
    "missing folder": "no such folder",
    "unwritable folder": "cannot write in",
}


def make_refused_output(kind: str, path: Path, an_input: Path, model_file: Path, tmp_path: Path, monkeypatch):
    """Create what `kind` names at the output name `path`, and return the output name to pass."""
    if kind == "symlink":
        (tmp_path / "victim.txt").write_text("a file the symlink points to")
        path.symlink_to(tmp_path / "victim.txt")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere" / "x")
    elif kind == "device":
        try:  # what /dev/null is (major 1, minor 3), made here so that a failure harms no system file
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs CAP_MKNOD")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:  # the socket file stays once it is closed
            server.bind(str(path))
    elif kind == "folder":
        path.mkdir()
    elif kind == "input":
        path = an_input
    elif kind == "hardlinked input":
        os.link(an_input, path)
    elif kind == "model file":
        path = model_file
    elif kind == "missing folder":
        path = path.parent / "missing" / path.name
    elif kind == "unwritable folder":
        path = path.parent / "read-only" / path.name
        path.parent.mkdir()
        path.parent.chmod(0o555)
        real_access = os.access
        if os.geteuid() == 0:  # root writes wherever the permission bits forbid: answer as they say for others
            monkeypatch.setattr(
                os,
                "access",
                lambda where, mode, **kw: (
                    not (mode & os.W_OK and Path(where) == path.parent) and real_access(where, mode, **kw)
                ),
            )
    return path


@pytest.mark.parametrize("kind", sorted(REFUSALS))
@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_output_refusals(command, kind, tmp_path, capsys, monkeypatch):
    images, data = fake_folders(tmp_path)
    an_input = images / "x.png" if command == "caption" else data / "metadata.jsonl"
    model_file = tmp_path / "model" / "config.json"
    output = make_refused_output(kind, tmp_path / "out.json", an_input, model_file, tmp_path, monkeypatch)
    places = {
        "IMAGES": images,
        "DATA": data,
        "MODEL": tmp_path / "model",
        "JUDGE": tmp_path / "judge",
        "CAPTIONER": tmp_path / "captioner",
    }
    argv = [str(places.get(a, a)) for a in OUTPUT_COMMANDS[command]]
    before = snapshot(tmp_path)
    code, out, err = run([*argv, "--output", str(output), "--quiet"], capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"--output {output}:", REFUSALS[kind])
    assert snapshot(tmp_path) == before  # inputs byte for byte, the refused thing as it was, nothing new


def test_an_existing_regular_output_is_still_replaced(tiny_pipeline_dir, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    output = tmp_path / "captions.jsonl"
    output.write_text("an earlier run's\n")
    argv = [
        "caption",
        str(tmp_path / "x.png"),
        "--model",
        str(tiny_pipeline_dir),
        "--output",
        str(output),
        "--max-new-tokens",
        "3",
        "--quiet",
    ]
    for _ in range(2):  # and re-running keeps working
        code, _, err = run(argv, capsys)
        assert code == 0, err
        assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [str(tmp_path / "x.png")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl", "x.png"]


# ---- refusals of the PNGs generate, vary and interpolate write ---------------------------------------------------


def png_command(command: str, tmp_path: Path, t2i_dir) -> tuple[list, Path, Path]:
    """(argv, the PNG it writes first, an input file of it) for one image with one step."""
    out = tmp_path / "out"
    out.mkdir()
    scene().save(tmp_path / "a.png")
    scene().rotate(90).save(tmp_path / "b.png")
    common = ["--model", str(t2i_dir), "--out", str(out), "--seed", "0", "--steps", "1", "--quiet"]
    if command == "generate":
        return ["generate", "an apple", "-n", "1", *common], out / "an_apple-0-0.png", t2i_dir / "model_index.json"
    if command == "vary":
        return ["vary", str(tmp_path / "a.png"), "-n", "1", *common], out / "a-variation-0-0.png", tmp_path / "a.png"
    name = slug("a-to-b")
    argv = ["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--frames", "2", *common]
    return argv, out / f"{name}-0-0.png", tmp_path / "a.png"


PNG_REFUSALS = ["symlink", "device", "fifo", "folder", "hardlinked input"]


@pytest.mark.parametrize("kind", PNG_REFUSALS)
@pytest.mark.parametrize("command", ["generate", "vary", "interpolate"])
def test_png_refusals(command, kind, t2i_dir, tmp_path, capsys, monkeypatch):
    argv, png, an_input = png_command(command, tmp_path, t2i_dir)
    make_refused_output(kind, png, an_input, an_input, tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"--out {png}:", REFUSALS[kind])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("problem", ["cannot make it", "cannot write in it"])
def test_generate_out_that_cannot_be_written_names_the_flag(problem, t2i_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "read-only" / "outputs"
    out.parent.mkdir()
    out.parent.chmod(0o555)  # root ignores this: the refusals below are what a user gets
    if problem == "cannot make it":
        real_mkdir = Path.mkdir

        def refused_mkdir(self, *args, **kwargs):
            if self == out:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refused_mkdir)
        expected = f"--out {out}: cannot make the folder (Permission denied)"
    else:
        out.mkdir()
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda where, mode, **kw: not (mode & os.W_OK and Path(where) == out) and real_access(where, mode, **kw),
        )
        expected = f"--out {out}: cannot write in it"
    code, out_text, err = run(
        ["generate", "an apple", "--model", str(t2i_dir), "--out", str(out), "--steps", "1", "--quiet"], capsys
    )
    assert code == 1 and out_text == ""
    assert_one_line_error(err, expected)
    assert not list(out.parent.rglob("*.png"))


# ---- write failures: one line naming the flag and the final path, nothing left behind ----------------------------


class FullDiskFile:
    """A file whose writes fail as on a full disk: ENOSPC, with no file name attached, as the kernel reports it."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def fill_the_disk(monkeypatch, temporary=HIDDEN_TEMPORARY):
    """Writes to genvl's temporaries (files named like one, or inside a folder named like one) fail with ENOSPC."""
    import builtins

    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        full = isinstance(file, (str, os.PathLike)) and any(temporary.fullmatch(part) for part in Path(file).parts)
        return FullDiskFile(handle) if full and any(m in mode for m in "wax+") else handle

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)  # pathlib's write_text and write_bytes open through io


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("world"), 3, seed=0, split="test", resolution=32)


@pytest.mark.parametrize("command", ["caption", "eval caption", "eval retrieval", "generate", "data scenes"])
def test_a_full_disk_is_named_and_leaves_nothing(
    command, tiny_pipeline_dir, t2i_dir, world, tmp_path, capsys, monkeypatch
):
    scene().save(tmp_path / "x.png")
    output = tmp_path / "report.json"
    output.write_text("an earlier run's\n")
    argv, where = {
        "caption": (
            ["caption", tmp_path / "x.png", "--model", tiny_pipeline_dir, "--output", output],
            f"--output {output}",
        ),
        "eval caption": (
            [
                "eval",
                "caption",
                "--data",
                world,
                "--model",
                tiny_pipeline_dir,
                "--max-new-tokens",
                "3",
                "--output",
                output,
            ],
            f"--output {output}",
        ),
        "eval retrieval": (
            ["eval", "retrieval", "--data", world, "--model", t2i_dir, "--output", output],
            f"--output {output}",
        ),
        "generate": (
            ["generate", "an apple", "--model", t2i_dir, "--steps", "1", "--seed", "0", "--out", tmp_path / "out"],
            f"--out {tmp_path / 'out' / 'an_apple-0-0.png'}",
        ),
        "data scenes": (
            ["data", "scenes", "--out", tmp_path / "data", "--num-images", "2", "--resolution", "32"],
            str(tmp_path / "data" / "train"),
        ),
    }[command]
    fill_the_disk(monkeypatch)
    code, _, err = run([*map(str, argv), "--quiet"], capsys)
    assert code == 1
    assert_one_line_error(err, f"{where}: cannot write it (No space left on device)")
    assert ".tmp" not in err
    assert output.read_text() == "an earlier run's\n"
    assert temporaries(tmp_path) == [] and [p.name for p in tmp_path.rglob("*.png")] == ["x.png"]


def limit_file_size(limit: int):
    """A preexec_fn: files may not grow past `limit` bytes, and a write past it fails with EFBIG (SIGXFSZ, which
    would kill the process instead, is ignored) as a write to a full disk fails with ENOSPC."""

    def limit_it():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_it


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("command", ["caption", "generate", "data scenes"])
def test_a_file_size_limit_is_named_and_leaves_nothing(command, tiny_pipeline_dir, t2i_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(60):  # about 9 KB of JSONL
        scene().save(images / f"{i:03d}.png")
    argv, where = {
        "caption": (
            [
                "caption",
                images,
                "--model",
                tiny_pipeline_dir,
                "--max-new-tokens",
                "4",
                "--output",
                tmp_path / "captions.jsonl",
            ],
            f"--output {tmp_path / 'captions.jsonl'}",
        ),
        "generate": (
            ["generate", "an apple", "--model", t2i_dir, "--steps", "1", "--seed", "0", "--out", tmp_path / "out"],
            f"--out {tmp_path / 'out' / 'an_apple-0-0.png'}",
        ),
        "data scenes": (
            ["data", "scenes", "--out", tmp_path / "data", "--num-images", "40", "--resolution", "32"],
            str(tmp_path / "data" / "train"),
        ),
    }[command]
    before = snapshot(images)
    process = genvl_process(*argv, "--quiet", preexec_fn=limit_file_size(2048))
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err
    assert_one_line_error(err, f"{where}: cannot write it (File too large)")
    assert snapshot(images) == before
    left = {"caption": ["images"], "generate": ["images", "out"], "data scenes": ["data", "images"]}[command]
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    assert all(list((tmp_path / name).iterdir()) == [] for name in left if name != "images")


# ---- concurrent writers, SIGTERM and stale temporaries ------------------------------------------------------------


def caption_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    scene().save(folder / "000.png")
    for i in range(1, count):  # hard links: many inputs, little disk
        os.link(folder / "000.png", folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow  # subprocesses
def test_two_runs_writing_one_output_each_leave_a_whole_file(tiny_pipeline_dir, tmp_path):
    images = caption_images(tmp_path / "images", 120)
    output = tmp_path / "same.jsonl"
    argv = [
        "caption",
        images,
        "--model",
        tiny_pipeline_dir,
        "--output",
        output,
        "--batch-size",
        "1",
        "--max-new-tokens",
        "4",
        "--quiet",
    ]
    runs = [genvl_process(*argv) for _ in range(2)]
    results = [process.communicate(timeout=600) for process in runs]
    assert [process.returncode for process in runs] == [0, 0], results
    records = [json.loads(line) for line in output.read_text().splitlines()]  # every line whole JSON
    assert [r["path"] for r in records] == sorted(str(p) for p in images.iterdir())
    assert temporaries(tmp_path) == []


def wait_for(condition, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"finished before it was stopped: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("command", ["caption", "data scenes"])
def test_sigterm_mid_run_leaves_no_temporary(command, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if command == "caption":
        images = caption_images(tmp_path / "images", 400)
        process = genvl_process(
            "caption",
            images,
            "--model",
            tiny_pipeline_dir,
            "--output",
            out / "captions.jsonl",
            "--batch-size",
            "1",
            "--max-new-tokens",
            "8",
            "--quiet",
        )

        def started():  # the first records are written: the temporary's first buffer is flushed
            return any(p.stat().st_size > 0 for p in temporaries(out))
    else:
        process = genvl_process(
            "data", "scenes", "--out", out, "--num-images", "20000", "--resolution", "32", "--quiet"
        )

        def started():  # the first images are in the hidden folder the split is built in
            return any(p.is_dir() and len(list(p.iterdir())) > 10 for p in temporaries(out))

    wait_for(started, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert list(out.iterdir()) == []


def test_terminate_cleanly_unwinds_a_write(tmp_path):
    """The mechanism on its own: SIGTERM becomes SystemExit(143), and the write's cleanup runs."""
    script = (
        "import sys, time\n"
        "from genvl.io.outputs import terminate_cleanly, written_atomically\n"
        "terminate_cleanly()\n"
        f"with written_atomically({str(tmp_path / 'out.txt')!r}) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    assert len(temporaries(tmp_path)) == 1
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 143 and list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tiny_pipeline_dir, tmp_path, capsys):
    host, dead, alive = socket.gethostname(), dead_pid(), os.getppid()
    scene().save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    stale = [f".captions.jsonl.{host}-{dead}.tmp", f".captions.jsonl.{host}-{dead}.part1.tmp"]
    kept = [
        f".captions.jsonl.{host}-{alive}.tmp",  # a run still going
        f".captions.jsonl.otherhost-{dead}.tmp",  # another machine's process: cannot tell
        f".other.jsonl.{host}-{dead}.tmp",  # another target's
        ".captions.jsonl.backup",
        "captions.jsonl.tmp",
        f"captions.jsonl.{host}-{dead}.tmp",
    ]  # not genvl's
    for name in stale + kept:
        (out / name).write_text("left behind\n")
    (out / f".captions.jsonl.{host}-{dead}.link.tmp").symlink_to(tmp_path / "x.png")  # never a symlink
    kept.append(f".captions.jsonl.{host}-{dead}.link.tmp")
    code, _, err = run(
        [
            "caption",
            str(tmp_path / "x.png"),
            "--model",
            str(tiny_pipeline_dir),
            "--max-new-tokens",
            "3",
            "--output",
            str(out / "captions.jsonl"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(kept + ["captions.jsonl"])

    data = tmp_path / "data"
    data.mkdir()
    for name in (f".train.{host}-{dead}.tmp", f".train.{host}-{alive}.tmp"):
        (data / name).mkdir()
        (data / name / "000000.png").write_bytes(b"half")
    code, _, err = run(
        ["data", "scenes", "--out", str(data), "--num-images", "2", "--resolution", "32", "--quiet"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in data.iterdir()) == [f".train.{host}-{alive}.tmp", "train"]


def test_several_processes_join_their_parts_and_remove_them_even_on_failure(
    tiny_pipeline_dir, tmp_path, capsys, monkeypatch
):
    """Rank 0 of two (the other rank's part written beforehand): the join is whole, and when it fails no part is
    left behind."""
    import genvl.cli.caption

    for i in range(4):
        scene().save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    output = out / "captions.jsonl"
    other = out / f".captions.jsonl.{process_tag()}.part1.tmp"  # rank 0 is this process: the parts carry its tag
    monkeypatch.setattr(genvl.cli.caption, "process_layout", lambda: (2, 0))
    argv = [
        "caption",
        str(tmp_path),
        "--model",
        str(tiny_pipeline_dir),
        "--max-new-tokens",
        "3",
        "--output",
        str(output),
        "--quiet",
    ]
    other.write_text('{"path": "from rank 1"}\n')
    code, _, err = run(argv, capsys)
    assert code == 0, err
    paths = [json.loads(line)["path"] for line in output.read_text().splitlines()]
    assert paths == [str(tmp_path / "0.png"), str(tmp_path / "1.png"), "from rank 1"]
    assert sorted(p.name for p in out.iterdir()) == ["captions.jsonl"]

    other.write_text('{"path": "from rank 1"}\n')
    fill_the_disk(monkeypatch, re.compile(r"\..+-\d+\.tmp"))  # the join's temporary, not the parts'
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_line_error(err, f"--output {output}: cannot write it (No space left on device)")
    assert sorted(p.name for p in out.iterdir()) == ["captions.jsonl"]
    assert len(output.read_text().splitlines()) == 3


# ---- data scenes replaces only what genvl wrote ------------------------------------------------------------------


def scenes_argv(root: Path, *more: str) -> list[str]:
    return ["data", "scenes", "--out", str(root), "--num-images", "2", "--resolution", "32", "--quiet", *more]


def test_data_scenes_refuses_an_existing_split_without_overwrite(tmp_path, capsys):
    split = tmp_path / "proj" / "train"
    split.mkdir(parents=True)
    (split / "holiday.jpg").write_bytes(b"a user's photo")
    code, out, err = run(scenes_argv(tmp_path / "proj"), capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{split}: already exists", "--overwrite")
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["train"]
    assert (split / "holiday.jpg").read_bytes() == b"a user's photo" and len(list(split.iterdir())) == 1


def test_data_scenes_overwrite_replaces_its_own_split(tmp_path, capsys):
    root = tmp_path / "proj"
    assert run(scenes_argv(root, "--seed", "1"), capsys)[0] == 0
    assert run(scenes_argv(root, "--seed", "1"), capsys)[0] == 1  # not without --overwrite
    code, out, err = run([*scenes_argv(root, "--overwrite"), "--num-images", "3"], capsys)
    assert code == 0, err
    assert out.strip() == str(root / "train")
    manifest = json.loads((root / "train" / MANIFEST).read_text())
    assert {key: manifest[key] for key in ("seed", "split", "count", "resolution")} == {
        "seed": 0,
        "split": "train",
        "count": 3,
        "resolution": 32,
    }
    assert sorted(manifest["files"] + [MANIFEST]) == sorted(p.name for p in (root / "train").iterdir())
    assert len(manifest["files"]) == 4 and sorted(p.name for p in root.iterdir()) == ["train"]


def foreign(kind: str, split: Path, tmp_path: Path) -> Path:
    """Make the genvl-written `split` hold something genvl did not write; returns what the error names."""
    if kind == "a user's file":
        (split / "notes.txt").write_text("mine")
        return split / "notes.txt"
    if kind == "a user's folder":
        (split / "extra").mkdir()
        (split / "extra" / "photo.png").write_bytes(b"mine")
        return split / "extra"
    if kind == "a symlink in place of a listed file":
        (tmp_path / "elsewhere.png").write_bytes(b"mine")
        (split / "000000.png").unlink()
        (split / "000000.png").symlink_to(tmp_path / "elsewhere.png")
        return split / "000000.png"
    if kind == "no manifest":
        (split / MANIFEST).unlink()
        return split
    if kind == "a broken manifest":
        (split / MANIFEST).write_text("{not json")
        return split / MANIFEST
    if kind == "the split is a symlink":
        shutil.move(split, tmp_path / "real")
        split.symlink_to(tmp_path / "real")
        return split
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "a user's file",
        "a user's folder",
        "a symlink in place of a listed file",
        "no manifest",
        "a broken manifest",
        "the split is a symlink",
    ],
)
def test_data_scenes_overwrite_refuses_a_split_holding_what_genvl_did_not_write(kind, tmp_path, capsys):
    root = tmp_path / "proj"
    assert run(scenes_argv(root), capsys)[0] == 0
    named = foreign(kind, root / "train", tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run(scenes_argv(root, "--overwrite", "--seed", "2"), capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{named}:", "not")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_saved_weights_are_as_readable_as_the_umask_lets_new_files_be(umask, tiny_tokenizer, tmp_path):
    """safetensors writes 0600 whatever the umask: a folder saved for others would hold weights they cannot read.
    genvl opens the weights a save writes as the umask says, and leaves every other file as it was."""
    import torch
    from safetensors.torch import save_file

    from genvl.lora import add_adapter, lora_config, save_adapter
    from genvl.pipelines.caption import CaptionPipeline
    from genvl.pipelines.text_to_image import TextToImagePipeline

    from .conftest import get_dummy_components, get_dummy_unclip_components

    model, processor = get_dummy_components(tiny_tokenizer)
    captioner, t2i, adapter = tmp_path / "captioner", tmp_path / "t2i", tmp_path / "adapter"
    for folder in (captioner, t2i / "decoder", adapter):
        folder.mkdir(parents=True)
        save_file({"x": torch.zeros(1)}, folder / "private.safetensors")  # a file of the user's, 0600
    previous = os.umask(umask)
    try:
        CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).save_pretrained(captioner)
        TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(t2i)
        save_adapter(add_adapter(get_dummy_components(tiny_tokenizer)[0], lora_config("captioner", rank=2)), adapter)
    finally:
        os.umask(previous)
    for folder in (captioner, t2i, adapter):
        modes = {
            w.relative_to(folder).as_posix(): stat.S_IMODE(w.stat().st_mode) for w in folder.rglob("*.safetensors")
        }
        private = modes.pop(next(name for name in modes if name.endswith("private.safetensors")))
        assert private == 0o600 and len(modes) >= 1
        assert set(modes.values()) == {0o666 & ~umask}, (folder.name, modes)


def test_the_umask_is_read_as_it_is_where_the_system_does_not_show_it(monkeypatch):
    from genvl.io.outputs import current_umask

    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027

        def no_proc(self, *args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory", str(self))

        monkeypatch.setattr(Path, "read_text", no_proc)
        assert current_umask() == 0o027 and os.umask(0o027) == 0o027  # read back, and left as it was
    finally:
        os.umask(previous)
