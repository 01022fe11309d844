"""Errors that blamed the wrong thing or came too late: each names what the user actually gave (a flag, an
environment variable, a model folder's own generation config), comes before the model loads where it can, and
uses exit code 2 for usage and 1 for run-time failures, on one line."""

import json
import math
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genvl.lora import save_adapter

from .test_bad_input import assert_one_line_error as one_line
from .test_bad_input import run


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- --device: checked before anything loads (the model folder here does not even exist) ----------------------


@pytest.mark.parametrize(
    "device, fragment",
    [
        ("banana", "not a device"),
        ("cuda", "CUDA is not available"),
        ("cuda:7", "CUDA is not available" if not torch.cuda.is_available() else "CUDA devices"),
        ("mps", "MPS is not available"),
        ("meta", "genvl runs on cpu, cuda or mps"),
        ("cpu:x", "not a device"),
    ],
)
@pytest.mark.parametrize("command", ["caption", "generate", "score"])
def test_bad_device_is_a_usage_error_before_loading(device, fragment, command, image, tmp_path, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    argv = {
        "caption": ["caption", str(image)],
        "generate": ["generate", "an apple", "--out", str(tmp_path / "o")],
        "score": ["score", str(image), "an apple"],
    }[command]
    code, out, err = run([*argv, "--model", str(tmp_path / "no_model"), "--device", device], capsys)
    assert code == 2 and out == ""
    one_line(err, f"--device {device}", fragment)


# ---- prompts that draw nothing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\u3000\u200b", "\u200b", "\u2060\ufeff", " \u200d\u200c ", "\u202e", "\x00\x01"])
def test_invisible_prompts_are_empty(text, t2i_dir, tmp_path, capsys):
    code, out, err = run(["generate", text, "--model", str(t2i_dir), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and out == ""
    one_line(err, "PROMPT is empty")
    assert not (tmp_path / "o").exists()


def test_invisible_negative_prefix_and_score_text_are_empty(t2i_dir, tiny_pipeline_dir, image, tmp_path, capsys):
    for argv, name in (
        (
            [
                "generate",
                "an apple",
                "--negative",
                "\u200b\u200b",
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(t2i_dir),
            ],
            "--negative",
        ),
        (["score", str(image), "a car", "\ufeff", "--model", str(t2i_dir)], "TEXT"),
        (["caption", str(image), "--prefix", "\u2060", "--model", str(tiny_pipeline_dir)], "--prefix"),
    ):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == ""
        one_line(err, f"{name} is empty")


def test_a_prompt_with_visible_text_among_invisible_characters_is_kept(t2i_dir, tmp_path, capsys):
    code, out, _ = run(
        [
            "generate",
            "\u200ban apple\u200b",
            "--model",
            str(t2i_dir),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and len(out.splitlines()) == 1


# ---- step and frame counts: usage errors naming the flag, before the networks load ----------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--steps", "100000"], "--steps 100000: the prior's scheduler has only 1000 timesteps"),
        (["--prior-steps", "5000"], "--prior-steps 5000: the prior's scheduler"),
        (["--decoder-steps", "1001"], "--decoder-steps 1001: the decoder's scheduler"),
        (["--steps", "2", "--decoder-steps", "2000"], "--decoder-steps 2000"),
    ],
)
def test_too_many_steps_is_a_usage_error_before_loading(flags, fragment, t2i_dir, tmp_path, capsys):
    folder = tmp_path / "t2i"
    shutil.copytree(t2i_dir, folder)
    (folder / "decoder" / "diffusion_pytorch_model.safetensors").unlink()  # loading it would fail: it is not read
    code, out, err = run(["generate", "an apple", "--model", str(folder), "--out", str(tmp_path / "o"), *flags], capsys)
    assert code == 2 and out == ""
    one_line(err, fragment)


@pytest.mark.parametrize("frames", ["1", "0", "-3"])
def test_interpolate_needs_two_frames(frames, tmp_path, capsys):
    code, out, err = run(
        ["interpolate", "an apple", "a car", "--frames", frames, "--model", str(tmp_path / "none")], capsys
    )
    assert code == 2 and out == ""
    one_line(err, "--frames", ">= 2")


# ---- the model folder's own settings are not the user's flags -------------------------------------------------


@pytest.fixture
def captioner(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "captioner"
    shutil.copytree(tiny_pipeline_dir, folder)
    return folder


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c: c.update(temperature=float("nan"), do_sample=True), "generation config is not usable"),
        (lambda c: c.update(top_p=7.0, do_sample=True), "generation config is not usable"),
        (lambda c: c.update(num_beams=0), "generation config is not usable"),
        (lambda c: c.update(max_new_tokens=500), "its generation config asks for 500 new tokens"),
    ],
)
def test_a_bad_generation_config_names_the_folder_not_a_flag(change, fragment, captioner, image, capsys):
    edit_json(captioner / "model" / "generation_config.json", change)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys)
    assert code == 1 and out == ""
    one_line(err, str(captioner), fragment)
    assert "--temperature" not in err and "--top-p" not in err and "--beam" not in err


