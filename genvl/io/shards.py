"""WebDataset tar shards: brace-expanded names, samples grouped by key, read as a stream.

A shard is a plain tar whose members are `<key>.<ext>`; the members of one sample sit next to each other
(`000017.png`, `000017.txt`, `000017.json`), as img2dataset writes them and open_clip reads them. Shards are
read with the standard library's `tarfile` in streaming mode: nothing is extracted, nothing is seeked.

A member is read into memory only after its size in the tar header is checked against a cap
(`member_byte_cap`), so that one huge member (a 2 GB "image") is refused without being read.
"""

import io
import json
import os
import re
import tarfile
from pathlib import Path

from .images import max_image_pixels
from .outputs import written_atomically
from .paths import check_input_file

# members one sample may hold (an image, a caption, its JSON and a few more are usual)
MAX_SAMPLE_MEMBERS = 16
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")
# an encoded image is rarely larger than its raw pixels, and the largest raw pixel of these formats is 16-bit RGBA
IMAGE_BYTES_PER_PIXEL = 8
IMAGE_MEMBER_SLACK = 2**20  # headers and metadata (EXIF, ICC profile) that a small image may carry
TEXT_MEMBER_BYTES = 16 * 2**20  # captions and JSON records: far above any real one
_SHARD_NAME = re.compile(r"\.(tar|tgz|tar\.gz)$")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar a-001.tar a-002.tar; `{x,y}` lists alternatives; braces may repeat."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds:
        low, high = bounds.groups()
        if int(low) > int(high):
            raise ValueError(f"{pattern}: range {{{body}}} runs backwards")
        width = len(low) if low.startswith("0") or len(low) == len(high) else 0
        choices = [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ValueError(f"{pattern}: expected {{A..B}} or {{x,y,...}} in braces, got {{{body}}}")
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def is_shard_spec(spec) -> bool:
    """Whether `spec` names tar shards (`::`-separated, brace patterns allowed) rather than a folder or image."""
    return all(_SHARD_NAME.search(part) for part in str(spec).split("::"))


def shard_paths(spec) -> list[Path]:
    """The shard files `spec` names, in order; a missing one is an error, not something to skip. A part of the
    spec that names an existing file as it is ("x{1..2}.tar" on disk) is that file, not a brace pattern."""
    parts = str(spec).split("::")
    paths = [Path(p) for part in parts for p in ([part] if os.path.isfile(part) else expand_braces(part))]
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: no such shard{more}")
    return [check_input_file(p, "a tar shard") for p in paths]  # a FIFO or a loop: said so, never opened


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/000017.seg.png` -> (`dir/000017`, `seg.png`): the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def member_byte_cap(ext: str) -> int | None:
    """The most bytes a member `<key>.<ext>` may hold: for an image, IMAGE_BYTES_PER_PIXEL per pixel of the pixel
    limit in force plus IMAGE_MEMBER_SLACK (None when there is no pixel limit); for any other member,
    TEXT_MEMBER_BYTES."""
    if not _is_image(ext):
        return TEXT_MEMBER_BYTES
    limit = max_image_pixels()
    return None if limit is None else IMAGE_BYTES_PER_PIXEL * limit + IMAGE_MEMBER_SLACK


def _is_image(ext: str) -> bool:
    return ext.rpartition(".")[2] in IMAGE_EXTENSIONS  # `seg.png` too: an image, if not the sample's own


def member_too_large(ext: str, size: int) -> str | None:
    """Why a member of `size` bytes (from its tar header) is refused, or None when it is within its cap."""
    cap = member_byte_cap(ext)
    if cap is None or size <= cap:
        return None
    if _is_image(ext):
        return (
            f".{ext} member is {size:,} bytes, over the cap of {cap:,} for an image within the limit of "
            f"{max_image_pixels():,} pixels; raise --max-image-pixels if the shard is trusted"
        )
    return f".{ext} member is {size:,} bytes, over the cap of {cap:,} for a member that is not an image"


def iter_samples(paths, on_error, want=None):
    """Yield the samples of the shards in `paths`, each a dict {"__key__", "__url__", ext: bytes}.

    A shard that breaks off part way (truncated, corrupt) is reported through `on_error(where, reason)` and
    reading goes on with the next shard. A sample with a member over its cap (`member_byte_cap`) is reported as
    `shard#key` and left out; that member is never read. `want(key, ext)`, when given, picks the members to
    read; the others are skipped unread, and a sample none of whose members is picked is not yielded.
    """
    for path in paths:
        sample, refused = None, None
        try:
            with tarfile.open(path, mode="r|*") as tar:
                for member in tar:
                    tar.members.clear()  # tarfile keeps every header it has read: memory would grow per member
                    if not member.isfile():
                        continue
                    key, ext = split_member_name(member.name)
                    if sample is not None and sample["__key__"] != key:
                        yield sample
                        sample = None
                    if key == refused or (want is not None and not want(key, ext)):
                        continue
                    reason = member_too_large(ext, member.size)
                    if reason is not None:
                        sample, refused = None, key
                        on_error(f"{path}#{key}", reason)
                        continue
                    if sample is None:
                        sample = {"__key__": key, "__url__": str(path)}
                    if len(sample) - 2 >= MAX_SAMPLE_MEMBERS:  # each under its cap, but without end together
                        sample, refused = None, key
                        on_error(f"{path}#{key}", f"more than {MAX_SAMPLE_MEMBERS} members")
                        continue
                    sample[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            on_error(str(path), f"shard unreadable past this point ({err})")
            sample = None  # its members may be incomplete
        if sample is not None:
            yield sample


def sample_image(sample: dict) -> bytes:
    """The encoded image of a sample; ValueError when it holds none."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise ValueError(f"no image member (expected one of .{', .'.join(IMAGE_EXTENSIONS)})")


def sample_record(sample: dict, image_column: str, caption_column: str) -> dict:
    """An imagefolder-like record for a sample: its `sample_fields`, `image_column` naming `shard#key`, and the
    encoded image under "image_bytes". Raises ValueError naming what is wrong with the sample."""
    record = sample_fields(sample, caption_column)
    record["image_bytes"] = sample_image(sample)
    record[image_column] = f"{sample['__url__']}#{sample['__key__']}"
    return record


def sample_fields(sample: dict, caption_column: str) -> dict:
    """A sample's text: the `.json` member's fields and the caption (`.txt`, else the JSON's `caption_column`).
    Raises ValueError naming what is wrong with them."""
    record = {}
    if "json" in sample:
        try:
            record = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f".json member is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise ValueError(".json member is not an object")
    if "txt" in sample:
        try:
            record[caption_column] = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(".txt member is not UTF-8") from None
    if not isinstance(record.get(caption_column), str) or not record[caption_column].strip():
        raise ValueError(f"no caption (expected a .txt member or {caption_column!r} in the .json member)")
    return record


def write_shards(records, open_image, pattern: str, samples_per_shard: int, caption_column: str = "text") -> list:
    """Write `records` as shards named `pattern % index` (e.g. `out/train-%06d.tar`): per sample a `.png`, a
    `.txt` caption and a `.json` of the record's other fields. Each shard is written beside its name and
    renamed into place. `open_image(record)` returns the record's PIL image."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    written = []
    for index, start in enumerate(range(0, len(records), samples_per_shard)):
        path = Path(pattern % index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as tmp, tarfile.open(tmp, "w") as tar:
            for number, record in enumerate(records[start : start + samples_per_shard], start):
                image = io.BytesIO()
                open_image(record).save(image, format="PNG")
                fields = {k: v for k, v in record.items() if k not in ("file_name", "image_bytes")}
                members = {
                    "png": image.getvalue(),
                    "txt": record[caption_column].encode(),
                    "json": json.dumps(fields).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{number:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        written.append(path)
    return written


def list_image_samples(paths) -> list[tuple[Path, str]]:
    """(shard, key) of every sample holding an image, in order, from the tar headers alone. An image member over
    its cap (`member_byte_cap`) is an error naming `shard#key`, raised before any image is read."""
    found = []
    for path in paths:
        seen = set()
        try:
            with tarfile.open(path) as tar:
                for member in tar:  # stops at a refused member: its header may claim more than the file holds
                    tar.members.clear()  # tarfile keeps every header it has read: memory would grow per member
                    key, ext = split_member_name(member.name)
                    if not member.isfile() or ext not in IMAGE_EXTENSIONS:
                        continue
                    reason = member_too_large(ext, member.size)
                    if reason is not None:
                        raise ValueError(f"{path}#{key}: {reason}")
                    if key not in seen:
                        seen.add(key)
                        found.append((path, key))
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable tar shard ({err})") from None
    return found


def read_sample_images(refs):
    """Yield the encoded image of each (shard, key) of `refs` (in shard order, as `list_image_samples` gives
    them), reading each run of refs into one shard as a single stream. Only the image members of these samples
    are read; one over its cap is an error naming `shard#key`."""

    def fail(where, reason):
        raise ValueError(f"{where}: {reason}")

    start = 0
    while start < len(refs):
        path, end = refs[start][0], start
        while end < len(refs) and refs[end][0] == path:
            end += 1
        keys = {key for _, key in refs[start:end]}
        for sample in iter_samples([path], fail, want=lambda key, ext: key in keys and ext in IMAGE_EXTENSIONS):
            if sample["__key__"] == refs[start][1]:
                yield sample_image(sample)
                start += 1
                if start == end:
                    break
        if start < end:
            raise ValueError(f"{path}#{refs[start][1]}: sample not found in the shard")
