"""Smoke test: the training script trains a tiny captioner on fresh renders, checkpoints, resumes and saves."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from genvl.pipelines.caption import CaptionPipeline
from genvl.world.dataset import write_imagefolder

from .conftest import TINY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
import train_captioner  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return write_imagefolder(root, 48, seed=0, split="train", resolution=32)


def train_args(data, out, steps, arch_file, **extra):
    args = ["--train_data_dir", str(data), "--output_dir", str(out), "--architecture", str(arch_file),
            "--resolution", "32", "--vocab_size", "300", "--train_batch_size", "8", "--max_train_steps", str(steps),
            "--checkpointing_steps", "2", "--lr_warmup_steps", "1", "--logging_steps", "1", "--learning_rate", "3e-3"]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def test_train_save_load_and_resume(tiny_data, tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    losses = train_captioner.main(train_args(tiny_data, tmp_path / "run", 6, arch_file))
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["max_train_steps"] == 6
    pipeline = CaptionPipeline.from_pretrained(tmp_path / "run")
    out = pipeline([tiny_data / "000000.png"], max_new_tokens=5)
    assert isinstance(out.captions[0][0], str)

    # a run cut off after its step-4 checkpoint and resumed retraces the straight run's last steps
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-4", cut / "checkpoint-4")
    shutil.copytree(tmp_path / "run" / "tokenizer", cut / "tokenizer")
    (cut / ".checkpoint-6.tmp").mkdir()  # a half-written checkpoint is ignored
    resumed = train_captioner.main(train_args(tiny_data, cut, 6, arch_file, resume_from_checkpoint="latest"))
    assert resumed == pytest.approx(losses[4:], rel=1e-4)


def test_unknown_caption_column_is_named(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="column 'caption' not found; available columns"):
        train_captioner.main(train_args(tiny_data, tmp_path / "run", 2, "configs/captioner_small.json",
                                        caption_column="caption"))
