"""examples/wide_pictures.py: each picture's caption states what was pasted where, in the picture's own frame, and
the report has a row per shape and layout with both ways of squaring a picture."""

import random

import numpy as np
import pytest

from genvl.world.captions import parse_caption

from .scripts import load_script

wide_pictures = load_script("examples/wide_pictures.py")


@pytest.mark.parametrize("shape", ["2:1", "9:16"])
def test_a_single_objects_caption_names_the_third_of_the_picture_it_is_in(shape):
    width, height = wide_pictures.SHAPES[shape]
    rng = random.Random(5)
    for _ in range(20):
        image, caption = wide_pictures.picture(rng, width, height, "single")
        assert image.size == (width, height)
        (fact,) = parse_caption(caption)
        pixels = np.asarray(image, dtype=int)
        ink = np.abs(pixels - pixels[:1, :1]).max(2) > 60  # the object, not the graded ground
        ys, xs = np.nonzero(ink)
        x, y = (xs.min() + xs.max() + 1) / 2 / width, (ys.min() + ys.max() + 1) / 2 / height
        column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
        row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
        if min(abs(x - t) for t in (1 / 3, 2 / 3)) > 0.05 and min(abs(y - t) for t in (1 / 3, 2 / 3)) > 0.05:
            assert fact[4] == (" ".join(w for w in (row, column) if w) or "centre"), (caption, x, y)


def test_a_pairs_caption_relates_its_objects_along_the_axis_they_lie_apart_on():
    """A pair's caption relates its objects along the axis on which their ink lies apart, and clearly so: their ink
    is further apart along that axis than across it (the pasted boxes' centres 1.6 times; the ink's, which a sprite
    need not centre in its box, at least 1.25 times), in every shape, and the relation runs both ways in square
    pictures."""
    rng = random.Random(6)
    relations = set()
    for shape in wide_pictures.SHAPES.values():
        for _ in range(20):
            image, caption = wide_pictures.picture(rng, *shape, "pair")
            facts = parse_caption(caption)
            across = {fact[4] for fact in facts} == {"left", "right"}
            relations.add((shape, across))
            pixels = np.asarray(image, dtype=int)
            ink = np.abs(pixels - pixels[:1, :1]).max(2) > 60
            ink = ink if across else ink.T  # the relation's axis is axis 1
            lines = np.nonzero(ink.any(0))[0]  # the lines across it holding ink: two runs, apart
            assert np.diff(lines).max() > 1, caption
            split = lines[np.argmax(np.diff(lines))] + 1
            centres = []
            for offset, part in ((0, ink[:, :split]), (split, ink[:, split:])):
                rows, columns = np.nonzero(part)
                centres.append(((columns.min() + columns.max()) / 2 + offset, (rows.min() + rows.max()) / 2))
            along, off = abs(centres[0][0] - centres[1][0]), abs(centres[0][1] - centres[1][1])
            assert along >= 1.25 * off, (caption, shape, along, off)
    assert {((64, 64), True), ((64, 64), False)} <= relations


def test_report_has_a_row_per_shape_and_layout(tiny_pipeline_dir, capsys):
    rows = wide_pictures.main(["--model", str(tiny_pipeline_dir), "--pictures", "2", "--beam", "1"])
    assert [(row["shape"], row["layout"]) for row in rows] == [
        (shape, layout) for shape in wide_pictures.SHAPES for layout in ("single", "pair")
    ]
    for row in rows:
        assert all(0 <= row[key] <= 1 for key in ("padded", "padded_named", "squashed", "squashed_named"))
    assert len(capsys.readouterr().out.splitlines()) == len(rows) + 3
