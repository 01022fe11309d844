"""The embedding cache shared by the captioner and the text-to-image pipeline."""

import threading

import pytest
import torch
from PIL import Image

from genvl.cache import EmbeddingCache
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.text_to_image import TextToImagePipeline

from .conftest import get_dummy_unclip_components


def images(*colours):
    return [Image.new("RGB", (32, 32), colour) for colour in colours]


class CountingEncoder:
    def __init__(self):
        self.seen = 0

    def __call__(self, batch):
        self.seen += len(batch)
        return torch.stack([torch.tensor(image.getpixel((0, 0)), dtype=torch.float32) for image in batch])


def test_only_missing_images_are_encoded():
    cache, encoder = EmbeddingCache(), CountingEncoder()
    first = cache.encode("ns", images("red", "blue", "red"), encoder)
    assert encoder.seen == 2 and first[0].tolist() == [255, 0, 0] and first[1].tolist() == [0, 0, 255]
    again = cache.encode("ns", images("blue", "green"), encoder)
    assert encoder.seen == 3 and torch.equal(again[0], first[1])
    assert (cache.hits, cache.misses) == (2, 3)
    cache.encode("other", images("red"), encoder)  # another encoder has its own entries
    assert encoder.seen == 4


def test_least_recently_used_entries_are_dropped():
    cache, encoder = EmbeddingCache(max_items=2), CountingEncoder()
    cache.encode("ns", images("red", "blue"), encoder)
    cache.encode("ns", images("red"), encoder)  # red is now the most recent
    cache.encode("ns", images("green"), encoder)  # drops blue
    assert len(cache) == 2
    cache.encode("ns", images("red"), encoder)
    assert encoder.seen == 3
    cache.encode("ns", images("blue"), encoder)
    assert encoder.seen == 4


def test_rows_found_stay_valid_while_the_rest_is_encoded():
    # the encoder of a call may run while other work evicts the entries that call found: here the encoder
    # itself fills the one-entry cache with another image
    cache, encoder = EmbeddingCache(max_items=1), CountingEncoder()
    cache.encode("ns", images("red"), encoder)

    def evicting_encoder(batch):
        cache.encode("ns", images("green"), encoder)
        return encoder(batch)

    out = cache.encode("ns", images("red", "blue"), evicting_encoder)
    assert out.tolist() == [[255, 0, 0], [0, 0, 255]]
    assert len(cache) == 1 and (cache.hits, cache.misses) == (1, 3)


def test_threads_share_one_cache():
    cache, colours = EmbeddingCache(max_items=3), ["red", "blue", "green", "yellow", "white", "black"]
    expected = {colour: CountingEncoder()(images(colour))[0] for colour in colours}
    errors = []

    def work(offset):
        try:
            for i in range(200):
                picked = [colours[(offset + i + j) % len(colours)] for j in range(3)]
                out = cache.encode("ns", images(*picked), CountingEncoder())
                assert all(torch.equal(row, expected[colour]) for row, colour in zip(out, picked))
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(cache) == 3
    assert cache.hits + cache.misses == 4 * 200 * 3


def test_bad_encoder_output_and_arguments_are_refused():
    with pytest.raises(RuntimeError, match="1 rows for 2 images"):
        EmbeddingCache().encode("ns", images("red", "blue"), lambda batch: torch.zeros(1, 3))
    with pytest.raises(ValueError, match="max_items"):
        EmbeddingCache(max_items=0)


def test_namespaces_follow_the_model_object():
    cache = EmbeddingCache()
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert cache.namespace(a, 32) == cache.namespace(a, 32) != cache.namespace(b, 32)
    assert cache.namespace(a, 32) != cache.namespace(a, 64)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_captioner_and_generator_share_one_cache(tiny_pipeline_dir):
    captioner = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    generator = TextToImagePipeline(**get_dummy_unclip_components())
    pictures = images("red", "navy")
    expected = captioner(pictures).captions
    expected_scores = generator.score(pictures, ["a red apple", "two blue cars"])

    cache = EmbeddingCache()
    captioner.set_embedding_cache(cache)
    generator.set_embedding_cache(cache)
    vit_calls, clip_calls = count_calls(captioner.model.encoder), count_calls(generator.clip.vision_model)
    assert captioner(pictures).captions == expected
    assert captioner(pictures, num_beams=2).captions is not None
    assert len(vit_calls) == 1
    torch.testing.assert_close(generator.score(pictures, ["a red apple", "two blue cars"]), expected_scores)
    generator.encode_image(pictures[:1])
    assert len(clip_calls) == 1 and len(cache) == 4 and cache.hits == 3
    with pytest.raises(TypeError, match="EmbeddingCache"):
        captioner.set_embedding_cache({})


def test_a_pipeline_moved_to_another_dtype_does_not_get_its_old_encodings_back():
    # the key was the pixels and the CLIP object, which .to() keeps: bf16 runs got fp32 rows and failed
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    pipe.set_embedding_cache(EmbeddingCache())
    pipe.score([image], ["x"])
    pipe.to(dtype=torch.bfloat16)
    assert pipe.encode_image([image]).dtype == torch.bfloat16 and pipe.embedding_cache.misses == 2
    images = pipe.image_variation(image, decoder_num_inference_steps=2, output_type="pt").images
    assert bool(torch.isfinite(images).all())
