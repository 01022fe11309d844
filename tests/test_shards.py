"""WebDataset tar shards: brace expansion, streaming reads, and bad samples logged, counted and skipped."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from genvl.io.imagefolder import load_images, read_metadata
from genvl.io.shards import (
    expand_braces,
    is_shard_spec,
    list_image_samples,
    read_sample_images,
    shard_paths,
    write_shards,
)
from genvl.training.data import read_training_records
from genvl.world.dataset import write_imagefolder

from .conftest import TINY
from .scripts import recipe

train_captioner = recipe("train_captioner")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("world"), 20, seed=1, split="train", resolution=32)


def pack(folder, pattern, per_shard):
    records = read_metadata(folder)
    return write_shards(records, lambda r: Image.open(folder / r["file_name"]), pattern, per_shard)


def png_bytes(colour="red", size=8):
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def cut_inside(path, member_name):
    """Truncate a tar half way through one member's data, as an interrupted download would."""
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])


def test_brace_expansion():
    assert expand_braces("d/s-{008..011}.tar") == ["d/s-008.tar", "d/s-009.tar", "d/s-010.tar", "d/s-011.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("{9..10}.tar") == ["9.tar", "10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="runs backwards"):
        expand_braces("{5..2}.tar")
    with pytest.raises(ValueError, match=r"expected \{A..B\}"):
        expand_braces("{x}.tar")
    assert is_shard_spec("a/{0..3}.tar::b/c.tar.gz") and not is_shard_spec("data/world/train")


def test_a_shard_whose_own_name_holds_braces_is_read_as_named(tmp_path):
    # a file literally named x{1..2}.tar was expanded to x1.tar and x2.tar, which do not exist
    write_tar(tmp_path / "x{1..2}.tar", [("0.png", png_bytes()), ("0.txt", b"a red square")])
    assert shard_paths(f"{tmp_path}/x{{1..2}}.tar") == [tmp_path / "x{1..2}.tar"]


def test_missing_shard_is_an_error_not_a_skip(tmp_path):
    write_tar(tmp_path / "s-0.tar", [("0.png", png_bytes()), ("0.txt", b"a red square")])
    with pytest.raises(FileNotFoundError, match=r"s-1.tar: no such shard"):
        shard_paths(f"{tmp_path}/s-{{0..1}}.tar")


def test_shards_read_like_the_imagefolder(folder, tmp_path):
    written = pack(folder, str(tmp_path / "train-%03d.tar"), 8)
    assert [p.name for p in written] == ["train-000.tar", "train-001.tar", "train-002.tar"]
    from_folder, skipped_folder = read_training_records(folder, "text", "file_name")
    from_shards, skipped_shards = read_training_records(f"{tmp_path}/train-{{000..002}}.tar", "text", "file_name")
    assert skipped_folder == skipped_shards == []
    assert [r["text"] for r in from_shards] == [r["text"] for r in from_folder]
    assert [r["scene"] for r in from_shards] == [r["scene"] for r in from_folder]
    assert from_shards[9]["file_name"] == f"{tmp_path / 'train-001.tar'}#00000009"
    assert torch.equal(
        load_images(None, from_shards, "file_name", 32), load_images(folder, from_folder, "file_name", 32)
    )


