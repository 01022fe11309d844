"""Hostile model folders: loading one never runs code the folder chooses, never writes outside the test's own
temporary folder, never hangs and never takes unbounded memory; each is refused with one line naming the file.

Every case runs under an audit hook (PEP 578) that records, while armed, each import of a module the folder
planted, each file opened for writing or removed outside the test's temporary folder, and each process started;
a case fails if anything was recorded. The planted modules write a sentinel file when imported, which must not
appear either."""

import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genvl.cli import main

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ("genvl_helper", "evil_lib", "evil_tokenizer", "this", "venv", "antigravity")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Guard:
    """What the audit hook saw while armed: a list of violations, and the folder writes are allowed in."""

    allowed: Path | None = None
    violations: list = []


def _audit(event, args):
    root = Guard.allowed
    if root is None:
        return
    if event == "import" and args[0].split(".")[0] in PLANTED:
        Guard.violations.append(f"imported {args[0]}")
    elif event == "import" and args[1] and str(args[1]).startswith(str(root)):
        Guard.violations.append(f"imported {args[1]}")
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = os.fsdecode(args[0]), args[1] or "", args[2] or 0
        writes = any(c in mode for c in "wax+") or flags & WRITE_FLAGS
        if writes and not os.path.abspath(path).startswith(str(root)):
            Guard.violations.append(f"opened {path} for writing")
    elif event in ("os.remove", "os.rename", "os.rmdir", "shutil.rmtree", "os.mkdir", "os.symlink"):
        path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
        if not os.path.abspath(path).startswith(str(root)):
            Guard.violations.append(f"{event} {path}")
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.spawn"):
        Guard.violations.append(f"{event} {args[:2]}")


sys.addaudithook(_audit)  # hooks cannot be removed: it only records while a test has armed it


@contextmanager
def guarded(root: Path):
    Guard.allowed, Guard.violations = root.resolve(), []
    try:
        yield Guard.violations
    finally:
        Guard.allowed = None


def run(argv, capsys, root: Path, timeout: float = 120):
    """(exit code, stdout, stderr) of `genvl argv` run with `root` as the working folder, under the audit hook;
    asserts nothing was recorded, no sentinel written and no planted module imported."""
    cwd = os.getcwd()
    os.chdir(root)
    timer = threading.Timer(timeout, lambda: os.kill(os.getpid(), 2))  # a hang becomes a KeyboardInterrupt
    timer.start()
    try:
        with guarded(root) as violations:
            try:
                code = main(argv)
            except SystemExit as exit_info:
                code = exit_info.code
    finally:
        timer.cancel()
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert violations == [], violations
    assert not list(root.rglob("SENTINEL*")), "planted code ran"
    assert not any(name.split(".")[0] in PLANTED for name in sys.modules if name not in ("this",)), "imported"
    assert "Beautiful is better than ugly" not in out + err  # `import this` prints the Zen of Python
    return code, out, err


