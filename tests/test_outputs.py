"""Output files are written whole or not at all, and the CLI's quiet runs are quiet down to file descriptor 2."""

import json
import os

import pytest
from PIL import Image

from genvl.cli import main
from genvl.io.outputs import check_output_file, written_atomically
from genvl.world.dataset import write_imagefolder


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with written_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("failed half way")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with written_atomically(path) as tmp:
        # hidden, beside it, and this process's own: not with_suffix ("report.tmp" could be someone else's file)
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.")
        assert tmp.name.endswith(f"-{os.getpid()}.tmp")
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_write_errors_name_the_output_and_other_errors_pass_through(tmp_path):
    (tmp_path / "taken").mkdir()  # renaming a file onto a folder fails
    with pytest.raises(OSError, match=r"^--output .*taken: cannot write it") as info:
        with written_atomically(tmp_path / "taken", "--output") as tmp:
            tmp.write_text("x")
    assert ".tmp" not in str(info.value) and not (tmp_path / "taken.tmp").exists()
    with pytest.raises(FileNotFoundError, match="input.png"):  # an input that failed is not blamed on the output
        with written_atomically(tmp_path / "out.json") as tmp:
            open(tmp_path / "input.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "a.json", "--output") == tmp_path / "a.json"
    with pytest.raises(IsADirectoryError, match="--output"):
        check_output_file(tmp_path, "--output")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        check_output_file(tmp_path / "missing" / "a.json", "--output")


def test_quiet_eval_and_shards_print_nothing_on_stderr(tiny_pipeline_dir, tmp_path, capfd):
    """capfd reads file descriptor 2, where the Java PTB tokenizer of the caption metrics logs."""
    from genvl.world.dataset import write_imagefolder

    data = write_imagefolder(tmp_path / "scenes", 3, seed=0, split="test", resolution=32)
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "eval",
                "caption",
                "--data",
                str(data),
                "--model",
                str(tiny_pipeline_dir),
                "--quiet",
                "--max-new-tokens",
                "4",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    out, err = capfd.readouterr()
    assert err == ""
    assert json.loads(out) == json.loads(report.read_text()) and json.loads(out)["num_images"] == 3
    assert main(["data", "shards", "--data", str(data), "--out", str(tmp_path / "s-%d.tar"), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert out.split() == [str(tmp_path / "s-0.tar")] and err == ""
    assert main(["data", "shards", "--data", str(data), "--out", str(tmp_path / "s-%d.tar")]) == 0
    assert "packed 3 samples into 1 shard in" in capfd.readouterr().err


def test_shard_names_that_collide_are_refused_before_any_is_written(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "data", 12, seed=0, split="train", resolution=16)
    out = tmp_path / "shards"
    out.mkdir()
    for pattern in ("x-%.1s.tar", "x.tar%.0s", "x-%d.tar"):  # shards 1 and 10 alike; every one alike; no field
        flags = ["data", "shards", "--data", str(data), "--out", str(out / pattern), "--samples-per-shard", "1"]
        if pattern == "x-%d.tar":
            assert main(flags) == 0 and len(list(out.iterdir())) == 12
            continue
        with pytest.raises(SystemExit) as exit_info:
            main(flags)
        assert exit_info.value.code == 2 and "gives two shards one name" in capsys.readouterr().err
        assert not list(out.iterdir())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "20000"], "argument --resolution: must be in [16, 1024], got 20000"),
        (["--resolution", "1"], "argument --resolution: must be in [16, 1024], got 1"),
        (["--require", "unicorn"], "argument --require: no object 'unicorn' in the world"),
    ],
)
def test_data_scenes_flags_out_of_range_are_usage_errors_before_any_work(flags, message, tmp_path, capsys):
    # a side of 20,000 px took 20 GB of memory and more before anything said no
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "scenes", "--out", str(tmp_path / "d"), "--num-images", "1", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_png_name_that_cannot_be_written_is_refused_before_any_image_is_made(t2i_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a_red_apple-1-1.png").mkdir(parents=True)  # the name of the run's second image
    argv = ["generate", "a red apple", "-n", "2", "--seed", "0", "--steps", "1", "--out", str(out), "--model"]
    assert main([*argv, str(t2i_dir)]) == 1
    assert "a_red_apple-1-1.png: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a_red_apple-1-1.png"]  # the first was not written either