def test_bad_samples_are_logged_counted_and_skipped(tmp_path):
    good, logged = png_bytes(), []
    write_tar(
        tmp_path / "a.tar",
        [
            ("ok1.png", good),
            ("ok1.txt", b"a red square"),
            ("noimage.txt", b"a caption without its image"),
            ("corrupt.png", good[:30]),
            ("corrupt.txt", b"a cut-off image"),
            ("notpng.png", b"this is text, not a png"),
            ("notpng.txt", b"text with an image extension"),
            ("nocaption.png", good),
            ("emptycaption.png", good),
            ("emptycaption.txt", b"   "),
            ("latin1.png", good),
            ("latin1.txt", "caf\u00e9".encode("latin-1")),
            ("badjson.png", good),
            ("badjson.json", b"{not json"),
            ("ok2.png", good),
            ("ok2.json", json.dumps({"text": "a caption from the json"}).encode()),
        ],
    )
    # the second shard breaks off inside its last member
    write_tar(tmp_path / "b.tar", [("ok3.png", good), ("ok3.txt", b"three"), ("cut.png", good), ("cut.txt", b"x")])
    cut_inside(tmp_path / "b.tar", "cut.png")
    records, skipped = read_training_records(f"{tmp_path}/{{a,b}}.tar", "text", "file_name", logged.append)
    assert [r["text"] for r in records] == ["a red square", "a caption from the json", "three"]
    reasons = {s["sample"].rsplit("#", 1)[-1]: s["reason"] for s in skipped}
    assert set(reasons) == {
        "noimage",
        "corrupt",
        "notpng",
        "nocaption",
        "emptycaption",
        "latin1",
        "badjson",
        str(tmp_path / "b.tar"),
    }
    assert "no image member" in reasons["noimage"] and "not a readable image" in reasons["corrupt"]
    assert "not UTF-8" in reasons["latin1"] and "not valid JSON" in reasons["badjson"]
    assert "no caption" in reasons["nocaption"] and "unreadable" in reasons[str(tmp_path / "b.tar")]
    assert len(logged) == len(skipped) and all(line.startswith("skipping ") for line in logged)


def test_imagefolder_bad_samples_are_skipped(folder, tmp_path, monkeypatch):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "000003.png").write_bytes(b"")
    (copy / "000005.png").unlink()
    # between Pillow's limit and twice it Pillow only warns; training refuses it, as the CLI does
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)  # the 32 x 32 scenes stay under it
    Image.new("RGB", (40, 40)).save(copy / "000007.png")
    records, skipped = read_training_records(copy, "text", "file_name")
    reasons = {Path(s["sample"]).name: s["reason"] for s in skipped}
    assert len(records) == 17 and sorted(reasons) == ["000003.png", "000005.png", "000007.png"]
    assert "not a readable image" in reasons["000003.png"] and "no such image file" in reasons["000005.png"]
    assert "decompression bomb" in reasons["000007.png"]


def test_no_usable_samples_is_an_error(tmp_path):
    write_tar(tmp_path / "a.tar", [("x.txt", b"only text")])
    with pytest.raises(ValueError, match=r"a.tar: no usable samples \(1 skipped\)"):
        read_training_records(str(tmp_path / "a.tar"), "text", "file_name")


def test_sample_images_stream_in_order(folder, tmp_path):
    written = pack(folder, str(tmp_path / "s-%d.tar"), 7)
    refs = list_image_samples(written)
    assert len(refs) == 20 and refs[7] == (written[1], "00000007")
    share = refs[5:16]  # crosses two shard boundaries
    images = [Image.open(io.BytesIO(data)) for data in read_sample_images(share)]
    expected = [Image.open(folder / f"{i:06d}.png") for i in range(5, 16)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, expected)) and len(images) == 11


def tiny_captioner_flags(tmp_path) -> list[str]:
    """The flags of a tiny captioner run at 32 px (its architecture written to `tmp_path`), every step logged."""
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY.to_dict()))
    flags = ["--architecture", str(arch), "--resolution", "32", "--vocab_size", "300"]
    return flags + ["--lr_warmup_steps", "1", "--logging_steps", "1"]


