"""The shipped default captioner on the held-out example images (named after their true captions)."""

from pathlib import Path


from genvl.cli import DEFAULT_CAPTION_MODEL
from genvl.pipelines.caption import CaptionPipeline
from genvl.world import parse_caption

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


def test_shipped_captioner_states_the_example_scenes():
    assert (DEFAULT_CAPTION_MODEL / "model_index.json").is_file(), f"{DEFAULT_CAPTION_MODEL} is missing"
    pipeline = CaptionPipeline.from_pretrained(DEFAULT_CAPTION_MODEL)
    paths = sorted(EXAMPLES.glob("*.png"))
    assert len(paths) >= 6
    captions = pipeline(paths, num_beams=3).captions
    right = [parse_caption(c[0]) == parse_caption(p.stem.replace("_", " ")) for p, c in zip(paths, captions)]
    assert sum(right) >= len(paths) - 1, list(zip([p.name for p in paths], captions))


def test_shipped_folder_is_safetensors_only():
    files = [p.name for p in DEFAULT_CAPTION_MODEL.rglob("*") if p.is_file()]
    assert "model.safetensors" in files and "README.md" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