def test_a_long_prefix_names_the_prefix(captioner, image, capsys):
    code, out, err = run(["caption", str(image), "--model", str(captioner), "--prefix", "a red apple " * 12], capsys)
    assert code == 2 and out == ""
    one_line(err, "--prefix is", "tokens long")
    assert "--max-new-tokens 2" not in err.split("pass")[0]


def test_a_long_prefix_with_max_new_tokens_names_max_new_tokens(captioner, image, capsys):
    code, _, err = run(
        ["caption", str(image), "--model", str(captioner), "--prefix", "a red apple " * 6, "--max-new-tokens", "20"],
        capsys,
    )
    assert code == 2
    one_line(err, "--max-new-tokens 20 is too many")


@pytest.mark.parametrize(
    "variable, argv",
    [
        ("GENVL_CAPTION_MODEL", ["caption", "IMAGE"]),
        ("GENVL_CAPTION_MODEL", ["eval", "caption", "--data", "DATA"]),
        ("GENVL_T2I_MODEL", ["generate", "an apple", "--out", "OUT"]),
    ],
)
def test_a_missing_model_from_the_environment_names_the_variable(variable, argv, image, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(variable, str(tmp_path / "gone"))
    argv = [
        str(image) if a == "IMAGE" else str(tmp_path) if a == "DATA" else str(tmp_path / "o") if a == "OUT" else a
        for a in argv
    ]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    one_line(err, f"{variable}={tmp_path / 'gone'}")
    assert "--model" not in err


def test_a_missing_model_flag_names_the_flag(image, tmp_path, capsys):
    code, _, err = run(["caption", str(image), "--model", str(tmp_path / "gone")], capsys)
    assert code == 1
    one_line(err, f"--model {tmp_path / 'gone'}")


@pytest.mark.parametrize("command", ["generate", "caption"])
def test_a_folder_of_the_other_kind_is_one_line(command, tiny_pipeline_dir, t2i_dir, image, tmp_path, capsys):
    argv = (
        ["generate", "an apple", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "o")]
        if command == "generate"
        else ["caption", str(image), "--model", str(t2i_dir)]
    )
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    one_line(err, "folder, not a")


# ---- LoRA scales and adapter folders --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["inf", "nan", "-1e30", "11", "-10.5", "1e309"])
@pytest.mark.parametrize("command", ["caption", "generate"])
def test_out_of_range_lora_scales_are_usage_errors(scale, command, image, tmp_path, capsys):
    argv = ["caption", str(image)] if command == "caption" else ["generate", "an apple", "--out", str(tmp_path / "o")]
    code, out, err = run([*argv, "--lora", f"{tmp_path}/adapter:{scale}", "--model", str(tmp_path / "none")], capsys)
    assert code == 2 and out == ""
    one_line(err, "--lora", "must be a number in [-10, 10]")


def test_out_of_range_adapter_weights_are_refused_in_python(tiny_pipeline_dir):
    from genvl.pipelines.caption import CaptionPipeline

    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    for bad in (math.inf, math.nan, -1e30, 10.5):
        with pytest.raises(ValueError, match="must be a number in"):
            pipe.load_lora_weights("unused", weight=bad)
        with pytest.raises(ValueError, match="must be a number in"):
            pipe.fuse_lora(lora_scale=bad)


@pytest.fixture
def adapter(tiny_pipeline_dir, tmp_path):
    from genvl.lora import add_adapter, lora_config
    from genvl.pipelines.caption import CaptionPipeline

    model = CaptionPipeline.from_pretrained(tiny_pipeline_dir).model
    add_adapter(model, lora_config("captioner", rank=2))
    return save_adapter(model, tmp_path / "adapter")


