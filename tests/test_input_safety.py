"""Inputs that used to be misread, hang the run or exhaust memory: paths that are not regular files, images over
the pixel limit, shard members bigger than any image within it, and file names that would split an output line."""

import gzip
import io
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zlib

import pytest
from PIL import Image

from genvl.cli.caption import open_inputs
from genvl.io import images as genvl_images
from genvl.io.images import EncodedImage, load_image, printable_path
from genvl.io.shards import TEXT_MEMBER_BYTES, list_image_samples, member_byte_cap, read_sample_images
from genvl.training.data import read_training_records

from .test_bad_input import assert_one_line_error, run


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that the CLI's one-line error handler does not swallow it."""


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test that blocks (e.g. on opening a FIFO nothing writes to) instead of blocking the suite."""

    def expire(signum, frame):
        raise Hang("the test hung for 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def restore_pixel_limit():
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


def png_bytes(size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is empty: decoding it would fail, so a
    refusal as a bomb shows that the size was checked from the header first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_shard(path, members) -> None:
    """A tar (gzipped when `path` ends in .gz) of (name, data) members; data given as an int writes a header
    claiming that many bytes and no data at all, as a cut-off or forged shard would."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, int):
                info.size = data
                buffer.write(info.tobuf())
                tar.offset = buffer.tell()
                break  # nothing can follow a header whose data is missing
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


@pytest.fixture
def extracted(monkeypatch):
    """The names of the tar members whose data was opened for reading."""
    names, real = [], tarfile.TarFile.extractfile

    def spy(self, member):
        names.append(member.name if isinstance(member, tarfile.TarInfo) else member)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    return names


def caption(inputs, model, *flags, capsys):
    return run(["caption", *map(str, inputs), "--model", str(model), "--quiet", *flags], capsys)


# ---- paths that are not regular files: named for what they are, never opened ------------------------------------


def make_fifo(path):
    os.mkfifo(path)  # nothing ever writes to it: opening it for reading would block for good


def make_loop(path):
    os.symlink(path.with_name("other"), path)
    os.symlink(path, path.with_name("other"))


NOT_REGULAR = {
    "fifo": (make_fifo, "is a FIFO"),
    "symlink_loop": (make_loop, "a symlink loop"),
    "broken_symlink": (lambda p: os.symlink(p.with_name("gone.png"), p), "gone.png, which does not exist"),
}


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_image_argument_that_is_not_a_regular_file_is_named(kind, tiny_pipeline_dir, tmp_path, capsys):
    make, fragment = NOT_REGULAR[kind]
    path = tmp_path / "x.png"
    make(path)
    code, out, err = caption([path], tiny_pipeline_dir, capsys=capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(path), fragment)


def test_character_device_is_named(tiny_pipeline_dir, capsys):
    code, out, err = caption(["/dev/null"], tiny_pipeline_dir, capsys=capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, "/dev/null", "is a character device")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/0"), reason="/dev/stdin needs /proc")
def test_dev_stdin_that_is_a_pipe_is_named(tiny_pipeline_dir, capsys):
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)  # as in `producer | genvl caption /dev/stdin`; nothing is written, so a read would block
    try:
        code, out, err = caption(["/dev/stdin"], tiny_pipeline_dir, capsys=capsys)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert code == 1 and out == ""
    assert_one_line_error(err, "/dev/stdin", "is a FIFO")


