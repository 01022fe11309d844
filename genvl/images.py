"""Loading images from paths or Pillow objects, converted deliberately to RGB."""

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def set_max_image_pixels(pixels: int) -> None:
    """Images over `pixels` pixels are refused as possible decompression bombs (Pillow's guard; its default
    limit is about 179 million pixels)."""
    Image.MAX_IMAGE_PIXELS = pixels


def load_image(image, name: str | None = None) -> Image.Image:
    """A Pillow image, a path or encoded bytes -> RGB Pillow image, with EXIF orientation applied.

    Transparent images are composited on white rather than having their alpha dropped, so that transparent
    pixels do not turn black. Errors name the file (or `name`, for bytes).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        image = _decode(path, str(path))
    elif isinstance(image, bytes):
        image = _decode(io.BytesIO(image), name or "image bytes")
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def _decode(source, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; genvl holds to the limit itself
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                opened.load()
                return ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name}: {err} Raise the limit with --max-image-pixels if the file is trusted.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{name}: not a readable image ({err})") from None


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
