"""The genvl command line."""

import json
import subprocess
import sys

import pytest

from genvl.cli import main

NO_TORCH = (
    "import sys\n"
    "from genvl.cli import main\n"
    "try:\n"
    "    main({argv!r})\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
    "print('HEAVY' if heavy else 'LIGHT', heavy)\n"
)


@pytest.mark.parametrize("argv", [["--help"], ["caption", "--help"], ["data", "scenes", "--help"], ["--version"]])
def test_help_does_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)
    assert out.stdout.strip().endswith("LIGHT []"), out.stdout + out.stderr


def test_caption_json_records(tiny_pipeline_dir, tmp_path, capsys):
    import random

    from genvl.world import render_scene, sample_scene

    rng = random.Random(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        render_scene(sample_scene(rng), 32).save(paths[-1])
    code = main(
        [
            "caption",
            str(tmp_path),
            "--model",
            str(tiny_pipeline_dir),
            "--beam",
            "3",
            "--num-captions",
            "2",
            "--max-new-tokens",
            "6",
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert all(len(r["captions"]) == 2 and r["captions"][0]["score"] >= r["captions"][1]["score"] for r in records)


def test_sampling_records_per_image_seeds_that_reproduce(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (200, 60 * i, 10)).save(tmp_path / f"img{i}.png")
    args = ["--model", str(tiny_pipeline_dir), "--temperature", "1.5", "--max-new-tokens", "6", "--json", "--quiet"]
    assert main(["caption", str(tmp_path), "--batch-size", "2", *args]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({r["seed"] for r in records}) == 3
    # the last image alone, with its recorded seed, gets the same captions as inside the batched run
    assert main(["caption", records[2]["path"], "--seed", str(records[2]["seed"]), *args]) == 0
    assert json.loads(capsys.readouterr().out)["captions"] == records[2]["captions"]


def test_min_p_samples_and_at_one_keeps_only_the_likeliest_token(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32), (30, 160, 90)).save(tmp_path / "x.png")
    args = ["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), "--max-new-tokens", "8", "--json"]
    assert main([*args, "--quiet"]) == 0
    greedy = json.loads(capsys.readouterr().out)
    assert main([*args, "--quiet", "--min-p", "1", "--seed", "4"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["seed"] == 4 and [c["text"] for c in kept["captions"]] == [c["text"] for c in greedy["captions"]]
    assert main([*args, "--quiet", "--min-p", "0.001", "--seed", "4", "--num-captions", "3"]) == 0
    assert len({c["text"] for c in json.loads(capsys.readouterr().out)["captions"]}) > 1


def test_stop_ends_captions_where_the_pipeline_does(tiny_pipeline_dir, tmp_path, capsys, scene_images):
    from genvl.pipelines.caption import CaptionPipeline

    scene_images[0].save(tmp_path / "x.png")
    args = ["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), "--max-new-tokens", "8", "--quiet"]
    assert main(args) == 0
    free = capsys.readouterr().out.split("\t")[1].strip()
    stop = free.split()[1][:2]
    assert main([*args, "--stop", stop, "--stop", "zzz"]) == 0
    stopped = capsys.readouterr().out.split("\t")[1].strip()
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    assert [stopped] == pipeline([tmp_path / "x.png"], max_new_tokens=8, stop_strings=[stop, "zzz"]).captions[0]
    assert stop in stopped and len(stopped) < len(free)


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--beam", "0"], 2, "--beam"),
        (["--top-p", "1.5"], 2, "--top-p"),
        (["--beam", "2", "--num-captions", "3"], 2, "--num-captions"),
        (["--max-new-tokens", "500"], 2, "--max-new-tokens"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tiny_pipeline_dir, tmp_path, capsys, flags, code, message):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), "--quiet", *flags])
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_missing_image_exits_1(tiny_pipeline_dir, tmp_path, capsys):
    assert main(["caption", str(tmp_path / "nope.png"), "--model", str(tiny_pipeline_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert "nope.png" in err and len(err.splitlines()) == 1


def test_data_scenes_writes_imagefolder(tmp_path, capsys):
    assert main(["data", "scenes", "--out", str(tmp_path), "--num-images", "5", "--split", "val", "--quiet"]) == 0
    lines = (tmp_path / "val" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert all((tmp_path / "val" / json.loads(line)["file_name"]).is_file() for line in lines)


COMMANDS = [
    [],
    ["caption"],
    ["ask"],
    ["data"],
    ["data", "scenes"],
    ["data", "shards"],
    ["eval"],
    ["eval", "caption"],
    ["eval", "vqa"],
    ["eval", "attention"],
    ["eval", "retrieval"],
    ["eval", "t2i"],
    ["generate"],
    ["vary"],
    ["interpolate"],
    ["score"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "genvl")
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert "example" in out and err == ""


def test_version(capsys):
    from genvl import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"genvl {__version__}"


def test_model_takes_a_shipped_pipelines_name_where_no_such_folder_is_here(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    image = Path(__file__).resolve().parent.parent / "examples" / "images" / "a_large_orange_frog_at_the_top.png"
    monkeypatch.chdir(tmp_path)  # a wheel's user: no pipelines/ folder in sight
    assert main(["caption", str(image), "--quiet"]) == 0
    default = capsys.readouterr().out
    assert main(["caption", str(image), "--model", "genvl-caption-wide", "--quiet"]) == 0
    assert capsys.readouterr().out == default
    # a path is only ever a path, and a name nothing ships is no folder
    for name in ("./genvl-caption-small", "genvl-caption-none"):
        assert main(["caption", str(image), "--model", name, "--quiet"]) != 0
        assert f"--model {name}: no such model folder" in capsys.readouterr().err
    (tmp_path / "genvl-caption-small").mkdir()  # a folder of that name here is the one meant
    assert main(["caption", str(image), "--model", "genvl-caption-small", "--quiet"]) != 0


def test_the_checked_model_folder_is_the_one_loaded(monkeypatch):
    """The folder an output must spare and the folder loaded come from one resolution (--model, the variable,
    the default): an empty variable counts as unset for both."""
    from pathlib import Path

    from genvl.cli.ask import DEFAULT_VQA_MODEL, VQA_MODEL_VARIABLE, vqa_model_folder
    from genvl.cli.caption import DEFAULT_CAPTION_MODEL, caption_model_folder
    from genvl.cli.common import model_source
    from genvl.cli.image import DEFAULT_T2I_MODEL, t2i_model_folder

    cases = [
        (caption_model_folder, "GENVL_CAPTION_MODEL", DEFAULT_CAPTION_MODEL),
        (t2i_model_folder, "GENVL_T2I_MODEL", DEFAULT_T2I_MODEL),
        (vqa_model_folder, VQA_MODEL_VARIABLE, DEFAULT_VQA_MODEL),
    ]
    for folder, variable, default in cases:
        for value in ("", "elsewhere/model"):
            monkeypatch.setenv(variable, value)
            loaded = model_source(None, variable, str(default))[0]
            assert folder() == loaded == (Path(value) if value else Path(default))
        assert folder("genvl-caption-tiny").name == "genvl-caption-tiny"


class PanicException(BaseException):
    """What PyO3 raises for a Rust library's panic (a tokenizer regex that exhausts the regex engine's retries)."""


def test_a_native_librarys_panic_is_one_line_not_a_traceback(monkeypatch, capsys):
    import genvl.cli
    from genvl.training.args import run_script

    def panics(*args):
        raise PanicException("Onig: Regex search error: retry-limit-in-match over\nstack backtrace: ...")

    monkeypatch.setattr(genvl.cli, "run_function", lambda args: panics)
    assert main(["caption", "x.png"]) == 1
    assert capsys.readouterr().err == (
        "genvl: error: a native library failed (a tokenizer or weights file it read?): Onig: Regex search error: "
        "retry-limit-in-match over (run with --debug for the traceback)\n"
    )
    with pytest.raises(PanicException):
        main(["caption", "x.png", "--debug"])
    with pytest.raises(SystemExit) as exit_info:
        run_script(panics)
    assert exit_info.value.code == 1 and capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(genvl.cli, "run_function", lambda args: sys.exit)  # other BaseExceptions pass through
    with pytest.raises(SystemExit):
        main(["caption", "x.png"])
