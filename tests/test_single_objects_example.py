"""The outside-the-renderer check of examples/single_objects.py: its images are what it says, and it reports
every style."""

import random

import numpy as np

from .scripts import load_script

single_objects = load_script("examples/single_objects.py")


def test_drawn_objects_have_their_style_size_canvas_and_resolution():
    for style, (kind, (low, high), _, colour_words, resolution) in single_objects.STYLES.items():
        rng = random.Random(style)
        for _ in range(5):
            image, name, colour = single_objects.draw(style, rng)
            assert image.size == (resolution, resolution) and name in single_objects.OBJECTS
            assert (colour is not None) == colour_words
            pixels = np.asarray(image, dtype=int)
            ink = np.abs(pixels - pixels[0, 0]).sum(-1) > 30
            ys, xs = np.nonzero(ink)
            longer = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            assert low * resolution / 64 - 3 <= longer <= high * resolution / 64 + 1, (style, longer)
            if kind == "white":
                assert tuple(pixels[0, 0]) == (255, 255, 255)


def test_report_covers_every_style(tiny_pipeline_dir, capsys):
    report = single_objects.main(["--model", str(tiny_pipeline_dir), "--per-style", "2", "--beam", "1"])
    assert set(report) == set(single_objects.STYLES)
    for row in report.values():
        assert row["images"] == 2 and 0 <= row["named"] <= 1 and isinstance(row["example"], str)
    assert len(capsys.readouterr().out.splitlines()) == len(single_objects.STYLES) + 1