def assert_refused(code, out, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 1 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("genvl: error:") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


SENTINEL_CODE = "open(__file__ + '.SENTINEL', 'w').write('ran')\nclass X: pass\nclass Evil: pass\nmain = X\n"


def plant(folder: Path, *names: str):
    for name in names:
        (folder / f"{name}.py").write_text(SENTINEL_CODE)


def edit_json(path: Path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


@pytest.fixture
def captioner(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "captioner"
    shutil.copytree(tiny_pipeline_dir, folder)
    plant(tmp_path, "genvl_helper", "evil_lib")  # beside the working folder: importable if anything imports it
    plant(folder, "genvl_helper", "evil_lib")
    plant(folder / "model", "evil_lib", "genvl_helper")  # where diffusers looks for a custom component's code
    return folder


@pytest.fixture
def unclip(t2i_dir, tmp_path):
    folder = tmp_path / "unclip"
    shutil.copytree(t2i_dir, folder)
    plant(tmp_path, "genvl_helper", "evil_lib")
    plant(folder / "conditioner", "evil_lib", "genvl_helper")
    return folder


def generate_from(folder: Path, capsys, tmp_path: Path):
    """(code, stdout, stderr) of `genvl generate` on the pipeline folder `folder`, writing to tmp_path/out."""
    argv = ["generate", "an apple", "--model", str(folder), "--steps", "1", "--out", str(tmp_path / "out")]
    return run(argv, capsys, tmp_path)


# ---- model_index.json naming code: refused by the allow-list, nothing imported ------------------------------------

NAMED_CLASSES = {
    "zen": ["this", "x"],  # printed the Zen of Python
    "venv": ["venv.__main__", "main"],  # created a venv in the working folder
    "helper_in_working_folder": ["genvl_helper", "X"],  # ran under `python -m genvl` from the folder
    "custom_component_file": ["evil_lib", "Evil"],  # diffusers runs model/evil_lib.py as a custom component
    "builtin_eval": ["builtins", "eval"],
    "os_system": ["os", "system"],
    "genvl_cli": ["genvl.cli", "main"],
    "auto_class": ["transformers", "AutoModel"],  # Auto classes can follow auto_map to remote code
    "function": ["transformers", "pipeline"],
    "pipeline_class": ["diffusers", "DiffusionPipeline"],
    "dunder": ["transformers", "__class__"],
    "dotted_name": ["transformers", "models.gpt2.GPT2Model"],
    "not_strings": [1, 2],
    "path_as_library": ["../../genvl_helper", "X"],
}


@pytest.mark.parametrize("case", sorted(NAMED_CLASSES))
def test_captioner_index_naming_code_is_refused(case, captioner, image, tmp_path, capsys):
    edit_json(captioner / "model_index.json", lambda index: index.update(model=NAMED_CLASSES[case]))
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner / "model_index.json"), "genvl does not load")


@pytest.mark.parametrize(
    "component, spec",
    [
        ("conditioner", ["genvl_helper", "UnclipConditioner"]),
        ("conditioner", ["evil_lib", "Evil"]),
        ("conditioner", ["genvl.models.unclip", "torch"]),  # genvl's module, but not a component of it
        ("decoder", ["diffusers", "DiffusionPipeline"]),
        ("tokenizer", ["transformers", "AutoTokenizer"]),
        ("decoder_scheduler", ["os", "system"]),
    ],
)
def test_text_to_image_index_naming_code_is_refused(component, spec, unclip, tmp_path, capsys):
    edit_json(unclip / "model_index.json", lambda index: index.update({component: spec}))
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / "model_index.json"), "genvl does not load")
    assert not (tmp_path / "out").exists()


def test_python_m_genvl_in_the_folder_runs_nothing_planted(captioner, image, tmp_path):
    """`python -m genvl` puts the working folder first on sys.path: a planted genvl_helper.py there ran."""
    edit_json(captioner / "model_index.json", lambda index: index.update(model=["genvl_helper", "X"]))
    result = subprocess.run(
        [sys.executable, "-m", "genvl", "caption", str(image), "--model", str(captioner)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "genvl does not load" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.SENTINEL"))


@pytest.mark.parametrize("value", [["os", "system"], "../../genvl_helper", {"classic": 1}, 1, True])
def test_text_to_image_prompt_world_other_than_a_known_world_is_refused(value, unclip, tmp_path, capsys):
    edit_json(unclip / "model_index.json", lambda index: index.update(prompt_world=value))
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / "model_index.json"), "prompt_world must be null or one of classic")
    assert not (tmp_path / "out").exists()


# ---- model_index.json malformed or naming the wrong things ----------------------------------------------------

INDEX_CHANGES = {
    "spec_a_string": (lambda i: i.update(model="transformers.VisionEncoderDecoderModel"), "must be [library, class]"),
    "spec_three_items": (
        lambda i: i.update(model=["transformers", "VisionEncoderDecoderModel", "x"]),
        "must be [library, class]",
    ),
    "unknown_component": (lambda i: i.update(evil=["transformers", "CLIPModel"]), "does not take"),
    "component_escaping": (
        lambda i: i.update({"../captioner/model": ["transformers", "CLIPModel"]}),
        "inside the model folder",
    ),
    "component_outside": (lambda i: i.update({"../elsewhere": ["transformers", "CLIPModel"]}), "does not take"),
    "wrong_pipeline": (lambda i: i.update(_class_name="TextToImagePipeline"), "not a CaptionPipeline"),
    "no_class_name": (lambda i: i.pop("_class_name"), "not a CaptionPipeline"),
    "component_missing": (lambda i: i.pop("tokenizer"), "lacks the component tokenizer"),
    "wrong_kind": (lambda i: i.update(model=["transformers", "GPT2Tokenizer"]), "model"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CHANGES))