ADAPTER_TRICKS = {
    "config_not_json": (lambda d: (d / "adapter_config.json").write_text("{oops"), "adapter_config.json"),
    "weights_nan": (
        lambda d: save_file(
            {k: v * math.nan for k, v in load_file(d / "adapter_model.safetensors").items()},
            d / "adapter_model.safetensors",
        ),
        "not finite",
    ),
    "weights_int": (
        lambda d: save_file(
            {k: v.to(torch.int64) for k, v in load_file(d / "adapter_model.safetensors").items()},
            d / "adapter_model.safetensors",
        ),
        "not finite floating",
    ),
    "weights_truncated": (
        lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x08\x00"),
        "not a readable safetensors",
    ),
    "weights_fifo": (
        lambda d: ((d / "adapter_model.safetensors").unlink(), os.mkfifo(d / "adapter_model.safetensors")),
        "FIFO",
    ),
    "pickle_weights": (lambda d: torch.save({}, d / "adapter_model.bin"), "pickle files are refused"),
    "config_for_another_model": (
        lambda d: edit_json(d / "adapter_config.json", lambda c: c.update(target_modules=["to_q"])),
        "does not fit",
    ),
    "alpha_huge": (
        lambda d: edit_json(d / "adapter_config.json", lambda c: c.update(lora_alpha=1e38)),
        "lora_alpha",
    ),  # every output became inf
    "rank_beyond_weights": (lambda d: edit_json(d / "adapter_config.json", lambda c: c.update(r=10**6)), "rank"),
    "rank_not_the_weights": (lambda d: edit_json(d / "adapter_config.json", lambda c: c.update(r=1)), "do not fit"),
}


@pytest.mark.parametrize("case", sorted(ADAPTER_TRICKS))
def test_a_bad_adapter_folder_is_named(case, adapter, tiny_pipeline_dir, image, capsys):
    trick, fragment = ADAPTER_TRICKS[case]
    trick(adapter)
    code, out, err = run(["caption", str(image), "--model", str(tiny_pipeline_dir), "--lora", str(adapter)], capsys)
    assert code == 1 and out == ""
    one_line(err, str(adapter), fragment)


# ---- interpolate: which end is an image ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "end, fragment",
    [
        ("drawing.svg", "not a readable image"),  # an existing file that is no image was taken as a prompt
        ("missing.png", "no such"),
        ("notes.txt", "not a readable image"),
        ("pictures/", "folder"),  # a folder named as a path was drawn as the prompt "pictures/"
    ],
)
def test_interpolate_ends_that_name_files_are_images(end, fragment, t2i_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "notes.txt").write_text("a red apple")
    (tmp_path / "pictures").mkdir()
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["interpolate", end, "a car", "--model", str(t2i_dir), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and out == ""
    one_line(err, end, fragment)


# ---- output that is not JSON, or that a file name splits ------------------------------------------------------


def test_non_finite_caption_scores_are_an_error_not_json_nan(tiny_pipeline_dir, image, capsys, monkeypatch):
    from genvl.pipelines.caption import CaptionOutput, CaptionPipeline

    monkeypatch.setattr(
        CaptionPipeline,
        "__call__",
        lambda self, images, **kw: CaptionOutput(
            captions=[["a red apple"] for _ in images], scores=[[float("nan")] for _ in images]
        ),
    )
    code, out, err = run(["caption", str(image), "--model", str(tiny_pipeline_dir), "--json", "--quiet"], capsys)
    assert code == 1 and out == ""
    one_line(err, str(image), "non-finite caption scores")


@pytest.mark.parametrize("name", ["new\nline.png", "tab\there.png", "back\\slash\nx.png"])
def test_control_characters_in_file_names_do_not_split_lines(name, tiny_pipeline_dir, tmp_path, capsys):
    path = tmp_path / name
    Image.new("RGB", (32, 32), (0, 90, 200)).save(path, format="PNG")
    code, out, _ = run(["caption", str(path), "--model", str(tiny_pipeline_dir), "--quiet"], capsys)
    assert code == 0
    assert len(out.splitlines()) == 1 and out.count("\t") == 1
    code, out, _ = run(["caption", str(path), "--model", str(tiny_pipeline_dir), "--quiet", "--json"], capsys)
    assert json.loads(out)["path"] == str(path)


def test_an_adapter_that_fails_to_load_leaves_nothing_behind(adapter, tiny_pipeline_dir, scene_images):
    from genvl.lora import adapter_names_of
    from genvl.pipelines.caption import CaptionPipeline

    edit_json(adapter / "adapter_config.json", lambda c: c.update(r=1, init_lora_weights=False))
    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    before = pipe(scene_images[:2], max_new_tokens=5).captions
    with pytest.raises(ValueError, match="do not fit"):
        pipe.load_lora_weights(adapter)
    assert adapter_names_of(pipe.model) == []
    assert pipe(scene_images[:2], max_new_tokens=5).captions == before


@pytest.mark.parametrize("text", ["robot.v2", "v1.5 of a red apple", "apple", "a red apple.png", "pictures"])
def test_interpolate_ends_that_name_no_file_are_prompts(text, t2i_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "pictures").mkdir()  # a folder's name without a slash: a prompt
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(
        [
            "interpolate",
            text,
            "a car",
            "--frames",
            "2",
            "--steps",
            "1",
            "--model",
            str(t2i_dir),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and len(out.splitlines()) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "IMAGE", "--output", ""],
        ["caption", "IMAGE", "--model", ""],
        ["generate", "a cat", "--out", ""],
        ["eval", "caption", "--data", ""],
    ],
)
def test_an_empty_path_flag_is_a_usage_error_not_the_flag_left_out(argv, image, capsys):
    # `--output ''` printed the captions and wrote nothing, exit 0
    code, out, err = run([str(image) if word == "IMAGE" else word for word in argv], capsys)
    assert code == 2 and out == "" and "is empty; expected a path" in err


