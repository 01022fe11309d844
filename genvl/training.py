"""Pieces shared by the training scripts in `train/`: typed arguments, crash-safe checkpoints, EMA, data order."""

import argparse
import dataclasses
import json
import os
import shutil
import typing
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete.json"


def parse_args(args_class, argv=None):
    """Build an argparse parser from a dataclass, with `--config FILE` giving defaults (unknown keys rejected)."""
    parser = argparse.ArgumentParser(description=args_class.__doc__)
    parser.add_argument("--config", default=None, help="JSON file of argument values; flags override it")
    hints = typing.get_type_hints(args_class)
    for field in dataclasses.fields(args_class):
        kind = hints[field.name]
        origin = typing.get_args(kind)
        if kind is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=None)
        elif origin:  # Optional[X]
            parser.add_argument(f"--{field.name}", type=origin[0], default=None)
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=None)
    ns = parser.parse_args(argv)
    values = {}
    if ns.config:
        try:
            values = json.loads(Path(ns.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--config {ns.config}: {err}")
        known = {f.name for f in dataclasses.fields(args_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{ns.config}: unknown keys {unknown}")
    values.update({k: v for k, v in vars(ns).items() if v is not None and k != "config"})
    try:
        return args_class(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


def save_run_config(args, output_dir):
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "train_config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))


def complete_checkpoints(output_dir) -> list[Path]:
    """Checkpoints marked complete, oldest first; half-written ones are ignored."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        if (path / COMPLETE_MARKER).is_file() and path.name.split("-")[-1].isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None, extra: dict | None = None):
    """Save accelerate state to a temporary folder, mark it complete, rename it into place, then rotate."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its part before the folder is marked
    if accelerator.is_main_process:
        marker = {"step": step, **(extra or {})}
        with open(tmp / COMPLETE_MARKER, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if total_limit:
            for old in complete_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(output_dir, resume_from_checkpoint: str | None) -> Path | None:
    """`latest` means the newest complete checkpoint in `output_dir` (None if there is none)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete checkpoint folder")
    return path


def checkpoint_step(path: Path) -> int:
    return json.loads((path / COMPLETE_MARKER).read_text())["step"]


def epoch_order(num_items: int, seed: int, epoch: int):
    """The sample order of one epoch: a permutation that depends only on (seed, epoch), so resuming is exact."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)