def test_malformed_index_is_refused(case, captioner, image, tmp_path, capsys):
    change, fragment = INDEX_CHANGES[case]
    edit_json(captioner / "model_index.json", change)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner), fragment)


def test_index_that_is_not_an_object_is_refused(captioner, image, tmp_path, capsys):
    (captioner / "model_index.json").write_text(json.dumps([["transformers", "CLIPModel"]]))
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, "model_index.json", "expected a JSON object")


# ---- flat folders (the public ViT-GPT2 layout): custom code named in configs is never run ---------------------


@pytest.mark.parametrize(
    "config_file, auto_map",
    [
        ("tokenizer_config.json", {"AutoTokenizer": ["evil_tokenizer.Evil", None]}),
        ("preprocessor_config.json", {"AutoImageProcessor": "evil_tokenizer.Evil"}),
    ],
)
def test_flat_folder_auto_map_runs_no_code(config_file, auto_map, public_folder, image, tmp_path, capsys):
    folder = tmp_path / "public"
    shutil.copytree(public_folder, folder)
    plant(folder, "evil_tokenizer")
    edit_json(folder / config_file, lambda config: config.update(auto_map=auto_map))
    code, out, err = run(["caption", str(image), "--model", str(folder), "--max-new-tokens", "4"], capsys, tmp_path)
    # transformers refuses code it would have to trust, or ignores the map: either way nothing ran
    assert code in (0, 1) and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 1


# ---- files that are not what they claim: refused without hanging ---------------------------------------------


def make_fifo(path: Path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def loop(path: Path):
    path.unlink(missing_ok=True)
    os.symlink(path.name + ".b", path.with_name(path.name + ".a"))
    os.symlink(path.name + ".a", path.with_name(path.name + ".b"))
    os.symlink(path.name + ".a", path)


FILE_TRICKS = {
    "weights_fifo": ("model/model.safetensors", make_fifo, "FIFO"),
    "config_fifo": ("model/config.json", make_fifo, "FIFO"),
    "tokenizer_fifo": ("tokenizer/tokenizer.json", make_fifo, "FIFO"),
    "index_fifo": ("model_index.json", make_fifo, "FIFO"),
    "weights_symlink_loop": ("model/model.safetensors", loop, "symlink loop"),
    "weights_dangling_symlink": (
        "model/model.safetensors",
        lambda p: (p.unlink(), os.symlink("/nonexistent/weights", p)),
        "does not exist",
    ),
    "weights_device": (
        "model/model.safetensors",
        lambda p: (p.unlink(), os.symlink("/dev/zero", p)),
        "character device",
    ),
    "tokenizer_symlink_to_root": ("tokenizer", lambda p: (shutil.rmtree(p), os.symlink("/", p)), "not a symlink"),
    "component_is_a_file": ("image_processor", lambda p: (shutil.rmtree(p), p.write_text("{}")), "not a symlink"),
    "pickle_beside": ("model/optimizer.pt", lambda p: torch.save({"x": 1}, p), "pickle files are refused"),
}


@pytest.mark.parametrize("case", sorted(FILE_TRICKS))
def test_files_that_are_not_regular_are_refused(case, captioner, image, tmp_path, capsys):
    where, trick, fragment = FILE_TRICKS[case]
    trick(captioner / where)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path, timeout=60)
    assert_refused(code, out, err, str(captioner), fragment)


# ---- weights and configs: wrong kinds, non-finite values, sizes that would exhaust memory ---------------------


def tamper(path: Path, change):
    state = load_file(path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})


def first_float(state):
    return next(key for key, value in sorted(state.items()) if value.is_floating_point() and value.ndim == 2)