def test_missing_image_is_still_no_such_file(tiny_pipeline_dir, tmp_path, capsys):
    code, _, err = caption([tmp_path / "nope.png"], tiny_pipeline_dir, capsys=capsys)
    assert code == 1
    assert_one_line_error(err, str(tmp_path / "nope.png"), "no such file")
    with pytest.raises(FileNotFoundError, match="nope.png: no such image file"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_folder_entry_with_an_image_name_that_is_not_a_regular_file_is_refused(
    kind, tiny_pipeline_dir, tmp_path, capsys
):
    """Refused rather than skipped: an image the user expects captioned is not silently left out."""
    make, fragment = NOT_REGULAR[kind]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    make(tmp_path / "b.png")
    code, out, err = caption([tmp_path], tiny_pipeline_dir, capsys=capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(tmp_path / "b.png"), fragment)


def test_folder_walk_ignores_other_entries_and_follows_no_loop(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "a.png")
    os.mkfifo(tmp_path / "sub" / "pipe")  # not an image name: never looked into
    os.symlink(tmp_path, tmp_path / "sub" / "up")  # a folder link back up: would loop a walk that followed it
    os.symlink(tmp_path / "sub" / "l1", tmp_path / "sub" / "l2")
    os.symlink(tmp_path / "sub" / "l2", tmp_path / "sub" / "l1")
    code, out, err = caption([tmp_path], tiny_pipeline_dir, capsys=capsys)
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(tmp_path / "sub" / "a.png")]


def test_shard_that_is_a_fifo_is_named(tiny_pipeline_dir, tmp_path, capsys):
    os.mkfifo(tmp_path / "s.tar")
    code, out, err = caption([tmp_path / "s.tar"], tiny_pipeline_dir, capsys=capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(tmp_path / "s.tar"), "is a FIFO")


# ---- decompression bombs: one limit, one wording, checked from the header ---------------------------------------


def bomb_message(name: str, width: int, height: int, limit: int) -> str:
    return (
        f"{name}: {width * height:,} pixels, over the limit of {limit:,} "
        "(a possible decompression bomb); raise --max-image-pixels if the file is trusted"
    )


def bomb_as_path(tmp_path, data, limit, model, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    code, out, err = caption([path], model, "--max-image-pixels", str(limit), capsys=capsys)
    assert code == 1 and out == ""
    return str(path), err


def bomb_in_shard(tmp_path, data, limit, model, capsys):
    shard = tmp_path / "s.tar"
    write_shard(shard, [("ok.png", png_bytes()), ("bomb.png", data)])
    code, out, err = caption([shard], model, "--max-image-pixels", str(limit), "--batch-size", "1", capsys=capsys)
    assert code == 1 and len(out.splitlines()) == 1  # the sample before it was captioned
    return f"{shard}#bomb", err


def bomb_as_bytes(tmp_path, data, limit, model, capsys):
    genvl_images.set_max_image_pixels(limit)
    with pytest.raises(ValueError) as raised:
        load_image(data, name="upload.png")
    return "upload.png", f"genvl: error: {raised.value}\n"


@pytest.mark.parametrize("source", [bomb_as_path, bomb_in_shard, bomb_as_bytes], ids=["path", "shard", "bytes"])
@pytest.mark.parametrize("size", [(40, 40), (100, 100)], ids=["under_twice", "over_twice"])  # Pillow warns, raises
def test_bomb_refusal_reads_the_same_everywhere(source, size, tiny_pipeline_dir, tmp_path, capsys):
    name, err = source(tmp_path, png_bytes(size, mode="1"), 1000, tiny_pipeline_dir, capsys)
    assert err == f"genvl: error: {bomb_message(name, *size, 1000)}\n"


def test_help_states_the_limit_that_refusals_state(tiny_pipeline_dir, tmp_path, capsys):
    code, out, _ = run(["caption", "--help"], capsys)
    assert code == 0
    stated = re.search(r"\(default:\s+([\d,]+),", out).group(1)
    pillow = subprocess.run(
        [sys.executable, "-c", "import PIL.Image; print(PIL.Image.MAX_IMAGE_PIXELS)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert stated == f"{int(pillow):,}"
    # over the default limit by the header alone: the data holds no pixels, so decoding would fail differently
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10000, 9000))
    code, out, err = caption([path], tiny_pipeline_dir, capsys=capsys)
    assert code == 1 and out == ""
    assert err == f"genvl: error: {bomb_message(str(path), 10000, 9000, int(pillow))}\n"


def test_pixels_are_checked_before_decoding(tmp_path):
    genvl_images.set_max_image_pixels(1000)
    with pytest.raises(ValueError, match=r"x.png: 1,200 pixels, over the limit of 1,000"):
        load_image(png_header_only(40, 30), name="x.png")
    genvl_images.set_max_image_pixels(1200)  # within the limit, the same data is decoded, and fails as such
    with pytest.raises(ValueError, match=r"x.png: not a readable image"):
        load_image(png_header_only(40, 30), name="x.png")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"


def test_only_the_accepted_formats_are_decoded_and_nothing_is_run(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    # Pillow tells a format by its content: a file named .png that holds PostScript would reach its EPS plugin,
    # which runs Ghostscript. genvl decodes only the formats of IMAGE_SUFFIXES
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args) or pytest.fail("ran"))
    path = tmp_path / "drawing.png"
    path.write_bytes(EPS)
    with pytest.raises(ValueError, match=r"drawing.png: not a readable image"):
        load_image(path)
    with pytest.raises(ValueError, match=r"shard member: not a readable image"):
        load_image(EncodedImage(EPS, "shard member"))
    code, out, err = run(["caption", str(path), "--model", str(tiny_pipeline_dir)], capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(path), "not a readable image")
    assert started == []
    for fmt in genvl_images.IMAGE_FORMATS:  # every accepted format still reads
        buffer = io.BytesIO()
        Image.new("RGB", (9, 7), (10, 200, 30)).save(buffer, format=fmt)
        assert load_image(buffer.getvalue(), name=f"x.{fmt}").size == (9, 7)


