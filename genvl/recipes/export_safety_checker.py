"""Make a safety checker (`genvl.models.safety.SafetyChecker`) of a trained judge, blocking some of its objects,
and add it to a text-to-image pipeline folder, whose commands then run it on every image they make.

    genvl export safety-checker --judge pipelines/genvl-judge-small --block snake --threshold 0.2 \
        --into pipelines/genvl-unclip-small

`--output DIR` writes the checker's folder alone instead. The folder is written under a temporary name and
renamed into place; `--into` then names it in `model_index.json` (rewritten the same way).
"""

import argparse
import json
import os
import shutil
from pathlib import Path

from genvl.io.components import local_folder
from genvl.io.outputs import weights_readable_as_umask, written_atomically
from genvl.models.judge import SceneJudge
from genvl.models.safety import SafetyChecker
from genvl.pipelines.defaults import shipped_pipeline
from genvl.training.args import run_script

COMPONENT = ["genvl.models.safety", "SafetyChecker"]


CHECKER_FILES = {"config.json", "diffusion_pytorch_model.safetensors"}  # what `save_pretrained` writes


def write_checker(checker: SafetyChecker, folder: Path, judge: Path | None = None) -> None:
    """Save `checker` to `folder` through a temporary sibling folder, replacing a checker folder there: one that
    holds a SafetyChecker's config and weights and nothing else (genvl never deletes what it did not write), and
    is not the `judge` folder the checker was made from."""
    if os.path.lexists(folder):
        check_replaceable_checker(folder, judge)  # before anything is written
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with weights_readable_as_umask(tmp):
            checker.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable_checker(folder: Path, judge: Path | None) -> None:
    """Raise unless the existing `folder` is a safety checker's folder that may be replaced (see `write_checker`)."""
    refused = FileExistsError(f"{folder}: exists and is not a safety checker folder genvl wrote; not replaced")
    if folder.is_symlink() or not folder.is_dir() or {p.name for p in folder.iterdir()} - CHECKER_FILES:
        raise refused
    if judge is not None and judge.exists() and os.path.samefile(folder, judge):
        raise FileExistsError(f"{folder}: is the --judge folder the checker is made from; not replaced")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise refused from None
    if not isinstance(config, dict) or config.get("_class_name") != SafetyChecker.__name__:
        raise refused


def add_to_pipeline(checker: SafetyChecker, pipeline: Path, judge: Path | None = None) -> Path:
    """Write `checker` as `pipeline`'s `safety_checker` component and name it in its `model_index.json`."""
    index_file = pipeline / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"--into {pipeline}: not a pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != "TextToImagePipeline":
        raise ValueError(f"--into {pipeline}: a {index.get('_class_name')} folder, not a TextToImagePipeline one")
    write_checker(checker, pipeline / "safety_checker", judge)
    index["safety_checker"] = COMPONENT
    with written_atomically(index_file, "--into") as tmp:
        Path(tmp).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return pipeline / "safety_checker"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default=str(shipped_pipeline("genvl-judge-small")), help="a judge folder")
    parser.add_argument("--block", required=True, help="comma-separated object names to block, e.g. snake,spider")
    parser.add_argument(
        "--threshold", default="0.2", help="a concept's score above which an image is flagged (one, or one per concept)"
    )
    parser.add_argument(
        "--no-prompt-check",
        action="store_true",
        help="check the images only (by default a prompt naming a blocked concept flags its images too)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--into", help="a text-to-image pipeline folder to add the checker to")
    where.add_argument("--output", help="write the checker's folder here")
    args = parser.parse_args(argv)
    blocked = [name.strip() for name in args.block.split(",") if name.strip()]
    try:
        thresholds = [float(value) for value in args.threshold.split(",")]
    except ValueError:
        parser.error(f"--threshold: expected numbers, got {args.threshold!r}")
    if len(thresholds) == 1:
        thresholds = thresholds * len(blocked)
    judge_folder = Path(local_folder(args.judge))
    if args.output and os.path.lexists(args.output):
        check_replaceable_checker(Path(args.output), judge_folder)  # before the judge is loaded
    judge = SceneJudge.from_pretrained(judge_folder)
    checker = SafetyChecker.from_judge(judge, blocked, thresholds, check_prompts=not args.no_prompt_check)
    if args.into:
        folder = add_to_pipeline(checker, Path(args.into), judge_folder)
    else:
        folder = Path(args.output)
        write_checker(checker, folder, judge_folder)
    print(f"wrote a safety checker blocking {', '.join(blocked)} to {folder}")
    return folder


if __name__ == "__main__":
    run_script(main)
