"""Crash-safe training checkpoints: written aside and renamed into place, checked before a resume (falling back to
the newest intact one), rotated only once the new one is safe; and the EMA weights they carry."""

import json
import os
import shutil
import stat
import sys
import zipfile
import zlib
from pathlib import Path

from ..io.folders import first_line
from ..io.outputs import open_weights

COMPLETE_MARKER = "checkpoint_complete.json"
# the EMA in a checkpoint: its weights as safetensors, its counters as the file's metadata. accelerate would pickle
# it as a registered object and unpickle it with weights_only=False on resume, running whatever the file holds;
# checkpoints written that way (LEGACY_EMA_STATE) can still be exported, reading only tensors and plain values.
EMA_WEIGHTS = "ema.safetensors"
LEGACY_EMA_STATE = "custom_checkpoint_0.pkl"
# what torch.save writes into a checkpoint (accelerate's optimizer.bin, scheduler.bin, random_states_N.pkl): zip
# archives, whose members carry CRCs that can be checked without unpickling anything
TORCH_SAVE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


def complete_checkpoints(output_dir) -> list[Path]:
    """Checkpoints marked complete, oldest first; half-written ones are ignored."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        if (path / COMPLETE_MARKER).is_file() and path.name.split("-")[-1].isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None, extra: dict | None = None, ema=None):
    """Save accelerate state (and `ema`'s, a diffusers `EMAModel`) to a temporary folder, flush it to disk, mark
    it complete, rename it into place, then rotate: a `checkpoint-N` folder holding the marker is whole at every
    moment."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        # what a killed save or rotation left behind (one run at a time writes to output_dir)
        for stale in [*output_dir.glob(".checkpoint-*.tmp"), *output_dir.glob(".checkpoint-*.old")]:
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if ema is not None and accelerator.is_main_process:
        save_ema_state(ema, tmp)
    accelerator.wait_for_everyone()  # every process has written its part before the folder is marked
    if accelerator.is_main_process:
        open_weights(tmp, {})  # every file in it is new
        files = {}
        for path in sorted(tmp.rglob("*")):  # the data reaches the disk before the marker that vouches for it
            fsync_path(path)
            if path.is_file():
                files[path.relative_to(tmp).as_posix()] = path.stat().st_size
        # the sizes let a resume tell a file cut short from a whole one, whatever its format
        marker = {"step": step, "files": files, **(extra or {})}
        with open(tmp / COMPLETE_MARKER, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        if final.exists():
            discard_checkpoint(final)
        tmp.rename(final)
        fsync_path(output_dir)
        if total_limit:
            for old in complete_checkpoints(output_dir)[:-total_limit]:
                # a run resumed from an older checkpoint (a newer one was damaged) may have newer ones around:
                # the one just written is kept whatever its rank
                if old != final:
                    discard_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint_names(output_dir, steps) -> None:
    """Refuse a `checkpoint-N` in `output_dir`, for a step N a run will save, that is not a checkpoint genvl
    completed (no completion marker): saving would replace it, and genvl deletes only what it wrote."""
    for step in steps:
        path = Path(output_dir) / f"checkpoint-{step}"
        if os.path.lexists(path) and (path.is_symlink() or not (path / COMPLETE_MARKER).is_file()):
            raise FileExistsError(
                f"{path}: exists and is not a checkpoint genvl completed; saving step {step} "
                "would replace it: move it away or choose another --output_dir"
            )


def discard_checkpoint(path: Path):
    """Delete a checkpoint folder after renaming it to `.checkpoint-N.old`: a deletion cut short leaves a folder
    that `latest` ignores, never a marked one with files missing."""
    trash = path.with_name(f".{path.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash)


def fsync_path(path):
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warn(message: str, accelerator=None) -> None:
    """Print `message` on stderr; given `accelerator`, in its main process only."""
    if accelerator is None or accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def resolve_resume(
    output_dir, resume_from_checkpoint: str | None, log=warn, flag: str = "--resume_from_checkpoint"
) -> Path | None:
    """The checkpoint folder to resume from (None without `resume_from_checkpoint`).

    `latest` means the newest complete checkpoint in `output_dir` that `checkpoint_damage` finds whole; each newer
    one it finds damaged is reported through `log` (default: stderr) and skipped. None if there is no complete
    checkpoint; an error if there are some but all are damaged. A folder named explicitly (through `flag`) must be
    whole, the user chose it, so there is nothing to fall back to; and it must be one of `output_dir`'s, whose
    tokenizer and config its weights were trained with (another run's checkpoint paired them with a new tokenizer).
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = complete_checkpoints(output_dir)
        for path in reversed(found):
            damage = checkpoint_damage(path)
            if damage is None:
                return path
            log(f"skipping {path}: {damage}")
        if found:
            raise ValueError(
                f"{flag} latest: all {len(found)} checkpoints in {output_dir} are damaged (see above); "
                f"delete them to start over"
            )
        return None
    path = Path(resume_from_checkpoint)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{flag} {path}: not a complete checkpoint folder")
    if path.resolve().parent != Path(output_dir).resolve():  # its weights go with that run's tokenizer and config
        raise ValueError(f"{flag} {path}: a checkpoint of another run than {output_dir}; resume that run in its folder")
    damage = checkpoint_damage(path)
    if damage is not None:
        raise ValueError(f"{flag} {path}: {damage}")
    return path


def checkpoint_damage(path) -> str | None:
    """What is wrong with checkpoint folder `path`, as one line naming the damaged file, or None if nothing is.

    Every file must be a non-empty regular file, of the size the marker lists if it lists one (older checkpoints
    list none), and readable as what its name says: safetensors headers that cover the file exactly, zip archives
    (what torch.save writes) whose every member passes its CRC check, JSON that parses. The marker must give the
    folder's step. Nothing is unpickled, and each file is read at most once (the CRCs): cheap next to loading it.
    A bit flipped inside safetensors weights goes unseen: the format keeps no checksum.
    """
    path = Path(path)
    if not (path / COMPLETE_MARKER).exists():
        return f"{COMPLETE_MARKER} is missing (a save cut short)"
    damage = _file_damage(path / COMPLETE_MARKER, None)
    if damage is not None:
        return f"{COMPLETE_MARKER} {damage}"
    try:
        listed = dict(read_marker(path).get("files", {}))
    except (TypeError, ValueError, AttributeError) as err:  # AttributeError: a marker that is no JSON object
        return f"{COMPLETE_MARKER} is damaged ({first_line(err)})"
    for file in sorted(path.rglob("*")):
        name = file.relative_to(path).as_posix()
        if file.is_dir() and not file.is_symlink():
            continue
        damage = _file_damage(file, listed.get(name))
        if damage is not None:
            return f"{name} {damage}"
    return _marker_damage(path)


def _file_damage(file: Path, size: int | None) -> str | None:
    """Why checkpoint file `file` (of the `size` its marker lists, if it lists one) cannot be used, or None."""
    try:
        status = file.stat()
        if not stat.S_ISREG(status.st_mode):
            return "is not a regular file"
        if status.st_size == 0:
            return "is empty"
        if size is not None and status.st_size != size:
            return f"is damaged ({status.st_size} bytes, {size} when it was saved)"
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        elif file.suffix in TORCH_SAVE_SUFFIXES:
            _check_zip(file)
        elif file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"is damaged ({first_line(err)})"
    return None


def _check_safetensors(file: Path) -> None:
    """Raise ValueError unless `file` has a safetensors header whose tensors cover the file's bytes exactly
    (safe_open checks that, reading the header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        raise ValueError(f"not a readable safetensors file: {err}") from None


def _check_zip(file: Path) -> None:
    """Raise ValueError unless `file` is a zip archive whose members all pass their CRC check."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ValueError(f"not a readable zip archive, as torch.save writes: {err}") from None
    if bad is not None:
        raise ValueError(f"its member {bad} fails its CRC check")


def _marker_damage(path: Path) -> str | None:
    """What is wrong with the contents of the (parsed) completion marker of checkpoint folder `path`, or None."""
    marker = read_marker(path)
    step, losses = marker.get("step"), marker.get("losses", [])
    number = path.name.rpartition("-")[2]
    if type(step) is not int or step < 0:  # bool is an int too
        return f"{COMPLETE_MARKER} is damaged (its step is {step!r}, expected a count of steps)"
    if number.isdigit() and step != int(number):
        return f"{COMPLETE_MARKER} is damaged (its step is {step}, the folder's name says {number})"
    if not isinstance(losses, list):
        return f"{COMPLETE_MARKER} is damaged (its losses are {type(losses).__name__}, expected a list)"
    return None


def save_ema_state(ema, folder: Path) -> None:
    """Write `ema` (a diffusers `EMAModel`) into checkpoint folder `folder` as `EMA_WEIGHTS`."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    tensors = {str(i): p.detach().to("cpu").contiguous() for i, p in enumerate(state.pop("shadow_params"))}
    save_file(tensors, str(Path(folder) / EMA_WEIGHTS), metadata={"state": json.dumps(state)})


def read_ema_state(folder: Path) -> dict:
    """The EMA state dict a checkpoint folder holds (CPU tensors), from `EMA_WEIGHTS` or, in checkpoints written
    before it, from `LEGACY_EMA_STATE` read with weights_only=True."""
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    if (folder / EMA_WEIGHTS).is_file():
        with safe_open(str(folder / EMA_WEIGHTS), framework="pt") as f:
            state = json.loads(f.metadata()["state"])
            state["shadow_params"] = [f.get_tensor(str(i)) for i in range(len(f.keys()))]
        return state
    if (folder / LEGACY_EMA_STATE).is_file():
        return torch.load(folder / LEGACY_EMA_STATE, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no EMA state ({EMA_WEIGHTS})")


def _matching_ema_state(folder: Path, parameters: list) -> dict:
    """`read_ema_state(folder)`, checked to hold one tensor of the right shape per parameter."""
    state = read_ema_state(folder)
    shapes = [tuple(p.shape) for p in state["shadow_params"]]
    wanted = [tuple(p.shape) for p in parameters]
    if shapes != wanted:
        first = next((i for i, (a, b) in enumerate(zip(shapes, wanted)) if a != b), min(len(shapes), len(wanted)))
        in_ema = shapes[first] if first < len(shapes) else "nothing"
        in_model = wanted[first] if first < len(wanted) else "nothing"
        raise ValueError(
            f"{folder}: its EMA holds {len(shapes)} tensors that do not match the model's "
            f"{len(wanted)} parameters (tensor {first}: {in_ema} in the EMA, {in_model} in the model)"
        )
    return state


def load_ema_state(ema, folder: Path) -> None:
    """Restore `ema` (a diffusers `EMAModel`) from checkpoint folder `folder`, on the CPU."""
    state = _matching_ema_state(folder, ema.shadow_params)
    ema.load_state_dict(state)


def copy_ema_weights(parameters, folder: Path) -> None:
    """Copy the EMA weights of checkpoint folder `folder` into `parameters` (for exporting a checkpoint)."""
    import torch

    parameters = list(parameters)
    shadow = _matching_ema_state(folder, parameters)["shadow_params"]
    with torch.no_grad():
        for parameter, value in zip(parameters, shadow):
            parameter.copy_(value)


def read_marker(path: Path) -> dict:
    """The completion marker of a checkpoint: {"step": N, ...what the run added, such as "losses"}."""
    return json.loads((path / COMPLETE_MARKER).read_text())


def checkpoint_step(path: Path) -> int:
    return read_marker(path)["step"]


def load_accelerator_state(accelerator, folder: Path) -> None:
    """`accelerator.load_state(folder)`, its failures (on files `checkpoint_damage` passed: a checkpoint of another
    model or setup, say) told in one line that names the folder."""
    try:
        accelerator.load_state(str(folder))
    except Exception as err:  # noqa: BLE001  (torch and accelerate raise many kinds; all end the same way)
        # the whole message on one line: torch's first line ("Error(s) in loading state_dict for X:") says nothing
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise RuntimeError(f"{folder}: could not load this checkpoint ({type(err).__name__}: {detail})") from err
