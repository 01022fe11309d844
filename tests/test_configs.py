"""Every training config in configs/ is read by its script's argument parser (which rejects unknown keys), and
the architecture file it names exists (and loads, for the unCLIP stages)."""

import json
from pathlib import Path

import pytest

from genvl.models.unclip import UnclipArchitecture
from genvl.training.args import parse_args, save_run_config

from .scripts import ROOT, recipe

ARGS = {
    "autoencoder": recipe("train_autoencoder").TrainAutoencoderArgs,
    "captioner": recipe("train_captioner").TrainCaptionerArgs,
    "clip": recipe("train_clip").TrainClipArgs,
    "decoder": recipe("train_decoder").TrainDecoderArgs,
    "judge": recipe("train_judge").TrainJudgeArgs,
    "matching": recipe("train_matching").TrainMatchingArgs,
    "prior": recipe("train_prior").TrainPriorArgs,
    "text_tower": recipe("train_text_tower").TrainTextTowerArgs,
    "vqa": recipe("train_vqa").TrainVqaArgs,
}
CONFIGS = sorted((ROOT / "configs").glob("train_*.json"))


def stage_of(path: Path) -> str:
    """train_autoencoder_finetune.json -> autoencoder, train_text_tower.json -> text_tower"""
    name = path.stem.removeprefix("train_")
    return max((stage for stage in ARGS if name == stage or name.startswith(stage + "_")), key=len, default=name)


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


def test_a_saved_run_config_is_a_config(tmp_path, monkeypatch):
    """train_config.json holds the run's flags and the architecture it resolved; given back as --config, the flags
    come back (the architecture is read again from its path)."""
    monkeypatch.chdir(ROOT)
    args = parse_args(ARGS["decoder"], ["--config", "configs/train_decoder.json", "--seed", "7"])
    architecture = UnclipArchitecture.from_json(args.architecture)
    save_run_config(args, tmp_path, architecture)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["architecture"] == args.architecture
    assert UnclipArchitecture.from_dict(saved["architecture_config"]) == architecture
    assert parse_args(ARGS["decoder"], ["--config", str(tmp_path / "train_config.json")]) == args
    # a script without an architecture keeps no architecture_config, and takes none
    judge = parse_args(ARGS["judge"], [])
    save_run_config(judge, tmp_path / "judge")
    assert "architecture_config" not in json.loads((tmp_path / "judge" / "train_config.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({"architecture_config": {}}))
    with pytest.raises(SystemExit):
        parse_args(ARGS["judge"], ["--config", str(tmp_path / "bad.json")])


@pytest.mark.parametrize(
    "config, message",
    [
        ("null", "expected a JSON object of flag values, got NoneType"),
        ('"abc"', "expected a JSON object of flag values, got str"),
        ('{"augment": 5}', "--augment must be a string, got 5"),
        ('{"output_dir": ["a"]}', '--output_dir must be a string, got ["a"]'),
    ],
)
def test_config_values_of_the_wrong_json_type_are_one_line_usage_errors(config, message, tmp_path, capsys):
    # they ended in "unexpected TypeError" (exit 1), and a flag's own usage error printed the whole usage block
    from genvl.cli import main

    (tmp_path / "c.json").write_text(config)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "captioner", "--config", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_the_default_architectures_are_found_outside_the_checkout(tmp_path, monkeypatch):
    # "configs/captioner_small.json" was read from the working folder: from anywhere else the run failed after
    # reading its data, naming no flag
    from genvl.models.captioner import CaptionerArchitecture

    monkeypatch.chdir(tmp_path)
    shipped = CaptionerArchitecture.from_json(ROOT / "configs" / "captioner_small.json")
    assert CaptionerArchitecture.from_json("configs/captioner_small.json") == shipped
    with pytest.raises(FileNotFoundError, match="--architecture configs/nothing.json: no such architecture file"):
        CaptionerArchitecture.from_json("configs/nothing.json")
