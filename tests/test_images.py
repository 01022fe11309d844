"""Image loading: modes converted deliberately, clear errors naming the file."""

import numpy as np
import pytest
from PIL import Image

from genvl.io.images import find_images, load_image


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    image = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    suffix = ".tif" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"x{suffix}")
    loaded = load_image(tmp_path / f"x{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (5, 3)


@pytest.mark.parametrize(
    "make, grey",
    [
        (lambda: Image.new("L", (4, 4), 100).convert("I"), 100),  # 8-bit levels held as 32-bit integers
        (lambda: Image.new("I;16", (4, 4), 65535), 255),
        (lambda: Image.new("I;16", (4, 4), 25700), 100),
        (lambda: Image.new("I", (4, 4), 25700), 100),  # 16-bit levels held as 32-bit integers
        (lambda: Image.new("F", (4, 4), 0.5), 128),  # fractions of white
        (lambda: Image.new("F", (4, 4), 200.0), 200),
    ],
)
def test_integer_and_float_images_keep_their_levels(make, grey):
    # every mode I image was read as 16-bit and a float one as levels: 8-bit and fractional ones came out black
    assert np.asarray(load_image(make()))[0, 0].tolist() == [grey] * 3


@pytest.mark.parametrize("mode", ["PA", "RGBa", "La", "LA", "RGBA"])
def test_every_mode_with_alpha_is_composited_on_white(mode):
    # PA and RGBa lost their alpha (transparent pixels turned black) and La could not be converted at all
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image = Image.new(mode, (4, 4)) if mode in ("PA", "La") else clear.convert(mode)  # alpha 0 everywhere
    assert np.asarray(load_image(image))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 2), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (2, 6)


def test_errors_name_the_file(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="fake.png"):
        load_image(tmp_path / "fake.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        find_images([tmp_path / "empty"])


def test_pad_to_square_centres_the_image_on_its_border_colour():
    from genvl.io.images import pad_to_square

    wide = Image.new("RGB", (40, 20), (10, 200, 30))
    wide.paste((250, 0, 0), (18, 8, 22, 12))  # an object in the middle
    square = pad_to_square(wide)
    assert square.size == (40, 40)
    pixels = np.asarray(square)
    assert (pixels[:10] == (10, 200, 30)).all() and (pixels[30:] == (10, 200, 30)).all()  # the border's colour
    assert (pixels[10:30] == np.asarray(wide)).all()  # the image itself, centred, untouched
    assert pad_to_square(Image.new("RGB", (7, 15))).size == (15, 15)
    same = Image.new("RGB", (16, 16))
    assert pad_to_square(same) is same


def test_the_contrast_fill_stands_apart_from_the_picture_in_every_channel():
    from genvl.io.images import CONTRAST, pad_colour, pad_to_square

    assert pad_colour([[255, 255, 255]] * 3, "contrast") == (255 - CONTRAST,) * 3  # white: a grey
    assert pad_colour([[24, 24, 34]], "contrast") == (24 + CONTRAST, 24 + CONTRAST, 34 + CONTRAST)  # dark: lighter
    assert pad_colour([[200, 30, 128], [210, 30, 128], [0, 0, 0]], "contrast") == (200 - CONTRAST, 30 + CONTRAST, 32)
    assert pad_colour([[10, 200, 30], [10, 200, 30], [90, 0, 0]]) == (10, 200, 30)  # "border": the median
    with pytest.raises(ValueError, match="pad fill must be one of border, contrast, got 'black'"):
        pad_colour([[0, 0, 0]], "black")
    rng = np.random.default_rng(0)
    for _ in range(20):  # whatever the ground, the padding differs from the picture's edge
        wide = Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8).repeat(10, 0).repeat(30, 1))
        pixels = np.asarray(pad_to_square(wide, "contrast")).astype(int)
        assert (np.abs(pixels[0, 0] - pixels[15, 0]) >= CONTRAST).all()


def test_a_pipeline_pads_only_when_its_setting_says_so(tiny_pipeline_dir):
    from genvl.io.images import pad_to_square
    from genvl.pipelines.caption import CaptionPipeline

    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    tall = Image.new("RGB", (30, 60), (200, 200, 200))
    tall.paste((0, 0, 255), (5, 10, 25, 30))
    assert not pipe.config.pad_to_square  # transformers' way: the processor squashes
    squashed = pipe.image_processor(images=[tall], return_tensors="pt").pixel_values
    assert (pipe.preprocess([tall]) == squashed).all()
    padded = CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, pad_to_square=True)
    expected = pipe.image_processor(images=[pad_to_square(tall)], return_tensors="pt").pixel_values
    assert (padded.preprocess([tall]) == expected).all() and not (expected == squashed).all()
    with pytest.raises(ValueError, match="pad_to_square must be true or false"):
        CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, pad_to_square="yes")
    contrast = CaptionPipeline(
        pipe.model, pipe.tokenizer, pipe.image_processor, pad_to_square=True, pad_fill="contrast"
    )
    expected = pipe.image_processor(images=[pad_to_square(tall, "contrast")], return_tensors="pt").pixel_values
    assert (contrast.preprocess([tall]) == expected).all() and not (contrast.preprocess([tall]) == squashed).all()
    with pytest.raises(ValueError, match="pad_fill must be one of border, contrast, got 'mean'"):
        CaptionPipeline(pipe.model, pipe.tokenizer, pipe.image_processor, pad_fill="mean")
