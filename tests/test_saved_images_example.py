"""examples/saved_images.py: each way damages an image as saving it that way does, `--write` copies a folder so
damaged, and the report has a row per way asked for."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from genvl.world.dataset import write_imagefolder

from .scripts import load_script

saved_images = load_script("examples/saved_images.py")


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("saved") / "world", 6, seed=0, split="test", resolution=32)


def test_each_way_but_png_changes_the_image_and_jpeg_is_pils_round_trip(renders):
    image = Image.open(renders / "000000.png").convert("RGB")
    for way, (_, damage) in saved_images.WAYS.items():
        changed = np.abs(np.asarray(damage(image, 0), dtype=int) - np.asarray(image, dtype=int)).sum()
        assert (changed == 0) == (way == "PNG as rendered"), way
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=30)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(np.asarray(saved_images.WAYS["JPEG 30"][1](image, 0)), expected)


def test_write_copies_the_folder_damaged(renders, tmp_path):
    saved_images.main(["--data", str(renders), "--ways", "JPEG 30", "--write", str(tmp_path / "out"), "--limit", "4"])
    records = [json.loads(line) for line in (tmp_path / "out/test/metadata.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in (renders / "metadata.jsonl").read_text().splitlines()][:4]
    assert records == source
    for record in records:
        written = np.asarray(Image.open(tmp_path / "out/test" / record["file_name"]))
        original = Image.open(renders / record["file_name"]).convert("RGB")
        assert np.array_equal(written, np.asarray(saved_images.WAYS["JPEG 30"][1](original, 0)))
    with pytest.raises(SystemExit):  # never over a folder that exists
        saved_images.main(["--data", str(renders), "--ways", "JPEG 30", "--write", str(tmp_path / "out")])


def test_report_has_a_row_per_way(renders, tiny_pipeline_dir, capsys):
    ways = ["PNG as rendered", "JPEG 15", "WebP 50"]
    rows = saved_images.main(
        ["--data", str(renders), "--model", str(tiny_pipeline_dir), "--limit", "3"] + ["--ways", ",".join(ways)]
    )
    assert [row["way"] for row in rows] == ways
    for row in rows:
        assert 0 <= row["exact"] <= 1 and 0 <= row["names"] <= 1 and row["degenerate"] >= 0
    assert len(capsys.readouterr().out.splitlines()) == len(ways) + 2
    with pytest.raises(SystemExit):
        saved_images.main(["--data", str(renders), "--ways", "GIF"])