def test_captioner_trains_the_same_on_shards(folder, tmp_path):
    pack(folder, str(tmp_path / "train-%02d.tar"), 6)
    cut_inside(tmp_path / "train-03.tar", "00000018.png")  # a shard broken off part way
    tiny = tiny_captioner_flags(tmp_path)

    def args(data, out):
        return [
            "--train_data_dir",
            str(data),
            "--output_dir",
            str(out),
            *tiny,
            "--train_batch_size",
            "6",
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "10",
        ]

    from_shards = train_captioner.main(args(f"{tmp_path}/train-{{00..03}}.tar", tmp_path / "a"))
    summary = json.loads((tmp_path / "a" / "data_summary.json").read_text())
    assert summary["skipped"] == 1 and summary["samples"] == 18
    # the same 18 samples as an imagefolder train the same
    trimmed = tmp_path / "trimmed"
    trimmed.mkdir()
    lines = (folder / "metadata.jsonl").read_text().splitlines()[:18]
    (trimmed / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = json.loads(line)["file_name"]
        (trimmed / name).write_bytes((folder / name).read_bytes())
    assert train_captioner.main(args(trimmed, tmp_path / "b")) == pytest.approx(from_shards, rel=1e-5)


# ---- streaming: a run's memory does not grow with its data ----------------------------------------------------


def keys_stream(pattern, process=0, processes=1, seed=0, buffer=4, skipped=None):
    """A ShardStream whose samples decode to their keys; `skipped` collects what it logs."""
    from genvl.training.stream import ShardStream

    def decode(record):
        if record["text"].startswith("bad"):
            raise ValueError("a bad caption")
        return record["file_name"].split("#")[1]

    return ShardStream(
        pattern,
        decode,
        "text",
        "file_name",
        seed,
        process,
        processes,
        buffer,
        None if skipped is None else skipped.append,
    )


def test_stream_splits_processes_without_duplicates_and_resumes_in_place(folder, tmp_path):
    pack(folder, str(tmp_path / "s-%02d.tar"), 6)  # 20 samples in 4 shards
    pattern = f"{tmp_path}/s-{{00..03}}.tar"
    one = keys_stream(pattern).take(20)
    assert sorted(one) == sorted(f"{i:08d}" for i in range(20))  # an epoch: every sample once
    assert one != sorted(one)  # shuffled
    assert keys_stream(pattern).take(20) == one and keys_stream(pattern, seed=1).take(20) != one  # by the seed
    first, second = keys_stream(pattern, 0, 2).take(10), keys_stream(pattern, 1, 2).take(10)
    assert not set(first) & set(second) and sorted(first + second) == sorted(one)
    # the next epoch is another order of the same samples
    stream = keys_stream(pattern)
    stream.take(20)
    assert sorted(stream.take(20)) == sorted(one) and stream.epoch == 1
    # resumed from its saved place, a stream goes on as an uninterrupted one does, mid-epoch and across epochs
    for taken in (7, 27):
        stream = keys_stream(pattern)
        stream.take(taken)
        resumed = keys_stream(pattern)
        resumed.restore(stream.state())
        assert resumed.take(9) == stream.take(9)


def test_stream_skips_and_counts_bad_samples(tmp_path):
    members = []
    for i in range(6):
        caption = "bad one" if i == 2 else f"a red ball {i}"
        members += [(f"{i:04d}.png", png_bytes()), (f"{i:04d}.txt", caption.encode())]
    members += [("0006.txt", b"no image")]
    write_tar(tmp_path / "bad.tar", members)
    skipped = []
    stream = keys_stream(str(tmp_path / "bad.tar"), skipped=skipped)
    assert sorted(stream.take(5)) == ["0000", "0001", "0003", "0004", "0005"]
    assert sorted(entry["sample"][-4:] for entry in stream.skipped) == ["0002", "0006"] and len(skipped) == 2
    assert stream.skipped[0]["reason"] in (
        "a bad caption",
        "no image member (expected one of .png, .jpg, .jpeg, .webp, .bmp)",
    )
    # later epochs meet the same bad samples again: logged and counted once (they were listed again every epoch)
    again = keys_stream(str(tmp_path / "bad.tar"), skipped=[])
    again.take(5 * 4)
    assert again.epoch >= 3 and len(again.skipped) == 2
    # a resumed stream reads the bad samples before its place again without reporting them twice
    resumed = keys_stream(str(tmp_path / "bad.tar"), skipped=[])
    resumed.restore(stream.state())
    assert resumed.skipped == [] and resumed.take(3) == stream.take(3)
    write_tar(tmp_path / "all_bad.tar", [("0000.txt", b"bad"), ("0000.png", png_bytes())])
    with pytest.raises(ValueError, match="no usable samples"):
        keys_stream(str(tmp_path / "all_bad.tar")).take(1)


def test_captioner_streams_shards_and_resumes_to_the_same_losses(folder, tmp_path):
    pack(folder, str(tmp_path / "train-%02d.tar"), 6)
    cut_inside(tmp_path / "train-03.tar", "00000018.png")  # a shard broken off part way: logged, skipped
    tiny = tiny_captioner_flags(tmp_path)

    def args(out, steps, *extra):
        return [
            "--train_data_dir",
            f"{tmp_path}/train-{{00..03}}.tar",
            "--streaming",
            "--output_dir",
            str(out),
            *tiny,
            "--train_batch_size",
            "5",
            "--max_train_steps",
            str(steps),
            "--checkpointing_steps",
            "3",
            "--augment",
            "flip,squash,letterbox,light",
            *extra,
        ]

    whole = train_captioner.main(args(tmp_path / "whole", 6))  # 30 samples of 18: into the second epoch
    assert len(whole) == 6 and whole[-1] < whole[0]
    summary = json.loads((tmp_path / "whole" / "data_summary.json").read_text())
    assert summary["streamed"] and summary["samples_taken"] == 30 and summary["skipped"] >= 1
    marker = json.loads((tmp_path / "whole" / "checkpoint-3" / "checkpoint_complete.json").read_text())
    assert marker["data"] == [{"epoch": 0, "consumed": 15}]
    # stopped at step 3 and resumed, it trains on the same samples to the same losses
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    for name in ("tokenizer", "train_config.json"):
        source = tmp_path / "whole" / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / "resumed" / name)
    resumed = train_captioner.main(args(tmp_path / "resumed", 6, "--resume_from_checkpoint", "latest"))
    assert resumed == pytest.approx(whole, rel=1e-5)
    with pytest.raises(SystemExit) as exit_info:  # a usage error, before anything is read
        train_captioner.main([*args(tmp_path / "x", 1)[2:], "--train_data_dir", str(folder)])
    assert exit_info.value.code == 2


