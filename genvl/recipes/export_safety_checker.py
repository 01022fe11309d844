"""Make a safety checker (`genvl.models.safety.SafetyChecker`) of a trained judge, blocking some of its objects,
and add it to a text-to-image pipeline folder, whose commands then run it on every image they make.

    genvl export safety-checker --judge pipelines/genvl-judge-small --block snake --threshold 0.2 \
        --into pipelines/genvl-unclip-small

`--output DIR` writes the checker's folder alone instead. The folder is written under a temporary name and
renamed into place; `--into` then names it in `model_index.json` (rewritten the same way).
"""

import argparse
import json
import shutil
from pathlib import Path

from genvl.io.components import local_folder
from genvl.io.outputs import weights_readable_as_umask, written_atomically
from genvl.models.judge import SceneJudge
from genvl.models.safety import SafetyChecker
from genvl.pipelines.defaults import shipped_pipeline
from genvl.training.args import run_script

COMPONENT = ["genvl.models.safety", "SafetyChecker"]


def write_checker(checker: SafetyChecker, folder: Path) -> None:
    """Save `checker` to `folder`, replacing a checker folder there, through a temporary sibling folder."""
    if folder.exists() and not (folder / "config.json").is_file():
        raise FileExistsError(f"{folder}: exists and is not a checker folder; not replaced")
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


def add_to_pipeline(checker: SafetyChecker, pipeline: Path) -> Path:
    """Write `checker` as `pipeline`'s `safety_checker` component and name it in its `model_index.json`."""
    index_file = pipeline / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"--into {pipeline}: not a pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != "TextToImagePipeline":
        raise ValueError(f"--into {pipeline}: a {index.get('_class_name')} folder, not a TextToImagePipeline one")
    write_checker(checker, pipeline / "safety_checker")
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
    judge = SceneJudge.from_pretrained(local_folder(args.judge))
    checker = SafetyChecker.from_judge(judge, blocked, thresholds, check_prompts=not args.no_prompt_check)
    folder = add_to_pipeline(checker, Path(args.into)) if args.into else Path(args.output)
    if args.output:
        write_checker(checker, folder)
    print(f"wrote a safety checker blocking {', '.join(blocked)} to {folder}")
    return folder


if __name__ == "__main__":
    run_script(main)