# ---- shard members: sizes checked from the tar header, a huge member never read ---------------------------------

LIMIT = 100  # pixels: the image member cap is 8 * 100 + 1 MiB, so the members stay small
CAP = 8 * LIMIT + 2**20


@pytest.mark.parametrize("claimed", ["real", "header_only"])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_shard_member_over_the_cap_is_refused_unread(suffix, claimed, tiny_pipeline_dir, tmp_path, capsys, extracted):
    shard = tmp_path / f"s{suffix}"
    size = CAP + 1 if claimed == "real" else 2**31  # a forged header: 2 GiB that the file does not hold
    big = b"\0" * size if claimed == "real" else size
    write_shard(shard, [("a.png", png_bytes()), ("a.txt", b"a square"), ("big.png", big)])
    code, out, err = caption([shard], tiny_pipeline_dir, "--max-image-pixels", str(LIMIT), capsys=capsys)
    assert code == 1 and out == ""
    assert_one_line_error(
        err, f"{shard}#big: .png member is {size:,} bytes, over the cap of {CAP:,}", "--max-image-pixels"
    )
    assert "big.png" not in extracted


def test_member_cap_follows_the_pixel_limit():
    genvl_images.set_max_image_pixels(LIMIT)
    assert member_byte_cap("png") == member_byte_cap("seg.jpg") == CAP
    assert member_byte_cap("txt") == member_byte_cap("json") == TEXT_MEMBER_BYTES == 16 * 2**20
    genvl_images.set_max_image_pixels(10 * LIMIT)
    assert member_byte_cap("png") == 80 * LIMIT + 2**20


def test_reading_samples_checks_the_cap_itself(tmp_path, extracted):
    """A ref listed under a higher limit is read under the limit in force: the read checks again."""
    shard = tmp_path / "s.tar"
    write_shard(shard, [("a.png", png_bytes()), ("big.png", b"\0" * (CAP + 1))])
    refs = list_image_samples([shard])
    genvl_images.set_max_image_pixels(LIMIT)
    images = read_sample_images(refs)
    assert next(images) == png_bytes()
    with pytest.raises(ValueError, match=rf"s.tar#big: .png member is {CAP + 1:,} bytes, over the cap of {CAP:,}"):
        next(images)
    assert extracted == ["a.png"]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_training_skips_samples_with_a_member_over_the_cap(suffix, tmp_path, monkeypatch):
    import genvl.io.shards

    monkeypatch.setattr(genvl.io.shards, "TEXT_MEMBER_BYTES", 1000)
    genvl_images.set_max_image_pixels(LIMIT)
    shard = tmp_path / f"s{suffix}"
    big = 4 * 2**20
    write_shard(
        shard,
        [
            ("a.png", png_bytes()),
            ("a.txt", b"first"),
            ("big.png", random.Random(0).randbytes(big)),
            ("big.txt", b"an image too big"),
            ("long.png", png_bytes()),
            ("long.txt", b"x" * 1001),
            ("b.png", png_bytes()),
            ("b.txt", b"last"),
        ],
    )
    tracemalloc.start()  # random bytes: gzip cannot shrink them into a few blocks that inflate all at once
    try:
        records, skipped = read_training_records(str(shard), "text", "file_name")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["text"] for r in records] == ["first", "last"]
    assert [s["sample"] for s in skipped] == [f"{shard}#big", f"{shard}#long"]
    assert f".png member is {big:,} bytes, over the cap of {CAP:,}" in skipped[0]["reason"]
    assert ".txt member is 1,001 bytes, over the cap of 1,000" in skipped[1]["reason"]
    assert peak < big // 2, f"{peak:,} bytes traced: the big member was read"


