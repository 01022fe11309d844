"""`genvl data scenes` and `genvl data shards`: make datasets."""

import argparse
import math
from pathlib import Path

from ..io.outputs import check_output_file
from ..world.backgrounds import BACKGROUND_FAMILIES
from ..world.dataset import MAX_RESOLUTION, MIN_RESOLUTION
from ..world.scenes import PALETTES, SIZE_BANDS
from .common import UsageError, checked_type, plural, positive, progress_bar, seed_number, summarize


def add_parser(commands) -> None:
    """Register `genvl data` and its subcommands on the `genvl` subparsers."""
    data = commands.add_parser(
        "data",
        help="make datasets",
        epilog="example: genvl data scenes --out data/world --num-images 1000",
    ).add_subparsers(dest="data_command", required=True, metavar="{scenes,shards}")
    scenes = data.add_parser(
        "scenes",
        help="render procedural scenes as an imagefolder",
        epilog="example: genvl data scenes --out data/world --num-images 1000 --split test",
    )
    scenes.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT/")
    scenes.add_argument("--num-images", type=positive(int), required=True)
    scenes.add_argument("--seed", type=seed_number, default=0)
    scenes.add_argument("--split", choices=["train", "val", "test"], default="train")
    scenes.add_argument(
        "--resolution",
        type=checked_type(
            int, lambda v: MIN_RESOLUTION <= v <= MAX_RESOLUTION, f"in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]"
        ),
        default=64,
        help="the images' side in pixels",
    )
    scenes.add_argument("--workers", type=positive(int), default=1, help="processes rendering the images")
    scenes.add_argument(
        "--require",
        metavar="OBJECT",
        type=object_name,
        help="keep only scenes holding this object, which may be a held-out one (e.g. robot)",
    )
    scenes.add_argument(
        "--world",
        choices=["wide", "classic"],
        default="wide",
        help="wide: every style family (default); classic: the first world's scenes, which the shipped "
        "text-to-image models were trained on",
    )
    scenes.add_argument("--background", choices=BACKGROUND_FAMILIES, help="draw every scene on this family")
    scenes.add_argument("--size-band", choices=list(SIZE_BANDS), help="draw every scene's objects in this band")
    scenes.add_argument("--palette", choices=PALETTES, help="words: colour words; original: OpenMoji's colours")
    scenes.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT/SPLIT/ that genvl wrote (refused if it holds anything else)",
    )
    scenes.add_argument("--quiet", action="store_true")
    shards = data.add_parser(
        "shards",
        help="pack an imagefolder into WebDataset tar shards",
        epilog="example: genvl data shards --data data/world/test --out 'shards/test-%06d.tar'",
    )
    shards.add_argument("--data", required=True, help="imagefolder with metadata.jsonl")
    shards.add_argument("--out", required=True, help="shard name with a %%d field for the shard's number")
    shards.add_argument("--samples-per-shard", type=positive(int), default=1000)
    shards.add_argument("--quiet", action="store_true", help="no summary line on stderr")


def object_name(text: str) -> str:
    """An argparse type: an object of the world, held-out ones included."""
    from ..world.sprites import ALL_OBJECTS, HELD_OUT_OBJECTS

    if text not in ALL_OBJECTS:
        raise argparse.ArgumentTypeError(f"no object {text!r} in the world (held-out ones: {sorted(HELD_OUT_OBJECTS)})")
    return text


def run_data_scenes(args) -> int:
    from ..world.dataset import write_imagefolder

    style = {"background": args.background, "size": args.size_band, "palette": args.palette}
    style = {key: value for key, value in style.items() if value is not None}
    if style and args.world != "wide":
        raise UsageError("--background, --size-band and --palette choose style families of the wide world only")
    progress = progress_bar(args, "img")
    out = write_imagefolder(
        args.out,
        args.num_images,
        seed=args.seed,
        split=args.split,
        resolution=args.resolution,
        progress=progress,
        require=args.require,
        workers=args.workers,
        overwrite=args.overwrite,
        world=args.world,
        style=style or None,
    )
    print(out)
    return 0


def run_data_shards(args) -> int:
    from ..io.imagefolder import read_metadata
    from ..io.images import load_image
    from ..io.shards import write_shards

    try:
        args.out % 0
    except (TypeError, ValueError):
        raise UsageError(f"--out {args.out}: expected one %d field for the shard number, e.g. out/train-%06d.tar")
    records = read_metadata(args.data)
    names = [args.out % index for index in range(math.ceil(len(records) / args.samples_per_shard))]
    if len(set(names)) != len(names):  # "%.1s" names shards 1 and 10 alike: the second would replace the first
        raise UsageError(f"--out {args.out}: gives two shards one name; use one %d field, e.g. out/train-%06d.tar")
    for record in records:  # a missing image found half way left the shards before it written
        image = Path(args.data) / record["file_name"]
        if not image.is_file():
            raise FileNotFoundError(f"{image}: no such image file (named in {Path(args.data) / 'metadata.jsonl'})")
    for name in names:  # every shard's name, before any work
        shard = Path(name)
        if shard.parent.is_dir():
            check_output_file(shard, "--out", inputs=[args.data])
    written = write_shards(
        records, lambda r: load_image(Path(args.data) / r["file_name"]), args.out, args.samples_per_shard
    )
    for path in written:
        print(path)
    summarize(args, f"packed {plural(len(records), 'sample')} into {plural(len(written), 'shard')}")
    return 0


RUNS = {"scenes": run_data_scenes, "shards": run_data_shards}
