"""Writing rendered scenes as a Hugging Face imagefolder, and reading imagefolders back for training.

Splits never share a scene: every scene's identity (its layout and object geometry) is hashed, and the hash
decides which split the scene may belong to, so no two splits can hold the same composition whatever seeds
they were written with.
"""

import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
from pathlib import Path

from ..io.outputs import cannot_write, failed_writing, remove_stale_temporaries, temporary_name
from .captions import scene_captions
from .classic import sample_classic_scene
from .scenes import held_out, render_scene, sample_scene
from .sprites import ALL_OBJECTS, HELD_OUT_OBJECTS, OBJECTS

MANIFEST = "genvl_dataset.json"  # in every split folder genvl writes: how it was made and every file it holds
# the sides a scene is rendered at: below 16 px the objects vanish; above 1,024 each image is megabytes of pixels
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024
SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}
WORLDS = {"wide": sample_scene, "classic": sample_classic_scene}


def scene_id(scene: dict) -> str:
    """A stable identity for a scene's content, independent of its background."""
    key = json.dumps({"layout": scene["layout"], "objects": scene["objects"]}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def split_of(scene: dict) -> str:
    bucket = int(scene_id(scene), 16) % 10
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def generate_scenes(
    num_images: int, seed: int, split: str, names=None, colours=None, require=None, world: str = "wide", style=None
):
    """Yield `num_images` scene graphs belonging to `split`, deterministically for a seed.

    The train and val splits never hold a scene of a held-out style family (`scenes.HELD_OUT_FAMILIES`); the
    test split holds every family. `world` "classic" draws the world's first scenes instead (no style
    families). `style` fixes some style families of the wide world, e.g. {"background": "dark"}. With `require`
    (an object name, held-out ones included), only scenes holding that object are kept, drawn from the default
    objects plus it.
    """
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_BUCKETS)}, got {split!r}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {world!r}")
    sample = WORLDS[world]
    if style:
        if world != "wide":
            raise ValueError("style families exist in the wide world only")
        if split != "test" and held_out({"style": style}):
            raise ValueError(f"style {style} holds a family kept out of training; only the test split has it")
        sample = lambda rng, names, colours: sample_scene(rng, names, colours, style)  # noqa: E731
    if require is not None:
        if require not in ALL_OBJECTS:
            raise ValueError(f"unknown object {require!r}; held-out ones: {sorted(HELD_OUT_OBJECTS)}")
        names = sorted(set(names or OBJECTS) | {require})
    prefix = "" if world == "classic" else f"{world}-"  # classic keeps its first seeds
    rng = random.Random(f"{prefix}{seed}-{split}" + (f"-{require}" if require else ""))
    made = 0
    while made < num_images:
        scene = sample(rng, names, colours)
        if require is not None and all(obj["name"] != require for obj in scene["objects"]):
            continue
        if split != "test" and held_out(scene):
            continue
        if split_of(scene) == split:
            made += 1
            yield scene


def _png_bytes(job) -> bytes:
    scene, resolution = job
    buffer = io.BytesIO()
    render_scene(scene, resolution).save(buffer, format="png")
    return buffer.getvalue()


def write_imagefolder(
    out_dir,
    num_images: int,
    seed: int = 0,
    split: str = "train",
    resolution: int = 64,
    names=None,
    colours=None,
    progress=None,
    require=None,
    workers: int = 1,
    overwrite: bool = False,
    world: str = "wide",
    style: dict | None = None,
) -> Path:
    """Render scenes into `out_dir/<split>/` with a `metadata.jsonl` (file_name, text, captions, scene) and a
    `genvl_dataset.json` manifest (seed, split, count, resolution, world, style, and the name of every file
    written). `world`, `style`: as for `generate_scenes`.

    With `workers` > 1 the images are rendered by that many processes; the files are the same. The folder is
    built beside its destination, in a hidden `.<split>.<host>-<pid>.tmp` folder, and renamed into place, so an
    interrupted run leaves nothing half-written; such a folder left by a killed run is removed by the next run.
    An existing split folder is refused unless `overwrite`, and even then replaced only if it holds nothing but
    the files its manifest lists: genvl never deletes what it did not write.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    final = Path(out_dir) / split
    if os.path.lexists(final):
        check_replaceable(final, overwrite)  # before any work
    remove_stale_temporaries(final)
    tmp = temporary_name(final)
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # this name is this process's own: left by an earlier one, if at all
        tmp.mkdir(parents=True)
        scenes = list(generate_scenes(num_images, seed, split, names, colours, require, world, style))
        files = _render_into(tmp, scenes, random.Random(f"{seed}-{split}-captions"), resolution, progress, workers)
        manifest = {
            "seed": seed,
            "split": split,
            "count": num_images,
            "resolution": resolution,
            "require": require,
            "world": world,
            "style": style,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, final, overwrite)
    except OSError as err:
        if not failed_writing(err, tmp, final):
            raise
        raise cannot_write(err, str(final)) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _render_into(folder: Path, scenes, caption_rng, resolution: int, progress, workers: int) -> list[str]:
    """Write the scenes' PNGs and `metadata.jsonl` into `folder`; returns the names of the files written."""
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        jobs = ((scene, resolution) for scene in scenes)
        pngs = pool.imap(_png_bytes, jobs, chunksize=64) if pool else map(_png_bytes, jobs)
        if progress:
            pngs = progress(pngs, total=len(scenes))
        files = ["metadata.jsonl"]
        with open(folder / "metadata.jsonl", "w") as meta:
            for index, (scene, png) in enumerate(zip(scenes, pngs)):
                file_name = f"{index:06d}.png"
                (folder / file_name).write_bytes(png)
                files.append(file_name)
                captions = scene_captions(scene, caption_rng)
                record = {
                    "file_name": file_name,
                    "text": captions[0],
                    "captions": captions,
                    "scene_id": scene_id(scene),
                    "scene": scene,
                }
                meta.write(json.dumps(record) + "\n")
        return files
    finally:
        if pool is not None:
            pool.terminate()


def check_replaceable(folder: Path, overwrite: bool) -> None:
    """Raise unless the existing split folder `folder` may be replaced: `overwrite` is set, and it holds nothing
    but the files its manifest lists (and the manifest)."""
    if not overwrite:
        raise FileExistsError(f"{folder}: already exists; pass --overwrite to replace a split folder genvl wrote")
    if folder.is_symlink() or not folder.is_dir():
        raise FileExistsError(f"{folder}: is not a folder genvl wrote (a symlink or a file); not replacing it")
    manifest = folder / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        raise FileExistsError(
            f"{folder}: holds no {MANIFEST}, so this genvl did not write it (older versions kept "
            "none); not replacing it: remove it yourself if it is yours to remove"
        )
    try:
        listed = set(json.loads(manifest.read_text())["files"]) | {MANIFEST}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest}: not a genvl manifest ({err!r}); not replacing {folder}") from None
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.name not in listed or not entry.is_file(follow_symlinks=False):
            raise FileExistsError(f"{entry.path}: not written by genvl (not in {MANIFEST}); not replacing {folder}")


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the built folder `tmp` to `final`. An existing `final` is checked again (something may have appeared
    while rendering), moved aside, and deleted only once the new folder is in place."""
    if not os.path.lexists(final):
        tmp.rename(final)
        return
    check_replaceable(final, overwrite)
    aside = temporary_name(final, "replaced")
    final.rename(aside)
    try:
        tmp.rename(final)
    except BaseException:
        aside.rename(final)
        raise
    shutil.rmtree(aside)
