"""Bad input on the command line: each case gets one line on stderr naming the file or flag, exit code 2 for
usage errors and 1 for runtime failures, no traceback, and no half-written output."""

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genvl.cli import main
from genvl.io.images import load_image


def run(argv, capsys):
    """(exit code, stdout, stderr) of `genvl argv`."""
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene() -> Image.Image:
    image = Image.new("RGB", (48, 40), (30, 120, 200))
    image.paste((220, 40, 40), (10, 10, 30, 30))
    return image


# ---- unreadable images: exit 1, naming the file --------------------------------------------------------------

BROKEN_IMAGES = {
    "zero_byte.png": lambda: b"",
    "truncated.png": lambda: png_bytes(scene())[:60],
    "corrupt.jpg": lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
    "text.jpg": lambda: b"this is not an image\n",
    "random.webp": lambda: bytes(range(200)),
}


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_unreadable_image_is_named(name, tiny_pipeline_dir, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(BROKEN_IMAGES[name]())
    code, out, err = run(["caption", str(path), "--model", str(tiny_pipeline_dir), "--quiet"], capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(path), "not a readable image")


def test_unreadable_image_among_good_ones_writes_no_output_file(tiny_pipeline_dir, tmp_path, capsys):
    scene().save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    output = tmp_path / "captions.jsonl"
    code, _, err = run(
        [
            "caption",
            str(tmp_path),
            "--model",
            str(tiny_pipeline_dir),
            "--output",
            str(output),
            "--batch-size",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 1
    assert_one_line_error(err, "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


# ---- decompression bombs: Pillow's guard stays on, its limit configurable ---------------------------------------


@pytest.mark.parametrize("limit", [1000, 7000])  # over twice the limit Pillow raises, between once and twice it warns
def test_decompression_bomb_is_refused(limit, tiny_pipeline_dir, tmp_path, capsys):
    path = tmp_path / "bomb.png"
    Image.new("1", (100, 100)).save(path)  # 10,000 pixels in a few hundred bytes
    code, out, err = run(
        ["caption", str(path), "--model", str(tiny_pipeline_dir), "--max-image-pixels", str(limit), "--quiet"], capsys
    )
    assert code == 1 and out == ""
    assert_one_line_error(err, str(path), "--max-image-pixels")


def test_raising_the_pixel_limit_lets_a_trusted_image_through(tiny_pipeline_dir, tmp_path, capsys):
    path = tmp_path / "big.png"
    Image.new("1", (100, 100)).save(path)
    code, out, _ = run(
        ["caption", str(path), "--model", str(tiny_pipeline_dir), "--max-image-pixels", "20000", "--quiet"], capsys
    )
    assert code == 0 and out.startswith(str(path))


@pytest.fixture(autouse=True)
def restore_pixel_limit():
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


# ---- unusual but valid images: converted deliberately, then captioned ------------------------------------------


def exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path, exif=exif)


def palette_with_transparency(path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path, transparency=0)


VALID_IMAGES = {
    # name: (writer, (x, y) pixel to check, its expected RGB value, expected size)
    "palette.png": (
        lambda p: scene().convert("P", palette=Image.Palette.ADAPTIVE).save(p),
        (15, 15),
        (220, 40, 40),
        (48, 40),
    ),
    "palette_transparent.png": (palette_with_transparency, (0, 0), (255, 255, 255), (16, 16)),
    "la.png": (lambda p: Image.new("LA", (8, 8), (0, 0)).save(p), (0, 0), (255, 255, 255), (8, 8)),
    "rgba.png": (lambda p: Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(p), (0, 0), (10, 20, 30), (8, 8)),
    "cmyk.jpg": (
        lambda p: Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(p, quality=100),
        (0, 0),
        (255, 255, 255),
        (8, 8),
    ),
    "grey16.png": (lambda p: Image.new("I;16", (8, 8), 65535).save(p), (0, 0), (255, 255, 255), (8, 8)),
    "exif_rotated.jpg": (exif_rotated, None, None, (20, 40)),
    "one_pixel.png": (lambda p: Image.new("RGB", (1, 1), (0, 255, 0)).save(p), (0, 0), (0, 255, 0), (1, 1)),
    "large.png": (lambda p: Image.new("RGB", (4000, 3000), (9, 9, 9)).save(p), (3999, 2999), (9, 9, 9), (4000, 3000)),
}


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_unusual_images_are_converted_and_captioned(name, tiny_pipeline_dir, tmp_path, capsys):
    write, pixel, value, size = VALID_IMAGES[name]
    path = tmp_path / name
    write(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == size
    if pixel is not None:
        assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel(pixel), value))
    code, out, err = run(["caption", str(path), "--model", str(tiny_pipeline_dir), "--json", "--quiet"], capsys)
    assert code == 0 and err == ""
    assert json.loads(out)["path"] == str(path)


# ---- prompts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["generate", ""], "PROMPT is empty"),
        (["generate", " \t\n "], "PROMPT is empty"),
        (["generate", "\udcff\udcfe apple"], "PROMPT is not valid UTF-8"),  # how Python passes non-UTF-8 argv bytes
        (["generate", "an apple", "--negative", "\udcff"], "--negative is not valid UTF-8"),
        (["interpolate", "an apple", "   "], "END is empty"),
    ],
)
def test_bad_prompts_are_usage_errors(argv, fragment, t2i_dir, tmp_path, capsys):
    code, out, err = run(
        [*argv, "--model", str(t2i_dir), "--steps", "2", "--out", str(tmp_path / "out"), "--quiet"], capsys
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "out").exists()


