"""Loading images from paths or Pillow objects, converted deliberately to RGB.

Every image genvl decodes is held to one pixel limit, checked from the file's header before any pixel is decoded:
Pillow's `Image.MAX_IMAGE_PIXELS` (set with `set_max_image_pixels`, the CLI's `--max-image-pixels`), whose default
is `DEFAULT_MAX_IMAGE_PIXELS`. Pillow itself only warns between its limit and twice it; genvl refuses there too.
"""

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .paths import check_input_file, path_status

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# the formats Pillow may decode an image as, whatever its name says (Pillow tells formats by their content): those
# of IMAGE_SUFFIXES (a camera's multi-picture .jpg is read by the JPEG plugin). Pillow's other plugins are never
# tried: its EPS plugin runs Ghostscript, and a file named .png may hold PostScript
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# Pillow's own default (a quarter GiB of 24-bit pixels), written out so that --help states the number it enforces
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


class ImageTooLarge(ValueError):
    """An image over the pixel limit: a possible decompression bomb, refused before its pixels are decoded."""


@dataclass(frozen=True)
class EncodedImage:
    """An encoded image not decoded yet, and the name its errors give (e.g. `shard.tar#key`): lets a list of
    inputs stay small until `load_image` decodes them one at a time."""

    data: bytes
    name: str


def set_max_image_pixels(pixels: int) -> None:
    """Images over `pixels` pixels are refused as possible decompression bombs (default DEFAULT_MAX_IMAGE_PIXELS)."""
    Image.MAX_IMAGE_PIXELS = pixels


def max_image_pixels() -> int | None:
    """The pixel limit in force (None: no limit, as Pillow allows)."""
    return Image.MAX_IMAGE_PIXELS


def load_image(image, name: str | None = None) -> Image.Image:
    """A Pillow image, a path, encoded bytes or an `EncodedImage` -> RGB Pillow image, EXIF orientation applied.

    Transparent images are composited on white rather than having their alpha dropped, so that transparent
    pixels do not turn black. Errors name the file (or `name`, for bytes).
    """
    if isinstance(image, (str, Path)):
        if not os.path.lexists(image):
            raise FileNotFoundError(f"{image}: no such image file")
        # a FIFO would block the open, and a symlink loop or a device would read as "no such file"
        path = check_input_file(image, "an image file")
        image = _decode(path, str(path))
    elif isinstance(image, bytes):
        image = _decode(io.BytesIO(image), name or "image bytes")
    elif isinstance(image, EncodedImage):
        image = _decode(io.BytesIO(image.data), image.name)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a path or encoded bytes, got {type(image).__name__}")
    if image.mode == "La":  # luminance with premultiplied alpha: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith(("I", "F")):
        image = _grey_levels(image)
    return image.convert("RGB")


def _grey_levels(image: Image.Image) -> Image.Image:
    """An integer or float greyscale image (modes I;16*, I, F) as 8-bit grey. 16-bit modes are 16-bit levels; in
    modes I and F, which hold any scale, the values tell it: floats within [0, 1] are fractions of white, values
    within [0, 255] 8-bit levels, within [0, 65535] 16-bit ones; others are stretched from least to greatest."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scaled = values / 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257
    else:
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.nan_to_num(scaled).round().clip(0, 255).astype(np.uint8), mode="L")


def _decode(source, name: str) -> Image.Image:
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: genvl refuses from the size checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as opened:  # lazy: the header is read, not the pixels
                if limit is not None and opened.size[0] * opened.size[1] > limit:
                    raise ImageTooLarge(_too_many_pixels(name, opened.size[0] * opened.size[1], limit))
                opened.load()
                return ImageOps.exif_transpose(opened)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as err:  # over twice the limit, Pillow refuses inside Image.open
        raise ImageTooLarge(_too_many_pixels(name, _refused_pixels(err), limit)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{name}: not a readable image ({err})") from None


def _too_many_pixels(name: str, pixels: int | None, limit: int) -> str:
    """The one wording of a refusal, whatever the image came from (a path, a shard member, bytes)."""
    found = (
        f"over twice the limit of {limit:,} pixels"
        if pixels is None
        else f"{pixels:,} pixels, over the limit of {limit:,}"
    )
    return f"{name}: {found} (a possible decompression bomb); raise --max-image-pixels if the file is trusted"


def _refused_pixels(err: Exception) -> int | None:
    """The pixel count in Pillow's refusal ("Image size (N pixels) exceeds limit of ..."), or None."""
    import re

    match = re.search(r"\((\d+) pixels\)", str(err))
    return int(match.group(1)) if match else None


def names_an_image_file(text: str) -> bool:
    """Whether `text`, an argument that may be a prompt or an image, names an image file: something other than a
    folder exists there (an SVG or a FIFO too: loading says what is wrong with it), it ends in an image suffix and
    holds no spaces ("cat.png"; "a cat.png" is a prompt), or it ends in a slash (a folder named as a path, which
    loading refuses). A prompt is anything else, a folder's name without a slash included ("cat")."""
    if os.path.lexists(text) and not os.path.isdir(text):
        return True
    return text.endswith(("/", os.sep)) or (
        Path(text).suffix.lower() in IMAGE_SUFFIXES and not any(c.isspace() for c in text)
    )