WEIGHT_TRICKS = {
    "nan": (lambda s: s[first_float(s)].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    "inf": (lambda s: s[first_float(s)].view(-1).__setitem__(-1, float("inf")), "NaN or infinite"),
    "int64": (lambda s: s.update({first_float(s): s[first_float(s)].to(torch.int64)}), "stored as I64"),
    "bool": (lambda s: s.update({first_float(s): s[first_float(s)] > 0}), "stored as BOOL"),
    "uint8": (lambda s: s.update({first_float(s): s[first_float(s)].to(torch.uint8)}), "stored as U8"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_TRICKS))
def test_captioner_weights_of_the_wrong_kind_or_not_finite_are_refused(case, captioner, image, tmp_path, capsys):
    change, fragment = WEIGHT_TRICKS[case]
    tamper(captioner / "model" / "model.safetensors", change)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner / "model"), fragment)


@pytest.mark.parametrize(
    "component, weights",
    [
        ("decoder", "diffusion_pytorch_model.safetensors"),
        ("prior", "diffusion_pytorch_model.safetensors"),
        ("clip", "model.safetensors"),
    ],
)
def test_text_to_image_nan_weights_are_refused(component, weights, unclip, tmp_path, capsys):
    tamper(unclip / component / weights, WEIGHT_TRICKS["nan"][0])
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / component), "NaN or infinite")


CONFIG_TRICKS = {
    # (component, change to config.json, fragment): sizes that were built or run before anything was checked
    "decoder_sample_size": ("decoder", lambda c: c.update(sample_size=4096), "sample_size must be an integer in"),
    "decoder_sample_size_negative": ("decoder", lambda c: c.update(sample_size=-8), "sample_size must be"),
    "decoder_sample_size_text": ("decoder", lambda c: c.update(sample_size="64"), "sample_size must be"),
    "scheduler_timesteps": (
        "decoder_scheduler",
        lambda c: c.update(num_train_timesteps=10**12),
        "num_train_timesteps must be",
    ),
    # noise schedules that are none: every image came out NaN and was written as a black PNG, exit 0
    "scheduler_nan_betas": (
        "prior_scheduler",
        lambda c: c.update(trained_betas=[float("nan")] * c["num_train_timesteps"]),
        "betas must be finite numbers in [0, 1)",
    ),
    "scheduler_beta_end": (
        "decoder_scheduler",
        lambda c: c.update(beta_schedule="linear", beta_end=5.0),
        "betas must be finite numbers in [0, 1)",
    ),
    "scheduler_steps_offset": ("decoder_scheduler", lambda c: c.update(steps_offset=10**9), "steps_offset must be"),
    "clip_vocabulary": ("clip", lambda c: c["text_config"].update(vocab_size=10**9), "describes"),
    "prior_width": ("prior", lambda c: c.update(num_attention_heads=4096), "describes"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_TRICKS))
def test_text_to_image_config_sizes_are_checked_before_building(case, unclip, tmp_path, capsys):
    component, change, fragment = CONFIG_TRICKS[case]
    config = unclip / component / ("scheduler_config.json" if "scheduler" in component else "config.json")
    edit_json(config, change)
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / component), fragment)


def test_captioner_config_larger_than_its_weights_is_refused_before_building(captioner, image, tmp_path, capsys):
    edit_json(captioner / "model" / "config.json", lambda c: c["decoder"].update(vocab_size=10**9))
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner / "model"), "describes", "weights")


# ---- tokenizers: a missing vocabulary gave blank captions with exit 0 ------------------------------------------


@pytest.mark.parametrize("removed", [("vocab.json", "merges.txt", "tokenizer.json"), ("vocab.json", "tokenizer.json")])
def test_tokenizer_without_vocabulary_is_refused(removed, captioner, image, tmp_path, capsys):
    for name in removed:
        (captioner / "tokenizer" / name).unlink(missing_ok=True)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(captioner / "tokenizer") in err


@pytest.mark.parametrize(
    "file, text",
    [
        ("tokenizer.json", '{"model": "not a tokenizer"}'),
        ("tokenizer.json", "{oops"),
        ("tokenizer_config.json", '{"model_max_length": "many"'),
    ],
)
def test_malformed_tokenizer_is_named(file, text, captioner, image, tmp_path, capsys):
    (captioner / "tokenizer" / file).write_text(text)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner / "tokenizer"))


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(captioner, public_folder, image, tmp_path, capsys):
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        shutil.copy(public_folder / name, captioner / "tokenizer" / name)
    edit_json(captioner / "model" / "config.json", lambda c: None)
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(captioner / "tokenizer"))
    decoder_vocab = json.loads((captioner / "model" / "config.json").read_text())["decoder"]["vocab_size"]
    if tokens <= decoder_vocab:
        pytest.skip("the public tokenizer fixture is not larger than the tiny model's vocabulary")
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path)
    assert_refused(code, out, err, str(captioner / "tokenizer"), "tokens but the model only")


