"""Every training config in configs/ is read by its script's argument parser (which rejects unknown keys), and
the architecture file it names exists (and loads, for the unCLIP stages)."""

import sys
from pathlib import Path

import pytest

from genvl.models.unclip import UnclipArchitecture
from genvl.training import parse_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "train"))
import train_autoencoder  # noqa: E402
import train_captioner  # noqa: E402
import train_clip  # noqa: E402
import train_decoder  # noqa: E402
import train_judge  # noqa: E402
import train_prior  # noqa: E402

ARGS = {
    "autoencoder": train_autoencoder.TrainAutoencoderArgs, "captioner": train_captioner.TrainCaptionerArgs,
    "clip": train_clip.TrainClipArgs, "decoder": train_decoder.TrainDecoderArgs,
    "judge": train_judge.TrainJudgeArgs, "prior": train_prior.TrainPriorArgs,
}
CONFIGS = sorted((ROOT / "configs").glob("train_*.json"))


def stage_of(path: Path) -> str:
    """train_autoencoder_finetune.json -> autoencoder"""
    return path.stem.removeprefix("train_").split("_")[0]


def test_every_stage_has_configs():
    stages = {stage_of(path) for path in CONFIGS}
    assert stages == set(ARGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_parses(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    stage = stage_of(path)
    args = parse_args(ARGS[stage], ["--config", str(path.relative_to(ROOT))])
    if stage in ("prior", "autoencoder", "decoder"):
        UnclipArchitecture.from_json(args.architecture)
    elif hasattr(args, "architecture"):
        assert Path(args.architecture).is_file()