def test_bad_score_texts_and_caption_prefix_are_usage_errors(t2i_dir, tiny_pipeline_dir, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    code, _, err = run(["score", str(tmp_path / "x.png"), "an apple", "\udcff", "--model", str(t2i_dir)], capsys)
    assert code == 2
    assert_one_line_error(err, "TEXT is not valid UTF-8")
    code, _, err = run(
        ["caption", str(tmp_path / "x.png"), "--prefix", "\udcff", "--model", str(tiny_pipeline_dir)], capsys
    )
    assert code == 2
    assert_one_line_error(err, "--prefix is not valid UTF-8")


def test_overlong_prompt_is_truncated_with_a_warning(t2i_dir, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    long_text = "a red apple next to " * 40
    code, out, err = run(["score", str(tmp_path / "x.png"), long_text, "a car", "--model", str(t2i_dir)], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    assert err.startswith("genvl: warning:") and "only its first" in err and len(err.splitlines()) == 1


def test_non_utf8_argv_bytes_from_a_shell(t2i_dir, tmp_path):
    scene().save(tmp_path / "x.png")
    argv = [sys.executable, "-m", "genvl", "score", str(tmp_path / "x.png"), b"\xff\xfe apple", "--model", str(t2i_dir)]
    result = subprocess.run(argv, capture_output=True)
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().strip() == "genvl: error: TEXT is not valid UTF-8 text"


# ---- paths ------------------------------------------------------------------------------------------------------


def test_missing_paths_and_empty_folders_are_named(tiny_pipeline_dir, tmp_path, capsys):
    code, _, err = run(["caption", str(tmp_path / "nope.png"), "--model", str(tiny_pipeline_dir)], capsys)
    assert code == 1
    assert_one_line_error(err, "nope.png", "no such file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, _, err = run(["caption", str(tmp_path / "empty"), "--model", str(tiny_pipeline_dir)], capsys)
    assert code == 1
    assert_one_line_error(err, "empty", "holds no images")
    code, _, err = run(
        ["caption", str(tmp_path / "empty" / "notes.txt"), "--model", str(tmp_path / "no_model")], capsys
    )
    assert code == 1
    assert_one_line_error(err, "no_model")


def test_output_in_a_missing_folder_is_named(tiny_pipeline_dir, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    output = tmp_path / "missing" / "captions.jsonl"
    code, _, err = run(
        ["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), "--output", str(output), "--quiet"],
        capsys,
    )
    assert code == 1
    assert_one_line_error(err, "--output", "missing")


def output_cases(tmp_path):
    """(--output value, what the error names): a folder, and a file name under a file."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    return [(tmp_path / "folder", "is a folder"), (tmp_path / "file.txt" / "out.json", "no such folder")]


@pytest.mark.parametrize(
    "command",
    [
        ["caption", "IMAGE"],
        ["eval", "caption", "--data", "DATA"],
        ["eval", "retrieval", "--data", "DATA"],
        ["eval", "t2i", "--data", "DATA"],
    ],
)
def test_unwritable_output_is_refused_before_any_work(command, tmp_path, capsys):
    """The model folder does not exist: --output is checked first, so no run is lost at its end."""
    scene().save(tmp_path / "x.png")
    argv = [str(tmp_path / "x.png") if a == "IMAGE" else str(tmp_path) if a == "DATA" else a for a in command]
    for output, fragment in output_cases(tmp_path):
        before = sorted(tmp_path.rglob("*"))
        code, out, err = run([*argv, "--model", str(tmp_path / "no_model"), "--output", str(output)], capsys)
        assert code == 1 and out == ""
        assert_one_line_error(err, f"--output {output}", fragment)
        assert sorted(tmp_path.rglob("*")) == before


def test_generate_out_that_is_a_file_is_named(t2i_dir, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code, out, err = run(
        ["generate", "an apple", "--model", str(t2i_dir), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"],
        capsys,
    )
    assert code == 1 and out == ""
    assert_one_line_error(err, "--out", "is a file")
    assert (tmp_path / "out").read_text() == "a file" and len(list(tmp_path.iterdir())) == 1


def test_output_file_that_cannot_be_created_is_named(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    """A write that fails after the checks (here: open() refused) names --output, not the temporary file."""
    import builtins

    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tmp") and "w" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    scene().save(tmp_path / "x.png")
    monkeypatch.setattr(builtins, "open", refusing_open)
    code, out, err = run(
        [
            "caption",
            str(tmp_path / "x.png"),
            "--model",
            str(tiny_pipeline_dir),
            "--quiet",
            "--output",
            str(tmp_path / "out.jsonl"),
        ],
        capsys,
    )
    assert code == 1 and out == ""
    assert_one_line_error(err, f"--output {tmp_path / 'out.jsonl'}: cannot write it (Permission denied)")
    assert ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


# ---- tampered model folders: refused, naming the file -----------------------------------------------------------


def tamper_weights(path, change):
    state = load_file(path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})


def first_matrix(state):
    return next(key for key, value in state.items() if value.ndim == 2)


TAMPERINGS = {
    # name: (component folder, change to the folder, fragment of the error)
    "weights_deleted": ("model", lambda d: (d / "model.safetensors").unlink(), "no weights"),
    "tensor_missing": (
        "model",
        lambda d: tamper_weights(d / "model.safetensors", lambda s: s.pop(first_matrix(s))),
        "the weights lack",
    ),
    "tensor_reshaped": (
        "model",
        lambda d: tamper_weights(
            d / "model.safetensors", lambda s: s.update({first_matrix(s): s[first_matrix(s)][:, :-1].contiguous()})
        ),
        "has shape",
    ),
    "tensor_extra": (
        "model",
        lambda d: tamper_weights(d / "model.safetensors", lambda s: s.update(x=torch.ones(2))),
        "the weights hold x",
    ),
    "config_more_layers": (
        "model",
        lambda d: edit_json(d / "config.json", lambda c: c["decoder"].update(n_layer=c["decoder"]["n_layer"] + 1)),
        "the weights lack",
    ),
    "pickle_weights_not_tensors": (
        "model",
        lambda d: (
            torch.save({**load_file(d / "model.safetensors"), "step": Ellipsis}, d / "pytorch_model.bin"),
            (d / "model.safetensors").unlink(),
        ),
        "pickle files are refused unless they hold tensors only",
    ),
    "pickle_beside_safetensors": ("model", lambda d: torch.save({}, d / "extra.pt"), "pickle files are refused"),
    "safetensors_truncated": (
        "model",
        lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"),
        "not a readable safetensors",
    ),
    "index_not_json": ("", lambda d: (d / "model_index.json").write_text("{oops"), "not valid JSON"),
    "config_not_json": ("model", lambda d: (d / "config.json").write_text("[1, 2"), "not valid JSON"),
    "component_missing": ("", lambda d: shutil.rmtree(d / "model"), "no such folder"),
}


def edit_json(path, change):
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_captioner_folder_is_refused(name, tiny_pipeline_dir, tmp_path, capsys):
    component, change, fragment = TAMPERINGS[name]
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    change(folder / component)
    scene().save(tmp_path / "x.png")
    code, out, err = run(["caption", str(tmp_path / "x.png"), "--model", str(folder), "--quiet"], capsys)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(folder), fragment)


@pytest.mark.parametrize(
    "component, weights", [("decoder", "diffusion_pytorch_model.safetensors"), ("clip", "model.safetensors")]
)
def test_tampered_text_to_image_component_is_refused(component, weights, t2i_dir, tmp_path, capsys):
    folder = tmp_path / "t2i"
    shutil.copytree(t2i_dir, folder)
    tamper_weights(folder / component / weights, lambda s: s.pop(sorted(s)[0]))
    code, out, err = run(
        ["generate", "an apple", "--model", str(folder), "--steps", "2", "--out", str(tmp_path / "out"), "--quiet"],
        capsys,
    )
    assert code == 1 and out == ""
    assert_one_line_error(err, str(folder / component), "the weights lack")
    assert not (tmp_path / "out").exists()


# ---- nonsensical flags: exit 2, naming the flag ----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--beam", "0"], "--beam"),
        (["--beam", "-3"], "--beam"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-p", "0"], "--top-p"),
        (["--min-p", "1.5"], "--min-p"),
        (["--stop", ""], "--stop"),
        (["--top-k", "-1"], "--top-k"),
        (["--temperature", "0"], "--temperature"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--max-new-tokens", "500"], "--max-new-tokens"),
        (["--beam", "2", "--num-captions", "3"], "--num-captions"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-image-pixels", "-5"], "--max-image-pixels"),
        (["--beam", "two"], "invalid int value"),
        (["--dtype", "fp8"], "--dtype"),
        (["--temperature", "1", "--seed", str(2**64)], "--seed"),  # past what torch.Generator takes
        (["--temperature", "1", "--seed", "-1"], "--seed"),
    ],
)
def test_bad_caption_flags_are_usage_errors(flags, fragment, tiny_pipeline_dir, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    code, out, err = run(["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), *flags], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "-1"], "--top-k"),
        (["--temperature", "nan"], "--temperature"),
        (["--repetition-penalty", "inf"], "--repetition-penalty"),
        (["--length-penalty", "nan"], "--length-penalty"),
        (["--min-new-tokens", "-1"], "--min-new-tokens"),
        (["--no-repeat-ngram-size", "-2"], "--no-repeat-ngram-size"),
        (["--batch-size", str(2**70)], "--batch-size"),  # islice failed on it after the model had loaded
    ],
)
def test_bad_caption_values_are_refused_before_the_model_loads(flags, fragment, tmp_path, capsys):
    scene().save(tmp_path / "x.png")
    code, out, err = run(["caption", str(tmp_path / "x.png"), "--model", str(tmp_path / "no_model"), *flags], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--steps", "-1"], "--steps"),
        (["--steps", "0"], "--steps"),
        (["--decoder-steps", "-4"], "--decoder-steps"),
        (["-n", "0"], "--num-images"),
        (["--guidance", "-1"], "--guidance"),
        (["--guidance", "nan"], "--guidance"),  # NaN and inf guidance made black images
        (["--decoder-guidance", "inf"], "--decoder-guidance"),
        (["--prior-guidance", "-inf"], "--prior-guidance"),
        (["--seed", str(2**63)], "--seed"),
        (["--scheduler", "euler"], "--scheduler"),
    ],
)
def test_bad_generate_flags_are_usage_errors(flags, fragment, t2i_dir, tmp_path, capsys):
    code, out, err = run(
        ["generate", "an apple", "--model", str(t2i_dir), "--out", str(tmp_path / "out"), *flags], capsys
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "out").exists()


# ---- interruptions and surprises ---------------------------------------------------------------------------------


def test_interrupted_caption_run_leaves_no_output(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    from genvl.pipelines.caption import CaptionPipeline

    for i in range(3):
        scene().save(tmp_path / f"{i}.png")
    calls = []

    def interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    original = CaptionPipeline.__call__
    monkeypatch.setattr(CaptionPipeline, "__call__", interrupt)
    output = tmp_path / "out" / "captions.jsonl"
    output.parent.mkdir()
    code, _, err = run(
        [
            "caption",
            str(tmp_path),
            "--model",
            str(tiny_pipeline_dir),
            "--output",
            str(output),
            "--batch-size",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 130 and err.strip() == "genvl: interrupted"
    assert list(output.parent.iterdir()) == []


def test_unexpected_errors_are_one_line_unless_debugging(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    from genvl.pipelines.caption import CaptionPipeline

    def broken(self, *args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(CaptionPipeline, "__call__", broken)
    scene().save(tmp_path / "x.png")
    argv = ["caption", str(tmp_path / "x.png"), "--model", str(tiny_pipeline_dir), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_line_error(err, "unexpected KeyError", "--debug")
    with pytest.raises(KeyError):
        main([*argv, "--debug"])


def test_closed_stdout_is_not_an_error(tiny_pipeline_dir, tmp_path):
    for i in range(40):
        scene().save(tmp_path / f"{i:02d}.png")
    command = (
        f"{sys.executable} -m genvl caption {tmp_path} --model {tiny_pipeline_dir} --batch-size 4 --quiet | head -1"
    )
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


def test_a_training_run_folder_with_accelerate_checkpoints_still_loads(tiny_pipeline_dir, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / "checkpoint-5").mkdir()
    torch.save({}, folder / "checkpoint-5" / "optimizer.bin")  # accelerate's own, never read by from_pretrained
    scene().save(tmp_path / "x.png")
    code, out, _ = run(["caption", str(tmp_path / "x.png"), "--model", str(folder), "--quiet"], capsys)
    assert code == 0 and out.startswith(str(tmp_path / "x.png"))
