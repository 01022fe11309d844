"""Does the captioner still read a scene once the picture has been saved as people save pictures?

    python examples/saved_images.py --data data/wide/test --limit 2000   # the default captioner
    python examples/saved_images.py --data data/wide/test --limit 2000 --model pipelines/genvl-caption-small

Each test render is saved and read back in memory one way at a time (PNG as rendered; JPEG at qualities from 90
down to 15; WebP; light sensor noise; a slight blur; halved and enlarged again) and then captioned, and the
captions are scored against the scene graphs as `genvl eval caption` scores them. Training sees JPEG at qualities
30 to 95 when its recipe says `--augment jpeg`; JPEG at 15, WebP, noise, blur and halving never reach it, so
those rows say whether what it learnt carries over to damage it was not shown.

    python examples/saved_images.py --data data/wide/test --limit 3000 --ways "JPEG 75 (PIL's default)" \
        --write data/wide-jpeg75
    genvl eval vqa --data data/wide-jpeg75/test   # any evaluation, on the images as saved that way

`--write DIR` writes each way's images (as read back, in PNG) with the folder's metadata to `DIR/test` instead
of captioning them.
"""

import argparse
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from genvl.evaluation.captioning import evaluate_captioner
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline


def saved(image: Image.Image, format: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return Image.open(buffer).convert("RGB")


def noisy(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8))


def halved(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.resize((width // 2, height // 2), Image.BICUBIC).resize((width, height), Image.BICUBIC)


# way -> (whether training with `--augment jpeg` sees such damage, how an image is saved that way and read back)
WAYS = {
    "PNG as rendered": (True, lambda image, seed: image),
    "JPEG 90": (True, lambda image, seed: saved(image, "JPEG", quality=90)),
    "JPEG 75 (PIL's default)": (True, lambda image, seed: saved(image, "JPEG", quality=75)),
    "JPEG 50": (True, lambda image, seed: saved(image, "JPEG", quality=50)),
    "JPEG 30": (True, lambda image, seed: saved(image, "JPEG", quality=30)),
    "JPEG 15": (False, lambda image, seed: saved(image, "JPEG", quality=15)),
    "WebP 50": (False, lambda image, seed: saved(image, "WEBP", quality=50)),
    "noise (sigma 8 of 255)": (False, lambda image, seed: noisy(image, 8.0, seed)),
    "blur (radius 0.7 px)": (False, lambda image, seed: image.filter(ImageFilter.GaussianBlur(0.7))),
    "halved and enlarged": (False, lambda image, seed: halved(image)),
}


def damaged(damage, path) -> Image.Image:
    return damage(Image.open(path).convert("RGB"), zlib.crc32(str(path).encode()))


def write(source: Path, target: Path, damage, limit: int) -> None:
    """The first `limit` images of the imagefolder `source`, damaged, with their metadata records, in `target`."""
    if target.exists():
        raise SystemExit(f"{target}: already exists")
    target.mkdir(parents=True)
    records = (source / "metadata.jsonl").read_text().splitlines()[:limit]
    for line in records:
        name = json.loads(line)["file_name"]
        if Path(name).name != name:
            raise SystemExit(f"{source}: file_name {name!r} is not a plain file name")
        damaged(damage, source / name).save(target / name)
    (target / "metadata.jsonl").write_text("".join(line + "\n" for line in records))


HEADER = "| saved as | seen by --augment jpeg | exact | in family | held-out families | names | colours | degenerate |"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/wide/test", help="imagefolder of renders with scene graphs")
    parser.add_argument("--model", default=None, help=f"captioner folder (default: {DEFAULT_CAPTIONER})")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--ways", default=None, help="comma-separated names of WAYS (default: all)")
    parser.add_argument("--json", action="store_true", help="print each way's figures as a JSON line")
    parser.add_argument("--write", default=None, help="write the images of the one way chosen to DIR/test instead")
    args = parser.parse_args(argv)
    ways = args.ways.split(",") if args.ways else list(WAYS)
    unknown = [way for way in ways if way not in WAYS]
    if unknown:
        parser.error(f"unknown way {unknown[0]!r}; ways: {', '.join(WAYS)}")
    if args.write:
        if len(ways) != 1:
            parser.error("--write takes exactly one of --ways")
        write(Path(args.data), Path(args.write) / "test", WAYS[ways[0]][1], args.limit)
        return []
    pipe = CaptionPipeline.from_pretrained(args.model or shipped_pipeline(DEFAULT_CAPTIONER))
    if not args.json:
        print(HEADER)
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for way in ways:
        seen, damage = WAYS[way]

        def caption(paths, **decoding):
            return pipe([damaged(damage, path) for path in paths], **decoding)

        report = evaluate_captioner(caption, args.data, limit=args.limit, num_beams=args.beam)
        groups = {name: report.get(name, {}).get("scene_exact_match") for name in ("in_family", "held_out_family")}
        row = {"way": way, "seen_in_training": seen, "exact": report["scene_exact_match"], **groups}
        row.update(names=report["names"], colours=report["colours"], degenerate=report["degenerate"])
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            keys = ("exact", "in_family", "held_out_family", "names", "colours")
            figures = " | ".join("-" if row[key] is None else f"{row[key]:.3f}" for key in keys)
            print(f"| {way} | {'yes' if seen else 'no'} | {figures} | {row['degenerate']} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
