"""Hostile inputs to training: a damaged checkpoint, a bad flag, a missing data folder. `--resume_from_checkpoint
latest` skips a damaged newest checkpoint (saying which file is damaged) and resumes from the older whole one; every
other failure ends the script with one line naming the file or flag, never a traceback.

One tiny autoencoder run (`genvl/recipes/train_autoencoder.py`, checkpoints at steps 2 and 4) is trained once; each case
damages a copy of it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from genvl.training.args import parse_args, run_script
from genvl.training.checkpoints import COMPLETE_MARKER, checkpoint_damage, save_checkpoint
from genvl.world.dataset import write_imagefolder

from .scripts import ROOT, recipe
from .test_output_safety import snapshot

pytestmark = pytest.mark.slow  # subprocess training runs

export_checkpoint = recipe("export_checkpoint")
train_autoencoder = recipe("train_autoencoder")
train_captioner = recipe("train_captioner")
train_decoder = recipe("train_decoder")
train_judge = recipe("train_judge")
train_prior = recipe("train_prior")

STEPS, EVERY = 4, 2
# what a checkpoint of train_loop holds: accelerate's state (safetensors weights, torch.save zips) and genvl's EMA
# and completion marker
FILES = [
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "ema.safetensors",
    COMPLETE_MARKER,
]
ZIPS = ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "zeroed": lambda data: bytes(len(data)),
    "emptied": lambda data: b"",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    arch = root / "arch.json"
    arch.write_text(json.dumps({"autoencoder_channels": [8, 8], "autoencoder_norm_groups": 4}))
    run = SimpleNamespace(
        data=write_imagefolder(root / "world", 16, seed=0, split="train", resolution=32), arch=arch, out=root / "run"
    )
    done = launch(run, run.out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in run.out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return run


def arguments(run, out, *extra) -> list[str]:
    return [
        "--train_data_dir",
        str(run.data),
        "--output_dir",
        str(out),
        "--architecture",
        str(run.arch),
        "--resolution",
        "32",
        "--train_batch_size",
        "8",
        "--max_train_steps",
        str(STEPS),
        "--checkpointing_steps",
        str(EVERY),
        "--lr_warmup_steps",
        "1",
        "--logging_steps",
        "1",
        *extra,
    ]


def launch(run, out, *extra) -> subprocess.CompletedProcess:
    """Run genvl/recipes/train_autoencoder.py as a user would, without GENVL_DEBUG."""
    env = {k: v for k, v in os.environ.items() if k != "GENVL_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "genvl.recipes.train_autoencoder", *arguments(run, out, *extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )


def damaged_copy(run, tmp_path, file: str | None, damage=None, step: int = STEPS) -> Path:
    """A copy of the run whose checkpoint-`step`/`file` (if any) has suffered `damage` (a key of DAMAGE, or a
    function of the file's bytes). The copy leaves the finished model out: a `vae` folder in it shows a run that
    went on to the end."""
    out = tmp_path / "run"
    shutil.copytree(run.out, out, ignore=shutil.ignore_patterns("vae"))
    if file is not None:
        target = out / f"checkpoint-{step}" / file
        target.write_bytes(DAMAGE.get(damage, damage)(target.read_bytes()))
    return out


def last_line(stderr: str) -> str:
    """stderr's last line, checked to be a one-line error with no traceback before it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("file", FILES)
def test_latest_skips_a_damaged_newest_checkpoint(trained, tmp_path, capsys, file, damage):
    out = damaged_copy(trained, tmp_path, file, damage)
    losses = train_autoencoder.main(arguments(trained, out, "--resume_from_checkpoint", "latest"))
    log = capsys.readouterr()
    said = "is empty" if damage == "emptied" else "is damaged ("
    skipped = [line for line in log.err.splitlines() if line.startswith("skipping")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipping {out / 'checkpoint-4'}: {file} {said}"), log.err
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in log.out
    # the two steps before the resume come from checkpoint-2; the damaged checkpoint-4 was written anew
    first = json.loads((trained.out / "train_losses.json").read_text())
    assert len(losses) == STEPS and losses[:2] == first[:2]
    assert checkpoint_damage(out / "checkpoint-4") is None


def test_a_damaged_newest_checkpoint_as_a_user_sees_it(trained, tmp_path):
    out = damaged_copy(trained, tmp_path, "optimizer.bin", "truncated")
    done = launch(trained, out, "--resume_from_checkpoint", "latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    saved = (trained.out / "checkpoint-4" / "optimizer.bin").stat().st_size
    assert (
        f"skipping {out / 'checkpoint-4'}: optimizer.bin is damaged ({saved // 2} bytes, {saved} when it was saved)"
    ) in done.stderr.splitlines()
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in done.stdout
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()


# checkpoints saved before the marker listed sizes: the format checks alone must catch a file cut short
@pytest.mark.parametrize("file", FILES[:-1])
def test_a_truncated_file_is_caught_without_recorded_sizes(trained, tmp_path, file):
    out = damaged_copy(trained, tmp_path, file, "truncated")
    marker = json.loads((out / "checkpoint-4" / COMPLETE_MARKER).read_text())
    del marker["files"]
    (out / "checkpoint-4" / COMPLETE_MARKER).write_text(json.dumps(marker))
    kind = "safetensors file" if file.endswith(".safetensors") else "zip archive"
    assert checkpoint_damage(out / "checkpoint-4").startswith(f"{file} is damaged (not a readable {kind}")
    assert checkpoint_damage(out / "checkpoint-2") is None


def flip_a_bit_of_the_largest_member(data: bytes) -> bytes:
    """`data`, a zip archive, with one bit of its largest member's stored bytes flipped."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    header = member.header_offset  # a local header is 30 bytes, then the member's name and extra field
    name_length, extra_length = (int.from_bytes(data[header + i : header + i + 2], "little") for i in (26, 28))
    changed = bytearray(data)
    changed[header + 30 + name_length + extra_length + member.compress_size // 2] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("file", ZIPS)
def test_a_flipped_bit_in_a_torch_save_file_fails_its_crc(trained, tmp_path, file):
    out = damaged_copy(trained, tmp_path, file, flip_a_bit_of_the_largest_member)
    damage = checkpoint_damage(out / "checkpoint-4")
    assert damage.startswith(f"{file} is damaged (its member ") and damage.endswith(" fails its CRC check)")


def test_marker_must_give_the_folders_step(trained, tmp_path):
    out = damaged_copy(trained, tmp_path, None)
    shutil.rmtree(out / "checkpoint-4")
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")  # a folder copied or renamed by hand
    assert checkpoint_damage(out / "checkpoint-4") == (
        f"{COMPLETE_MARKER} is damaged (its step is 2, the folder's name says 4)"
    )


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(trained, tmp_path, capsys):
    out = damaged_copy(trained, tmp_path, "ema.safetensors", "zeroed")
    target = out / "checkpoint-2" / "model.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^--resume_from_checkpoint latest: all 2 checkpoints in \S+ are damaged"):
        train_autoencoder.main(arguments(trained, out, "--resume_from_checkpoint", "latest"))
    skipped = [
        line.split(": ")[1].split(" ")[0]
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("skipping")
    ]
    assert skipped == ["ema.safetensors", "model.safetensors"]
    assert not (out / "vae").exists()


def test_export_skips_a_damaged_newest_checkpoint(trained, tmp_path, capsys):
    out = damaged_copy(trained, tmp_path, "ema.safetensors", "emptied")
    export_checkpoint.main(["--stage", "autoencoder", "--run", str(out), "--output", str(tmp_path / "export")])
    assert f"skipping {out / 'checkpoint-4'}: ema.safetensors is empty" in capsys.readouterr().err
    assert (tmp_path / "export" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match=r"^--checkpoint \S+checkpoint-4: ema.safetensors is empty$"):
        export_checkpoint.main(
            [
                "--stage",
                "autoencoder",
                "--run",
                str(out),
                "--checkpoint",
                str(out / "checkpoint-4"),
                "--output",
                str(tmp_path / "export4"),
            ]
        )


def other_architecture(run, tmp_path) -> list[str]:
    arch = tmp_path / "wider.json"
    arch.write_text(json.dumps({"autoencoder_channels": [8, 16], "autoencoder_norm_groups": 4}))
    return ["--architecture", str(arch), "--resume_from_checkpoint", "latest"]


# case: (the file of checkpoint-4 to zero, the run's extra flags, the start of stderr's last line)
RUNTIME_ERRORS = {
    "missing data folder": (
        None,
        lambda run, tmp: ["--train_data_dir", str(tmp / "nowhere")],
        "train_autoencoder.py: error: --train_data_dir {tmp}/nowhere: no such folder",
    ),
    "data folder is a file": (
        None,
        lambda run, tmp: ["--train_data_dir", str(run.arch)],
        "train_autoencoder.py: error: --train_data_dir {arch}: not a folder; expected an imagefolder",
    ),
    "damaged checkpoint chosen": (
        "scheduler.bin",
        lambda run, tmp: ["--resume_from_checkpoint", str(tmp / "run" / "checkpoint-4")],
        "train_autoencoder.py: error: --resume_from_checkpoint {tmp}/run/checkpoint-4: scheduler.bin is damaged (",
    ),
    "checkpoint of another model": (
        None,
        other_architecture,
        "train_autoencoder.py: error: {tmp}/run/checkpoint-4: could not load this "
        "checkpoint (RuntimeError: Error(s) in loading state_dict for "
        "ReconstructionStep: size mismatch for",
    ),
}


@pytest.mark.parametrize("case", RUNTIME_ERRORS)
def test_runtime_errors_end_in_one_line(trained, tmp_path, case):
    damaged, extra, expected = RUNTIME_ERRORS[case]
    out = damaged_copy(trained, tmp_path, damaged, "zeroed")
    done = launch(trained, out, *extra(trained, tmp_path))
    assert done.returncode == 1, done.stderr[-3000:]
    assert last_line(done.stderr).startswith(expected.format(tmp=tmp_path, arch=trained.arch))
    assert not (out / "vae").exists()


# (Args class, flags, the usage error); every range check, and the type and finiteness checks of --config values
AE = train_autoencoder.TrainAutoencoderArgs
BAD_FLAGS = [
    (AE, ["--checkpointing_steps", "0"], "--checkpointing_steps must be >= 1, got 0"),
    (AE, ["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
    (AE, ["--learning_rate", "inf"], "--learning_rate must be a finite number, got inf"),
    (AE, ["--learning_rate", "-1"], "--learning_rate must be >= 0, got -1.0"),
    (AE, ["--logging_steps", "0"], "--logging_steps must be >= 1, got 0"),
    (AE, ["--ema_decay", "2"], "--ema_decay must be between 0 and 1, got 2.0"),
    (AE, ["--lr_warmup_steps", "-1"], "--lr_warmup_steps must be >= 0, got -1"),
    (AE, ["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1, got 0"),
    (AE, ["--adam_weight_decay", "-0.1"], "--adam_weight_decay must be >= 0, got -0.1"),
    (AE, ["--max_grad_norm", "0"], "--max_grad_norm must be > 0, got 0.0"),
    (AE, ["--seed", "-1"], "--seed must be >= 0, got -1"),
    (AE, ["--seed", str(2**32)], f"--seed must be < 2**32, got {2**32}"),
    (
        AE,
        ["--lr_scheduler", "piecewise_constant"],
        "--lr_scheduler must be one of linear, cosine, cosine_with_restarts, polynomial, constant, "
        "constant_with_warmup, got 'piecewise_constant'",
    ),
    (AE, ["--kl_weight=-inf"], "--kl_weight must be a finite number, got -inf"),
    (AE, ["--foreground_weight", "-1"], "--foreground_weight must be >= 0, got -1.0"),
    (train_decoder.TrainDecoderArgs, ["--image_dropout", "1.5"], "--image_dropout must be between 0 and 1, got 1.5"),
    (train_decoder.TrainDecoderArgs, ["--snr_gamma", "0"], "--snr_gamma must be > 0, got 0.0"),
    (train_decoder.TrainDecoderArgs, ["--num_train_timesteps", "0"], "--num_train_timesteps must be >= 1, got 0"),
    (
        train_prior.TrainPriorArgs,
        ["--conditioning_dropout", "-0.1"],
        "--conditioning_dropout must be between 0 and 1, got -0.1",
    ),
    (train_judge.TrainJudgeArgs, ["--width", "12"], "--width must be a positive multiple of 8, got 12"),
    (train_captioner.TrainCaptionerArgs, ["--vocab_size", "-5"], "--vocab_size must be >= 1, got -5"),
    (
        train_captioner.TrainCaptionerArgs,
        ["--rank", "2", "--lora_alpha", "nan", "--pretrained_model_name_or_path", "x"],
        "--lora_alpha must be a finite number, got nan",
    ),
    (AE, {"learning_rate": "fast"}, "--learning_rate must be a number, got 'fast'"),
    (AE, {"train_batch_size": True}, "--train_batch_size must be int, got True"),
    (AE, {"use_ema": "yes"}, "--use_ema must be bool, got 'yes'"),
    (AE, {"ema_decay": float("nan")}, "--ema_decay must be a finite number, got nan"),
]


@pytest.mark.parametrize(
    "args_class,flags,message",
    BAD_FLAGS,
    ids=[" ".join(flags) if isinstance(flags, list) else f"config {flags}" for _, flags, _ in BAD_FLAGS],
)
def test_bad_flags_are_usage_errors(tmp_path, capsys, args_class, flags, message):
    if isinstance(flags, dict):  # a --config file's values, which argparse has not converted
        (tmp_path / "config.json").write_text(json.dumps(flags))
        flags = ["--config", str(tmp_path / "config.json")]
    with pytest.raises(SystemExit) as exit_:
        parse_args(args_class, flags)
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err).endswith(f"error: {message}")


def test_run_script_exit_codes(monkeypatch, capsys):
    monkeypatch.delenv("GENVL_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["genvl/recipes/train_x.py"])

    def raising(err):
        def main():
            raise err

        return main

    cases = [
        (KeyboardInterrupt(), 130, "train_x.py: interrupted"),
        (OSError("data/x.png: cannot read it"), 1, "train_x.py: error: data/x.png: cannot read it"),
        (
            KeyError("file_name"),
            1,
            "train_x.py: error: unexpected KeyError: 'file_name' (GENVL_DEBUG=1 shows the traceback)",
        ),
    ]
    for err, code, line in cases:
        with pytest.raises(SystemExit) as exit_:
            run_script(raising(err))
        assert (exit_.value.code, last_line(capsys.readouterr().err)) == (code, line)
    monkeypatch.setenv("GENVL_DEBUG", "1")
    with pytest.raises(OSError, match="cannot read it"):
        run_script(raising(OSError("data/x.png: cannot read it")))


class OneProcess:
    """The part of an Accelerator that `save_checkpoint` uses, for one process with nothing to save but a file."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "state.json").write_text("{}")


def test_rotation_keeps_the_checkpoint_just_written(tmp_path):
    # a run resumed from checkpoint-4 because checkpoint-8 was damaged, with room for one checkpoint: saving
    # step 6 must not delete what it just wrote for the damaged newer one
    for step in (4, 8):
        save_checkpoint(OneProcess(), tmp_path, step, None)
    (tmp_path / "checkpoint-8" / "state.json").write_text("")
    save_checkpoint(OneProcess(), tmp_path, 6, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert checkpoint_damage(tmp_path / "checkpoint-6") is None
    assert checkpoint_damage(tmp_path / "checkpoint-8") == "state.json is empty"


def test_a_folder_named_like_a_checkpoint_it_would_save_is_refused_before_training(trained, tmp_path):
    """A `checkpoint-N` that genvl did not complete (no marker) would be replaced by the save of step N."""
    out = tmp_path / "run"
    mine = out / "checkpoint-2"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    done = launch(trained, out)  # not a run's folder at all: refused as such
    assert done.returncode == 1
    assert last_line(done.stderr).startswith(f"train_autoencoder.py: error: --output_dir {out}: holds files and is not")
    (out / "train_config.json").write_text("{}")  # a run's folder, with a checkpoint's name that genvl did not write
    done = launch(trained, out)
    assert done.returncode == 1
    assert last_line(done.stderr).startswith(f"train_autoencoder.py: error: {mine}: exists and is not a checkpoint")
    assert (mine / "notes.txt").read_text() == "mine" and not (out / "vae").exists()


def test_genvl_train_and_genvl_export_run_the_recipes(trained, tmp_path, capsys):
    from genvl.cli import main

    out = tmp_path / "run"
    assert main(["train", "autoencoder", *arguments(trained, out, "--max_train_steps", "2")]) == 0
    assert (out / "checkpoint-2").is_dir() and (out / "vae" / "config.json").is_file()
    argv = ["export", "checkpoint", "--stage", "autoencoder", "--run", str(out), "--output", str(tmp_path / "vae")]
    assert main([*argv, "--checkpoint", "latest"]) == 0
    assert (tmp_path / "vae" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert main([*argv, "--checkpoint", "latest"]) == 0  # its own earlier export is written again
    # a folder holding anything else, or the run it reads, is refused before any work, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refusals = ((mine, "holds files and is not a folder this export wrote"), (out, "is or holds the input"))
    for folder, message in refusals:
        before = snapshot(folder)
        argv = ["export", "checkpoint", "--stage", "autoencoder", "--run", str(out), "--output", str(folder)]
        assert main(argv) == 1
        assert message in capsys.readouterr().err
        assert snapshot(folder) == before
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "autoencoder", "--no_such_flag"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