def test_autoencoder_streams_shards_and_other_recipes_refuse_to(folder, tmp_path):
    pack(folder, str(tmp_path / "train-%02d.tar"), 6)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"autoencoder_channels": [8, 8], "autoencoder_norm_groups": 4}))
    shards = f"{tmp_path}/train-{{00..03}}.tar"
    common = ["--train_data_dir", shards, "--streaming", "--resolution", "32", "--train_batch_size", "8"]
    common += ["--max_train_steps", "4", "--checkpointing_steps", "2", "--lr_warmup_steps", "1"]
    out = tmp_path / "vae_run"
    losses = recipe("train_autoencoder").main([*common, "--architecture", str(arch), "--output_dir", str(out)])
    assert len(losses) == 4
    marker = json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert marker["data"] == [{"epoch": 0, "consumed": 16}]  # 2 steps of 8 of the 20 samples
    assert json.loads((out / "data_summary.json").read_text())["samples_taken"] == 32
    config = json.loads((out / "vae" / "config.json").read_text())
    assert 0 < config["scaling_factor"] < 1e3
    with pytest.raises(ValueError, match="--streaming: this recipe holds its data in memory"):
        recipe("train_text_tower").main([*common, "--output_dir", str(tmp_path / "text_tower")])
    # the judge streams too, its targets made from each batch's scene graphs (flipped and shifted with the images)
    judge_args = [*common, "--output_dir", str(tmp_path / "judge"), "--width", "8", "--eval_data_dir", ""]
    losses = recipe("train_judge").main([*judge_args, "--augment", "flip,shift,light"])
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    assert json.loads((tmp_path / "judge" / "data_summary.json").read_text())["samples_taken"] == 32