def test_attention_map_and_output_naming_one_file_is_a_usage_error(tiny_pipeline_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    same = tmp_path / "same.png"
    argv = ["caption", str(image), "--model", str(tiny_pipeline_dir), "--attention-map", str(same), "--output"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"{tmp_path}/./same.png"])
    assert exit_info.value.code == 2 and "name one file" in capsys.readouterr().err and not same.exists()


def test_eval_reports_hold_no_nan_that_strict_json_readers_refuse(tiny_pipeline_dir, tmp_path, capsys):
    data = write_imagefolder(tmp_path / "data", 2, seed=0, split="test", resolution=32)  # layouts with no scene
    report = tmp_path / "report.json"
    argv = ["eval", "caption", "--model", str(tiny_pipeline_dir), "--data", str(data), "--quiet", "--output"]
    assert main([*argv, str(report)]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert printed == json.loads(report.read_text(), parse_constant=refuse)
    assert None in printed.values()  # a score over no scenes of its kind


def test_quiet_fp16_runs_print_no_library_notices(tmp_path, capfd):
    # diffusers warned twice that fp16 pipelines cannot run on the CPU, where genvl's do
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    assert main(["caption", str(image), "--model", "genvl-caption-tiny", "--dtype", "fp16", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.startswith(str(image))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(file_name=5), "column 'file_name' must be a file name, got int"),
        (lambda r: r.update(text=["a", "b"]), "column 'text' must be a string, got list"),
        (lambda r: r.update(captions=None), "column 'captions' must be a list of strings, got null"),
        (lambda r: r.update(captions=[1, 2]), "column 'captions' must be a list of strings, got [1, 2]"),
        (lambda r: r.update(scene=None), "column 'scene' must be a scene graph (an object), got NoneType"),
        (lambda r: 5, "expected a JSON object, got int"),
        (lambda r: r.update(file_name="../../x.png"), "column 'file_name' must name a file inside the folder"),
        (lambda r: r.update(file_name="/etc/hosts"), "column 'file_name' must name a file inside the folder"),
    ],
)
def test_metadata_records_of_the_wrong_types_are_named_by_line(change, message, tmp_path, capsys):
    # each ended in "unexpected TypeError" naming no file, in training, eval and data shards, or trained silently
    # on the letters of a string
    data = write_imagefolder(tmp_path / "data", 3, seed=0, split="train", resolution=16)
    lines = (data / "metadata.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    changed = change(record)
    lines[1] = json.dumps(record if changed is None else changed)
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    commands = [
        ["eval", "caption", "--data", str(data), "--model", "genvl-caption-tiny", "--quiet"],
        ["data", "shards", "--data", str(data), "--out", str(tmp_path / "s-%d.tar")],
        ["train", "captioner", "--train_data_dir", str(data), "--output_dir", str(tmp_path / "run")],
    ]
    for argv in commands[1:] if "'text'" in message else commands:  # eval reads any column as references
        assert main(argv) == 1
        assert f"metadata.jsonl:2: {message}" in capsys.readouterr().err
    assert not list(tmp_path.glob("s-*.tar"))


def test_a_missing_image_is_found_before_any_shard_is_written(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "data", 6, seed=0, split="train", resolution=16)
    (data / "000004.png").unlink()
    argv = ["data", "shards", "--data", str(data), "--out", str(tmp_path / "s-%d.tar"), "--samples-per-shard", "2"]
    assert main(argv) == 1
    assert "000004.png: no such image file" in capsys.readouterr().err and not list(tmp_path.glob("s-*.tar"))