# ---- memory: shard samples stay encoded until the pipeline decodes them one at a time ----------------------------


def test_shard_samples_are_not_decoded_by_the_cli(tmp_path, monkeypatch):
    shard = tmp_path / "s.tar"
    write_shard(shard, [(f"{i}.png", png_bytes((8 + i, 8))) for i in range(3)])
    decoded = []
    real = genvl_images._decode
    monkeypatch.setattr(genvl_images, "_decode", lambda source, name: decoded.append(name) or real(source, name))
    inputs = list(open_inputs(list_image_samples([shard])))
    assert decoded == []
    assert [label for label, _ in inputs] == [f"{shard}#{i}" for i in range(3)]
    assert all(isinstance(image, EncodedImage) and image.name == label for label, image in inputs)
    assert load_image(inputs[2][1]).size == (10, 8) and decoded == [f"{shard}#2"]


# ---- file names that would split a `path<TAB>caption` line -------------------------------------------------------


@pytest.mark.parametrize(
    "text, printed",
    [
        ("photos/a b.png", "photos/a b.png"),
        ("caf\u00e9/\u4e2d.png", "caf\u00e9/\u4e2d.png"),
        ("C:\\photos\\a.png", "C:\\photos\\a.png"),  # nothing to escape: backslashes as they are
        ("a\tb.png", "a\\tb.png"),
        ("a\nb.png", "a\\nb.png"),
        ("a\r\nb.png", "a\\r\\nb.png"),
        ("a\x00\x1b\x7fb", "a\\x00\\x1b\\x7fb"),
        ("a\x85\x9fb", "a\\x85\\x9fb"),  # C1 controls; U+0085 is a line break to str.splitlines
        ("a\u2028b", "a\\u2028b"),
        ("dir\\x\ty", "dir\\\\x\\ty"),  # once anything is escaped, a backslash is too
        ("caf\udce9.png", "caf\\xe9.png"),  # a file name byte that is not UTF-8, as os.fsdecode gives it
        ("s.tar#key\nwith\tbreaks", "s.tar#key\\nwith\\tbreaks"),
    ],
)
def test_printable_path(text, printed):
    assert printable_path(text) == printed
    assert len(f"{printable_path(text)}\ta caption".splitlines()) == 1
    printable_path(text).encode("utf-8")  # no lone surrogate left to break printing


def test_a_sample_with_too_many_members_is_skipped(tmp_path):
    """Each member under its cap, but a thousand of them under one key would add up to the whole shard."""
    shard = tmp_path / "many.tar"
    with tarfile.open(shard, "w") as tar:
        members = {
            "000000.png": png_bytes((8, 8)),
            "000000.txt": b"a red apple",
            **{f"000000.extra{i}": b"x" * 100 for i in range(20)},
            "000001.png": png_bytes((8, 8)),
            "000001.txt": b"a blue car",
        }
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records, skipped = read_training_records(str(shard), "text", "file_name")
    assert [r["text"] for r in records] == ["a blue car"]
    assert skipped == [{"sample": f"{shard}#000000", "reason": "more than 16 members"}]