def find_images(paths) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files.

    A path that is not a regular file or folder is an error saying what it is. In a folder, entries without an
    image suffix are ignored, and one with an image suffix that is not a regular file (a FIFO, a device, a broken
    symlink, a symlink loop) is an error rather than an image silently left out; nothing is opened.
    """
    found = []
    for item in paths:
        path = Path(item)
        if stat.S_ISDIR(path_status(path).st_mode):  # missing, a broken link or a loop: an error saying so
            images = _images_in(path)
            if not images:
                raise ValueError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        else:
            found.append(check_input_file(path, "an image file or a folder"))
    return found


def _images_in(folder: Path) -> list[Path]:
    def unreadable(err: OSError):
        raise OSError(f"{err.filename}: cannot read the folder ({err.strerror})")

    images = []
    # symlinked folders are not followed (as Path.rglob does not): a link to a parent cannot loop the walk
    for root, _, names in os.walk(folder, onerror=unreadable):
        for name in names:  # symlinks to folders are listed as folders, broken links and loops as names
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                images.append(check_input_file(Path(root) / name, "an image file"))
    return sorted(images)


_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable_path(text: str) -> str:
    """`text` (a path or a `shard#key` label) safe on one line of `path<TAB>caption` output.

    Tab, newline and return become \\t \\n \\r; other C0 and C1 controls, DEL, and the line separators U+2028 and
    U+2029 become \\xNN or \\uNNNN; bytes that were not UTF-8 in a file name (surrogate escapes) become \\xNN.
    A backslash is doubled only when something else was escaped, so ordinary names print as they are (a name
    holding a literal backslash-t then reads like an escaped tab: `--json` gives every name exactly).
    """
    if all(_printable(char) for char in text):
        return text
    return "".join(_escaped(char) for char in text)


def _printable(char: str) -> bool:
    code = ord(char)
    return not (code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF)


def _escaped(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if _printable(char):
        return char
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


PAD_FILLS = ("border", "contrast")
CONTRAST = 96  # how far, in 8-bit levels per channel, the "contrast" fill lies from the border's median


def check_pad_fill(fill, name: str = "pad fill"):
    """Refuse a `fill` that is not one of `PAD_FILLS`, in a one-line error naming it as `name`."""
    if fill not in PAD_FILLS:
        raise ValueError(f"{name} must be one of {', '.join(PAD_FILLS)}, got {fill!r}")


def pad_colour(border, fill: str = "border") -> tuple[int, int, int]:
    """The colour `pad_to_square` fills with, from an (N, 3) array of a picture's 8-bit border pixels: their
    median ("border"), or that median moved `CONTRAST` levels in each channel towards the far end of its range
    ("contrast"), so that the padding always stands apart from the picture and a model can see where it ends."""
    import numpy as np

    check_pad_fill(fill)
    median = np.median(np.asarray(border, dtype=np.float64).reshape(-1, 3), axis=0)
    if fill == "contrast":
        median = np.where(median < 128, median + CONTRAST, median - CONTRAST)
    return tuple(int(v) for v in median)


def pad_to_square(image: Image.Image, fill: str = "border") -> Image.Image:
    """`image` centred on a square canvas of its longer side, filled with `pad_colour` of its border pixels: an
    image processor that resizes to a square then keeps the objects' shapes, where squashing a 2:1 or 16:9 image
    distorts them past what a model trained on square images reads. A square image is returned as it is."""
    import numpy as np

    width, height = image.size
    if width == height:
        return image
    image = image.convert("RGB")
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    side = max(width, height)
    square = Image.new("RGB", (side, side), pad_colour(border, fill))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def pixels_to_uint8(pixels):
    """Images (a tensor) in [-1, 1] as 8-bit values on the CPU, rounded as a saved PNG would be."""
    import torch

    return ((pixels.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def picture_mask(width: int, height: int, size: tuple[int, int]):
    """(H, W) mask of where a `width` x `height` picture lies once `pad_to_square` has centred it on its square and
    the square is resized to `size` (H, W): 1 on the pixels whose centres fall in the picture, 0 on the padding."""
    import torch

    side = max(width, height)

    def line(extent: int, pixels: int) -> torch.Tensor:
        start = (side - extent) // 2
        centres = (torch.arange(pixels, dtype=torch.float32) + 0.5) * side / pixels
        return ((centres >= start) & (centres < start + extent)).float()

    return line(height, size[0])[:, None] * line(width, size[1])[None, :]


def preprocess_each(image_processor, images, square: bool = False, fill: str = "border", mask: bool = False):
    """Pixel values (B, 3, H, W) of PIL images or paths, each loaded and run through `image_processor` on its own:
    a batch never holds more than one image at full size. The same values as one call on the whole batch. With
    `square`, each image is padded to a square first (`pad_to_square` with `fill`). With `mask`, (B, 4, H, W):
    the fourth channel is each picture's `picture_mask` (all 1 unless `square` padded it)."""
    import torch

    def processed(image):
        image = load_image(image)
        pixels = image_processor(images=[pad_to_square(image, fill) if square else image], return_tensors="pt")
        pixels = pixels.pixel_values
        if not mask:
            return pixels
        where = picture_mask(*image.size, pixels.shape[-2:]) if square else torch.ones(pixels.shape[-2:])
        return torch.cat([pixels, where.to(pixels.dtype)[None, None]], dim=1)

    return torch.cat([processed(image) for image in images])
