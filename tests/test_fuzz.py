"""Bounded fuzzing of the two places untrusted input meets genvl: the image loader and the decoding settings.

Whatever comes in, the outcome is either a result of the promised form or a ValueError (TypeError for wrongly
typed settings) whose message says what was wrong; never another exception, a hang or a NaN caption score.
"""

import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genvl.io.images import load_image
from genvl.pipelines.caption import CaptionPipeline


def encoded(fmt: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 9), 90).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [
    encoded("PNG", "RGB"),
    encoded("PNG", "P"),
    encoded("JPEG", "RGB"),
    encoded("GIF", "L"),
    encoded("BMP", "RGB"),
    encoded("WEBP", "RGB"),
    encoded("TIFF", "CMYK"),
]


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image file of some format, then truncated, overwritten in places, or with bytes spliced in."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "overwrite", "insert"]))
        if action == "cut":
            del data[at:]
        elif action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.one_of(damaged_images(), st.binary(max_size=300)))
def test_image_loader_returns_rgb_or_names_the_problem(data):
    try:
        image = load_image(data, name="sample")
    except ValueError as err:
        assert str(err).startswith("sample: ")
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.one_of(damaged_images(), st.binary(max_size=300)))
def test_image_loader_reads_files_the_same_way(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "sample.png"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ValueError as err:
        assert str(err).startswith(f"{path}: ")
        return
    assert image.mode == "RGB"


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3))
DECODING = st.fixed_dictionaries(
    {},
    optional={
        "num_beams": st.integers(-2, 4),
        "do_sample": st.booleans(),
        "temperature": finite_or_not,
        "top_k": st.integers(-3, 400),
        "top_p": finite_or_not,
        "repetition_penalty": finite_or_not,
        "no_repeat_ngram_size": st.integers(-1, 4),
        "length_penalty": finite_or_not,
        "num_return_sequences": st.integers(-1, 4),
        "max_new_tokens": st.integers(-1, 8),
        "min_new_tokens": st.integers(-1, 8),
        "early_stopping": st.sampled_from([True, False, "never", "sometimes"]),
    },
)


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline_dir):
    return CaptionPipeline.from_pretrained(tiny_pipeline_dir)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decoding=DECODING, seed=st.integers(0, 2**31 - 1))
def test_decoding_settings_are_refused_or_decode(decoding, seed, pipeline):
    image = Image.new("RGB", (32, 32), (seed % 256, 80, 160))
    try:
        chosen = pipeline.settings(**decoding)
    except ValueError as err:
        assert any(word in str(err) for word in ("must", "needs", "not supported")), err
        return
    output = pipeline([image, image], seed=seed, **decoding)
    assert [len(c) for c in output.captions] == [chosen.num_return_sequences] * 2
    for scores in output.scores:
        assert all(not math.isnan(s) for s in scores)
        assert scores == sorted(scores, reverse=True) or chosen.do_sample
