"""The hand-placed groups and rows of examples/groups.py: each picture holds what its caption says, and the report
covers every layout, canvas and size."""

import random

import numpy as np

from genvl.world.captions import parse_caption

from .scripts import load_script

groups = load_script("examples/groups.py")


def blobs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The (left, right) column extent of each 4-connected blob of `mask`."""
    seen, found = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], todo, columns = True, [start], []
        while todo:
            y, x = todo.pop()
            columns.append(x)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
        found.append((min(columns), max(columns)))
    return found


def test_each_picture_holds_the_objects_its_caption_states():
    for layout in ("group", "row"):
        for resolution in groups.RESOLUTIONS:
            rng = random.Random(f"{layout}/{resolution}")
            for _ in range(20):
                image, caption = groups.picture(rng, layout, "white", resolution)
                assert image.size == (resolution, resolution)
                facts = parse_caption(caption)
                assert facts is not None, caption
                pixels = np.asarray(image, dtype=int)
                parts = blobs(np.abs(pixels - 255).sum(-1) > 30)
                if layout == "group":  # copies never touch, so each is one blob (a glyph may hold gaps: at least)
                    ((_, _, count, _, _),) = facts
                    assert len(parts) >= count, (caption, len(parts))
                    continue
                # a row: three different objects, stated left to right, and ink in each third of the picture
                assert sorted(fact[4] for fact in facts) == ["centre", "left", "right"]
                assert len({fact[0] for fact in facts}) == 3
                ink = (np.abs(pixels - 255).sum(-1) > 30).any(0)
                thirds = np.array_split(ink, 3)
                assert all(third.any() for third in thirds), caption


def test_report_covers_every_layout_canvas_and_size(tiny_pipeline_dir, capsys):
    rows = groups.main(["--model", str(tiny_pipeline_dir), "--pictures", "2", "--beam", "1"])
    layouts = {(row["layout"], row["canvas"], row["resolution"]) for row in rows}
    assert layouts == {(a, b, c) for a in ("group", "row") for b in groups.CANVASES for c in groups.RESOLUTIONS}
    for row in rows:
        assert row["pictures"] == 2 and 0 <= row["right"] <= 1 and len(row["missed"]) == round(2 * (1 - row["right"]))
    assert len(capsys.readouterr().out.splitlines()) == len(rows) + 2
