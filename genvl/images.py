"""Loading images from paths or Pillow objects, converted deliberately to RGB."""

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(image) -> Image.Image:
    """A Pillow image or a path -> RGB Pillow image, with EXIF orientation applied.

    Transparent images are composited on white rather than having their alpha dropped, so that transparent
    pixels do not turn black.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def find_images(paths) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files."""
    found = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise ValueError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found
