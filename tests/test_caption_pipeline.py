"""CaptionPipeline: loading (genvl layout and the public ViT-GPT2 layout), saving, decoding defaults."""

import json

import pytest
import torch

from genvl.pipelines.caption import CaptionPipeline


def test_save_and_reload_gives_same_captions(tiny_pipeline_dir, scene_images, tmp_path):
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    first = pipeline(scene_images, num_beams=3, max_new_tokens=8)
    pipeline.save_pretrained(tmp_path / "again")
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["model"] == ["transformers", "VisionEncoderDecoderModel"]
    assert (tmp_path / "again" / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "again").rglob("*.bin"))
    second = CaptionPipeline.from_pretrained(tmp_path / "again")(scene_images, num_beams=3, max_new_tokens=8)
    assert first.captions == second.captions
    assert len(first.captions) == len(scene_images)
    assert all(isinstance(c[0], str) for c in first.captions)


def test_public_vit_gpt2_layout_loads_unchanged(public_folder, scene_images):
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    assert {
        "config.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "generation_config.json",
        "model.safetensors",
    } <= {p.name for p in public_folder.iterdir()}
    pipeline = CaptionPipeline.from_pretrained(public_folder)
    settings = pipeline.settings()
    assert (settings.num_beams, settings.max_new_tokens) == (4, 15)  # generation_config: num_beams=4, max_length=16
    assert pipeline.settings(num_beams=2).num_beams == 2  # a flag overrides the folder's default
    ours = pipeline(scene_images[:3])
    # the reference: transformers' own generate() with the folder's generation_config
    model = VisionEncoderDecoderModel.from_pretrained(public_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(public_folder)
    pixel_values = pipeline.preprocess(scene_images[:3])
    assert pixel_values.shape == (3, 3, 224, 224)
    with torch.no_grad():
        ids = model.generate(pixel_values=pixel_values)
    expected = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert [c[0] for c in ours.captions] == expected
    assert any(len(text) > 0 for text in expected)


def test_prefix_is_continued(tiny_pipeline_dir, scene_images):
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    out = pipeline(scene_images[:3], prefix="a red", max_new_tokens=5)
    # the reference: transformers' generate() fed the start token and the prefix
    prefix = pipeline.tokenizer("a red").input_ids
    start = torch.tensor([[pipeline.tokenizer.eos_token_id, *prefix]] * 3)
    with torch.no_grad():
        ids = pipeline.model.generate(
            pixel_values=pipeline.preprocess(scene_images[:3]), decoder_input_ids=start, max_new_tokens=5, num_beams=1
        )
    expected = [t.strip() for t in pipeline.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert [c[0] for c in out.captions] == expected
    assert all(text.startswith("a red") for text in expected)


def test_num_return_sequences_are_sorted_by_score(tiny_pipeline_dir, scene_images):
    pipeline = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    out = pipeline(scene_images[:2], num_beams=4, num_return_sequences=3, max_new_tokens=6)
    for captions, scores in zip(out.captions, out.scores):
        assert len(captions) == 3
        assert scores == sorted(scores, reverse=True)


def test_a_dtype_given_by_name_is_the_dtype_of_every_part(tiny_pipeline_dir):
    # "float16" made the model fp16 but left the matcher and the pipeline's dtype fp32, with a warning
    for name in ("float16", "torch.float16"):
        pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=name)
        assert pipe.dtype == pipe.model.dtype == torch.float16
    assert CaptionPipeline.from_pretrained(tiny_pipeline_dir, dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype or its name"):
        CaptionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype="int8")


def test_a_caption_alone_is_one_and_bad_texts_are_named(tiny_pipeline_dir):
    # match() took a string for a list of its characters: one probability per letter
    from PIL import Image

    from genvl.pipelines.defaults import shipped_pipeline

    pipe = CaptionPipeline.from_pretrained(shipped_pipeline("genvl-caption-wide"))
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    assert pipe.match(image, "a red ball").shape == (1,)
    for bad, message in (([], "got list"), (3, "got int")):
        with pytest.raises(ValueError, match=f"captions must be a string or a non-empty list of strings, {message}"):
            pipe.match([image], bad)
    tiny = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match="question must be a string or a non-empty list of strings, got int"):
        tiny([image], question=3)
    with pytest.raises(ValueError, match="images must be a PIL image, a path, or a non-empty list of them"):
        tiny([])