# ---- what a config can still ask for: hub kernels, huge sizes, files outside the folder -------------------------


@pytest.mark.parametrize(
    "where, change, fragment",
    [
        ("model/config.json", lambda c: c.update(attn_implementation="evil/kernel"), "attention implementation"),
        (
            "model/config.json",
            lambda c: c["decoder"].update(attn_implementation="kernels-community/flash-attn"),
            "attention implementation",
        ),
        ("model/config.json", lambda c: c["encoder"].update(num_hidden_layers=10**7), "num_hidden_layers must be"),
        ("model/config.json", lambda c: c["decoder"].update(n_layer=5000), "n_layer must be"),
        (
            "image_processor/preprocessor_config.json",
            lambda c: c.update(size={"height": 6000, "width": 6000}),
            "height must be",
        ),
        ("image_processor/preprocessor_config.json", lambda c: c.update(size=-3), "size must be"),
        # a normalisation that divides by zero or is no number: every score NaN, after warnings on stderr
        (
            "image_processor/preprocessor_config.json",
            lambda c: c.update(image_std=[0, 0, 0]),
            "image_std must be above",
        ),
        (
            "image_processor/preprocessor_config.json",
            lambda c: c.update(rescale_factor=float("nan")),
            "rescale_factor must be finite numbers",
        ),
        ("image_processor/preprocessor_config.json", lambda c: c.update(image_mean=["0"]), "image_mean must be finite"),
        ("model/generation_config.json", lambda c: c.update(num_beams=100000), "num_beams must be <= 256"),
        (
            "model/generation_config.json",
            lambda c: c.update(bad_words_ids=[[5], [7, 10**6]]),
            "bad_words_ids holds token id 1000000, beyond the vocabulary",
        ),
        (
            "model/generation_config.json",
            lambda c: c.update(eos_token_id=[c["eos_token_id"], 10**9]),
            "eos_token_id holds token id 1000000000, beyond the vocabulary",
        ),
        ("model/generation_config.json", lambda c: c.update(eos_token_id=list(range(99))), "at most 64 end tokens"),
    ],
)
def test_captioner_config_requests_are_bounded(where, change, fragment, captioner, image, tmp_path, capsys):
    edit_json(captioner / where, change)
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path, timeout=60)
    assert_refused(code, out, err, str(captioner), fragment)


def test_a_shard_index_pointing_into_a_subfolder_is_refused(captioner, image, tmp_path, capsys):
    model = captioner / "model"
    (model / "sub").mkdir()
    make_fifo(model / "sub" / "b.safetensors")
    names = list(load_file(model / "model.safetensors"))
    (model / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {},
                "weight_map": {
                    name: ("sub/b.safetensors" if i else "model.safetensors") for i, name in enumerate(names)
                },
            }
        )
    )
    code, out, err = run(["caption", str(image), "--model", str(captioner)], capsys, tmp_path, timeout=60)
    assert_refused(code, out, err, "model.safetensors.index.json", "not a file of this folder")


@pytest.mark.parametrize(
    "slot, spec",
    [
        ("tokenizer", ["transformers", "CLIPModel"]),
        ("decoder_scheduler", ["diffusers", "UNet2DConditionModel"]),
        ("decoder", ["diffusers", "DDPMScheduler"]),
    ],
)
def test_a_component_of_the_wrong_kind_is_refused(slot, spec, unclip, tmp_path, capsys):
    edit_json(unclip / "model_index.json", lambda index: index.update({slot: spec}))
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / "model_index.json"), "which is not a")


def test_a_scheduler_config_that_is_not_an_object_is_one_line(unclip, tmp_path, capsys):
    (unclip / "prior_scheduler" / "scheduler_config.json").write_text("[]")
    code, out, err = generate_from(unclip, capsys, tmp_path)
    assert_refused(code, out, err, str(unclip / "prior_scheduler"))