def test_seeds_past_what_seed_takes_are_a_usage_error(t2i_dir, tmp_path, capsys):
    argv = ["generate", "a cat", "--seed", str(2**63 - 2), "-n", "3", "--out", str(tmp_path), "--model", str(t2i_dir)]
    code, out, err = run([*argv, "--steps", "1"], capsys)
    assert code == 2 and "the last image's seed would pass 2**63 - 1" in err and not list(tmp_path.glob("*.png"))


def test_score_lines_escape_tabs_and_newlines_in_texts(t2i_dir, image, capsys):
    code, out, err = run(["score", str(image), "two\nlines", "a\ttab", "--model", str(t2i_dir)], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and {line.split("\t", 1)[1] for line in lines} == {"two\\nlines", "a\\ttab"}


def test_a_missing_captioner_names_the_captioner_flag(t2i_dir, tmp_path, capsys):
    argv = ["interpolate", "a cat", "a dog", "--frames", "2", "--captions", "--captioner", str(tmp_path / "none")]
    code, out, err = run([*argv, "--out", str(tmp_path), "--model", str(t2i_dir), "--steps", "1"], capsys)
    assert code == 1 and f"--captioner {tmp_path / 'none'}: no such model folder" in err


def test_a_model_flag_naming_a_file_says_so(image, capsys):
    # it said "no such model folder" of a file that exists
    code, out, err = run(["caption", str(image), "--model", str(image)], capsys)
    assert code == 1 and f"--model {image}: is a file, not a model folder" in err
    code, out, err = run(["generate", "a cat", "--model", str(image), "--out", str(image.parent / "o")], capsys)
    assert code == 1 and f"{image}: is a file, not a model folder" in err


def test_a_model_folder_of_another_kind_says_it_is_no_captioner(image, capsys):
    # a judge's folder was read as a VisionEncoderDecoder's: "config.json describes 224,270,394 weights ..."
    code, out, err = run(["caption", str(image), "--model", "genvl-judge-small"], capsys)
    assert code == 1 and "not a captioner folder (its config.json is of a SceneJudge model)" in err


def test_score_refuses_a_text_given_twice(t2i_dir, image, capsys):
    # --json keyed its scores by text and kept one of the two
    code, out, err = run(["score", str(image), "a red apple", "a cat", "a red apple", "--model", str(t2i_dir)], capsys)
    assert code == 2 and out == "" and "TEXT 'a red apple' is given twice" in err


def test_eval_t2i_prompts_below_two_is_a_usage_error_before_loading(tmp_path, capsys):
    # it loaded the pipeline, then failed with exit 1 naming no flag
    argv = ["eval", "t2i", "--data", str(tmp_path), "--prompts", "1", "--model", str(tmp_path / "no")]
    code, out, err = run(argv, capsys)
    assert code == 2 and "--prompts must be >= 2 for the canonical suite, got 1" in err
