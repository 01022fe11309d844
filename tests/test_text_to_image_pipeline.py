"""TextToImagePipeline on tiny random components: outputs, reproducibility, saving, schedulers, variations."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image

from genvl.models.clip import load_clip
from genvl.pipelines.text_to_image import PromptEncoding, TextToImagePipeline, slerp

from .conftest import get_dummy_unclip_components, write_public_clip_folder

STEPS = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3)


@pytest.fixture(scope="module")
def pipeline():
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_output_types_and_shapes(pipeline):
    out = pipeline(
        ["a red apple", "two blue cars"],
        num_images_per_prompt=2,
        generator=generators(0, 1, 2, 3),
        output_type="np",
        **STEPS,
    )
    assert out.images.shape == (4, 32, 32, 3) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.image_embeds.shape == (4, 16)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    pil = pipeline("a red apple", generator=generators(0), **STEPS).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    tensor, flagged = pipeline("a red apple", generator=generators(0), output_type="pt", return_dict=False, **STEPS)
    assert tensor.shape == (1, 3, 32, 32) and flagged is None  # (images, flagged), as diffusers returns them


def test_per_image_generators_do_not_depend_on_the_batch(pipeline):
    batch = pipeline(["a red apple", "two blue cars"], generator=generators(7, 8), output_type="np", **STEPS).images
    alone = pipeline("two blue cars", generator=generators(8), output_type="np", **STEPS).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-4)
    other = pipeline("two blue cars", generator=generators(9), output_type="np", **STEPS).images
    assert np.abs(other[0] - alone[0]).max() > 1e-3


def test_copies_for_other_threads_encode_prompts_at_once(pipeline):
    # a shared fast tokenizer lets one thread's unpadded call unpad another's batch ("Unable to create tensor")
    twins = [pipeline.for_another_thread() for _ in range(4)]
    assert twins[0].decoder is pipeline.decoder and twins[0].tokenizer is not pipeline.tokenizer
    assert twins[0].decoder_scheduler is not pipeline.decoder_scheduler
    prompts = ["", "two blue cars on the left of a green tree"]
    expected = pipeline.encode_prompt(prompts).embeds
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda twin: [twin.encode_prompt(prompts).embeds for _ in range(300)], twins))
    for embeds in (e for result in results for e in result):
        torch.testing.assert_close(embeds, expected)


def test_save_and_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = TextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    a = pipeline("a red apple", generator=generators(3), output_type="np", **STEPS).images
    b = loaded("a red apple", generator=generators(3), output_type="np", **STEPS).images
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_schedulers_are_swappable(scheduler_class):
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    ddpm = pipe("a red apple", generator=generators(0), output_type="np", **STEPS).images
    pipe.set_schedulers(scheduler_class)
    other = pipe("a red apple", generator=generators(0), output_type="np", **STEPS).images
    assert np.isfinite(other).all() and np.abs(other - ddpm).max() > 1e-4
    assert pipe.prior_scheduler.config.prediction_type == "sample"
    assert isinstance(pipe.decoder_scheduler, scheduler_class)
    assert pipe.config.decoder_scheduler[1] == scheduler_class.__name__  # what save_pretrained will record


def test_dpm_solver_from_the_last_cosine_step_stays_bounded():
    """Trailing spacing starts DPM-Solver++ at the squared-cosine schedule's last step, whose alpha is 2e-9: the
    first step from pure noise, with a slightly wrong noise prediction, must not blow up."""
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_schedulers(DPMSolverMultistepScheduler, timestep_spacing="trailing")
    scheduler = pipe.decoder_scheduler
    scheduler.set_timesteps(12)
    noise = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    error = 0.05 * torch.randn(4096, generator=torch.Generator().manual_seed(1))
    first = scheduler.step(noise + error, scheduler.timesteps[0], noise).prev_sample
    assert first.std() < 3.0
    # an explicit setting wins
    pipe.set_schedulers(DPMSolverMultistepScheduler, lambda_min_clipped=-1.0)
    assert pipe.prior_scheduler.config.lambda_min_clipped == -1.0


def test_guidance_changes_the_result(pipeline):
    plain = pipeline(
        "a red apple",
        generator=generators(0),
        output_type="np",
        prior_guidance_scale=1.0,
        decoder_guidance_scale=1.0,
        decoder_text_guidance_scale=1.0,
        **STEPS,
    ).images
    guided = pipeline("a red apple", generator=generators(0), output_type="np", **STEPS).images
    assert np.abs(plain - guided).max() > 1e-4


def test_text_guidance_guides_the_prompt_apart_from_the_image_embedding(pipeline, monkeypatch):
    """With a text guidance scale of its own, the decoder sees three row blocks: [no image, negative prompt;
    image, negative prompt; image, prompt], combined as u + s_image (i - u) + s_text (it - i)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    seen, predictions = [], []

    def fake_forward(self, sample, timestep, encoder_hidden_states, class_labels, encoder_attention_mask):
        seen.append((encoder_hidden_states, class_labels))
        values = torch.tensor([1.0, 10.0, 100.0]).repeat_interleave(len(sample) // 3)  # u, i, it
        return UNet2DConditionOutput(sample=values[:, None, None, None].expand_as(sample).clone())

    def record_step(prediction, t, latents, generator=None):
        predictions.append(prediction)
        return type("Out", (), {"prev_sample": latents})()

    monkeypatch.setattr(type(pipeline.decoder), "forward", fake_forward)
    monkeypatch.setattr(pipeline.decoder_scheduler, "step", record_step)
    embeds = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    text = pipeline.encode_decoder_prompt(["", "", "a red apple", "two blue cars"])
    pipeline.run_decoder(embeds, text, 2, 4.0, generators(0, 1), text_guidance_scale=8.0)

    assert len(predictions) == 2
    for prediction in predictions:  # 1 + 4 (10 - 1) + 8 (100 - 10)
        assert torch.allclose(prediction, torch.full_like(prediction, 757.0))
    context, labels = seen[0]
    assert labels.shape[0] == 6 and labels[:2].abs().max() == 0
    assert torch.equal(labels[2:4], embeds) and torch.equal(labels[4:], embeds)
    tokens = pipeline.conditioner.config.image_tokens
    assert torch.equal(context[:2, tokens:], context[2:4, tokens:])  # both with the negative prompt
    assert not torch.allclose(context[2:4, tokens:], context[4:, tokens:])  # the prompt's words


def test_prompt_encoding_splits_negative_prompts_from_prompts(pipeline):
    text = pipeline.encode_prompt(["", "a green tree", "a red apple", "two blue cars"])
    assert text.count == 2 and text.states.shape[0] == 4
    prompts = pipeline.encode_prompt(["a red apple", "two blue cars"])
    negatives = pipeline.encode_prompt(["", "a green tree"])
    torch.testing.assert_close(text.prompts().states, prompts.states)
    torch.testing.assert_close(text.negatives().embeds, negatives.embeds)
    assert torch.equal(text.prompts().mask, prompts.mask) and not torch.equal(text.negatives().mask, prompts.mask)
    joined = PromptEncoding.join(text.negatives(), text.prompts())
    assert all(
        torch.equal(a, b)
        for a, b in ((joined.embeds, text.embeds), (joined.states, text.states), (joined.mask, text.mask))
    )
    with pytest.raises(ValueError, match="got 3 rows"):
        pipeline.encode_prompt(["", "", "a red apple"]).prompts()


def test_text_guidance_none_or_equal_is_the_joint_guidance(pipeline):
    joint = pipeline(
        "a red apple", generator=generators(0), output_type="np", decoder_text_guidance_scale=None, **STEPS
    ).images
    equal = pipeline(
        "a red apple", generator=generators(0), output_type="np", decoder_text_guidance_scale=4.0, **STEPS
    ).images
    default = pipeline("a red apple", generator=generators(0), output_type="np", **STEPS).images  # text at 8
    np.testing.assert_array_equal(joint, equal)
    assert np.abs(default - joint).max() > 1e-4


def test_cli_text_guidance_default_is_the_pipelines():
    from genvl.cli import build_parser
    from genvl.pipelines.text_to_image import DEFAULT_TEXT_GUIDANCE

    for command in (["generate", "a red apple"], ["eval", "t2i", "--data", "d"]):
        assert build_parser().parse_args(command).decoder_text_guidance == DEFAULT_TEXT_GUIDANCE


def test_bad_arguments_are_named(pipeline):
    with pytest.raises(ValueError, match="latents must have shape"):
        pipeline("a red apple", latents=torch.zeros(1, 4, 4, 4), **STEPS)
    with pytest.raises(ValueError, match="output_type"):
        pipeline("a red apple", output_type="jpg", **STEPS)
    with pytest.raises(ValueError, match="2 generators for 1 images"):
        pipeline("a red apple", generator=generators(0, 1), **STEPS)
    with pytest.raises(ValueError, match="prompt must be"):
        pipeline([], **STEPS)


def test_a_prompt_world_draws_each_image_from_a_caption_its_prompt_asks_for(tmp_path, monkeypatch):
    plain = TextToImagePipeline(**get_dummy_unclip_components())
    assert plain.config.prompt_world is None and plain.drawn_prompts(["a red bicycle"]) == ["a red bicycle"]
    pipe = TextToImagePipeline(**get_dummy_unclip_components(), prompt_world="classic")
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "classic")
    assert json.loads((tmp_path / "classic" / "model_index.json").read_text())["prompt_world"] == "classic"
    pipe = TextToImagePipeline.from_pretrained(tmp_path / "classic")
    pipe.set_progress_bar_config(disable=True)
    asked = []
    checker = pipe.run_safety_checker
    monkeypatch.setattr(pipe, "run_safety_checker", lambda images, prompts: (asked.extend(prompts), checker(images))[1])
    out = pipe(["a red bicycle", "hello"], num_images_per_prompt=2, generator=generators(0, 1, 2, 3), **STEPS)
    assert all(" red bicycle " in text for text in out.prompts[:2]) and out.prompts[2:] == ["hello", "hello"]
    # the checker reads each prompt as given and, where it was rewritten, as drawn
    assert asked == [f"a red bicycle\n{out.prompts[0]}", f"a red bicycle\n{out.prompts[1]}", "hello", "hello"]
    # an image's rewrite depends on its seed alone, and draws as its rewritten prompt does when typed
    assert pipe.drawn_prompts(["a red bicycle"], generators(1)) == out.prompts[1:2]
    assert len(set(pipe.drawn_prompts(["a red bicycle"] * 20, generators(*range(20))))) > 3
    alone = pipe(out.prompts[1], generator=generators(1), output_type="np", rewrite_prompts=False, **STEPS)
    again = pipe("a red bicycle", generator=generators(1), output_type="np", **STEPS)
    np.testing.assert_allclose(again.images, alone.images, atol=1e-5)
    raw = pipe("a red bicycle", generator=generators(1), rewrite_prompts=False, **STEPS)
    assert raw.prompts == ["a red bicycle"]
    one = torch.Generator().manual_seed(5)  # one generator for several images: each image its own draw
    assert len(set(pipe.drawn_prompts(["a red bicycle"] * 8, one))) > 1
    index = tmp_path / "classic" / "model_index.json"
    index.write_text(index.read_text().replace('"classic"', '"elsewhere"'))
    with pytest.raises(ValueError, match="prompt_world must be null or one of classic, got 'elsewhere'"):
        TextToImagePipeline.from_pretrained(tmp_path / "classic")
    index.write_text(index.read_text().replace('"elsewhere"', '{"a": [1]}'))
    with pytest.raises(ValueError, match=r"prompt_world must be null or one of classic, got {'a': \[1\]}"):
        TextToImagePipeline.from_pretrained(tmp_path / "classic")


def test_a_prompt_world_draws_an_interpolation_from_its_prompt_ends_rewritten(tmp_path):
    pipe = TextToImagePipeline(**get_dummy_unclip_components(), prompt_world="classic")
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (40, 40), "red")
    seed = torch.Generator().manual_seed
    ends = pipe.interpolation_ends("a red bicycle", "two dogs", seed(3))
    assert re.fullmatch(r"a (small|large) red bicycle (on|in|at) the \w+", ends[0])
    assert re.fullmatch(r"two (\w+) dogs", ends[1])
    assert ends == pipe.interpolation_ends("a red bicycle", "two dogs", seed(3))  # the seed alone decides
    assert len({tuple(pipe.interpolation_ends("a bicycle", "a dog", seed(s))) for s in range(12)}) > 3
    assert pipe.interpolation_ends(image, "a red bicycle", seed(3))[0] is image
    assert pipe.interpolation_ends("a red bicycle", "two dogs", seed(3), rewrite_prompts=False) == [
        "a red bicycle",
        "two dogs",
    ]
    settings = dict(frames=2, prior_num_inference_steps=2, decoder_num_inference_steps=2, output_type="np")
    rewritten = pipe.interpolate("a red bicycle", "two dogs", generator=seed(3), **settings).images
    typed = pipe.interpolate(*ends, generator=seed(3), rewrite_prompts=False, **settings).images
    np.testing.assert_allclose(rewritten, typed, atol=1e-5)  # drawn from the rewritten ends, as when typed
    raw = pipe.interpolate("a red bicycle", "two dogs", generator=seed(3), rewrite_prompts=False, **settings)
    assert np.abs(raw.images - rewritten).max() > 1e-3


def test_interpolation_frames_read_the_ends_words_mixed_as_their_embeddings(pipeline):
    from genvl.pipelines.text_to_image import mixed_words

    words = pipeline.encode_decoder_prompt(["", "", "a red apple", "two blue cars"])
    mixed = mixed_words(words, [0.0, 0.25, 1.0])
    ends = words.prompts()
    assert torch.equal(mixed.prompts().states[0], ends.states[0]) and torch.equal(
        mixed.prompts().states[2], ends.states[1]
    )
    quarter = 0.75 * ends.states[0] + 0.25 * ends.states[1]
    torch.testing.assert_close(mixed.prompts().states[1], quarter)
    assert torch.equal(mixed.negatives().states, words.negatives().states[:1].expand(3, -1, -1))
    assert torch.equal(mixed.prompts().mask[1], torch.maximum(ends.mask[0], ends.mask[1]))
    # two image ends: every frame reads the empty prompt, as before the ends' words were read
    empty = pipeline.encode_decoder_prompt([""] * 4)
    same = mixed_words(empty, [0.0, 0.3, 0.6])
    assert torch.equal(same.states, pipeline.encode_decoder_prompt([""] * 6).states)


def test_xformers_missing_is_a_clear_error(pipeline):
    pytest.importorskip("torch")
    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="needs xformers"):
        pipeline.enable_xformers_memory_efficient_attention()


def test_variation_interpolation_and_score(pipeline, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png")
    variations = pipeline.image_variation(
        tmp_path / "a.png", num_images=2, generator=generators(0, 1), decoder_num_inference_steps=3, output_type="np"
    )
    assert variations.images.shape == (2, 32, 32, 3)
    assert torch.allclose(variations.image_embeds[0], pipeline.encode_image([image])[0], atol=1e-5)
    # an encoding passed in is used as it is
    again = pipeline.image_variation(
        image_embeds=variations.image_embeds[:1],
        num_images=2,
        generator=generators(0, 1),
        decoder_num_inference_steps=3,
        output_type="np",
    )
    np.testing.assert_array_equal(again.images, variations.images)
    for both_or_neither in (dict(image=image, image_embeds=again.image_embeds[:1]), {}):
        with pytest.raises(ValueError, match="either image or image_embeds"):
            pipeline.image_variation(**both_or_neither)
    frames = pipeline.interpolate(
        "a red apple", image, frames=4, generator=torch.Generator().manual_seed(0), output_type="np", **STEPS
    )
    assert frames.images.shape == (4, 32, 32, 3)
    assert torch.allclose(frames.image_embeds[-1], pipeline.encode_image([image])[0], atol=1e-5)
    scores = pipeline.score([image, image], ["a red apple", "two blue cars", "a cat"])
    assert scores.shape == (2, 3) and float(scores.abs().max()) <= 1.0 + 1e-5


def test_slerp_endpoints_and_norm():
    a, b = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    middle = slerp(a, b, 0.5)
    assert abs(float(middle.norm()) - 1.0) < 1e-5
    assert torch.allclose((middle @ a), (middle @ b), atol=1e-5)


def test_public_clip_folder_loads_and_scores(tmp_path):
    folder = write_public_clip_folder(tmp_path / "clip-vit-base-patch32")
    clip, tokenizer, processor = load_clip(folder)
    assert type(tokenizer).__name__ == "CLIPTokenizer" and clip.config.text_config.eos_token_id == 2
    ids = tokenizer(["a red apple"]).input_ids[0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    components = get_dummy_unclip_components()
    components.update(clip=clip, tokenizer=tokenizer, image_processor=processor)
    pipe = TextToImagePipeline(**components)
    image = Image.new("RGB", (300, 200), "red")
    assert processor(images=[image], return_tensors="pt").pixel_values.shape == (1, 3, 224, 224)
    scores = pipe.score([image], ["a red apple", "two blue cars"])
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_a_saved_pipeline_loads_in_a_fresh_process(pipeline, tmp_path):
    import subprocess
    import sys

    pipeline.save_pretrained(tmp_path)
    code = (
        "from genvl.pipelines.text_to_image import TextToImagePipeline; "
        f"print(type(TextToImagePipeline.from_pretrained({str(tmp_path)!r}).conditioner).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "UnclipConditioner", out.stderr[-2000:]


def test_decoder_text_encoder_gives_the_decoder_its_token_states(pipeline, tmp_path):
    """With a `decoder_text_encoder`, the prior reads CLIP's text tower and the decoder the other one."""
    from transformers import CLIPTextModelWithProjection

    from genvl.models.clip import text_tower_of

    components = get_dummy_unclip_components()
    other = get_dummy_unclip_components(seed=1)
    text_encoder = text_tower_of(other["clip"]).eval()
    with pytest.raises(ValueError, match="go together"):
        TextToImagePipeline(**components, decoder_text_encoder=text_encoder)
    pipe = TextToImagePipeline(**components, decoder_text_encoder=text_encoder, decoder_tokenizer=other["tokenizer"])
    pipe.set_progress_bar_config(disable=True)

    prompts = ["", "a red apple to the left of a blue car"]
    text = pipe.encode_decoder_prompt(prompts)
    states, mask = text.states, text.mask
    tokens = other["tokenizer"](prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = other["clip"].text_model(**tokens).last_hidden_state
    torch.testing.assert_close(states, expected)
    assert torch.equal(mask, tokens.attention_mask)
    assert not torch.allclose(states, pipeline.encode_decoder_prompt(prompts).states)  # not CLIP's own states
    # the prior's conditioning is unchanged: same image embedding, other images
    a = pipeline("a red apple", generator=generators(3), output_type="pt", **STEPS)
    b = pipe("a red apple", generator=generators(3), output_type="pt", **STEPS)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)
    assert (a.images - b.images).abs().max() > 1e-3

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["decoder_text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    loaded = TextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.decoder_text_encoder, CLIPTextModelWithProjection)
    c = loaded("a red apple", generator=generators(3), output_type="pt", **STEPS)
    torch.testing.assert_close(c.images, b.images, atol=1e-5, rtol=0)


def independent_best(clip, tokenizer, image_processor, images, prompts, num_candidates):
    """The eval's scoring of uint8 images (`embed_at_clip_size`, `embed_texts`), with the grouping done here."""
    from genvl.models.clip import embed_at_clip_size, embed_texts

    uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    image_embeds = embed_at_clip_size(clip, image_processor, uint8)
    text_embeds = embed_texts(clip, tokenizer, prompts, clip.config.text_config.max_position_embeddings)[0]
    scores = (image_embeds.view(len(prompts), num_candidates, -1) * text_embeds[:, None]).sum(-1)
    return [k * num_candidates + int(scores[k].argmax()) for k in range(len(prompts))], scores


def test_candidates_keep_the_one_the_reranker_scores_best(pipeline, tmp_path):
    components, other = get_dummy_unclip_components(), get_dummy_unclip_components(seed=1)
    with pytest.raises(ValueError, match="go together"):
        TextToImagePipeline(**components, reranker=other["clip"])
    pipe = TextToImagePipeline(**components, reranker=other["clip"], reranker_tokenizer=other["tokenizer"])
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red apple", "two blue cars above a green tree"]
    for model, scorer in ((pipe, other), (pipeline, components)):  # without a reranker, CLIP scores them
        # a single generator draws the same rows as the plain call of 3 images per prompt
        plain = model(
            prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(0), output_type="pt", **STEPS
        )
        best = model(prompts, num_candidates=3, generator=torch.Generator().manual_seed(0), output_type="pt", **STEPS)
        rows, scores = independent_best(
            scorer["clip"], scorer["tokenizer"], components["image_processor"], plain.images, prompts, 3
        )
        assert best.images.shape == (2, 3, 32, 32) and best.image_embeds.shape == (2, 16)
        torch.testing.assert_close(best.images, plain.images[rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(best.image_embeds, plain.image_embeds[rows], atol=1e-5, rtol=0)
        assert (scores.max(1).values - scores.min(1).values).min() > 1e-4  # the candidates do score apart

    # each image's candidates come from its own generator only
    both = pipe(prompts, num_candidates=2, generator=generators(5, 6), output_type="pt", **STEPS).images
    alone = pipe(prompts[1], num_candidates=2, generator=generators(6), output_type="pt", **STEPS).images
    torch.testing.assert_close(both[1], alone[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="num_candidates must be an integer >= 1"):
        pipe("a red apple", num_candidates=0, **STEPS)
    with pytest.raises(ValueError, match="got 2 generators for 1 images"):
        pipe("a red apple", num_candidates=2, generator=generators(0, 1), **STEPS)
    with pytest.raises(ValueError, match=r"prior latents must have shape \(2, 16\)"):
        pipe("a red apple", num_candidates=2, prior_latents=torch.zeros(1, 16), **STEPS)

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["reranker"] == ["transformers", "CLIPModel"]
    loaded = TextToImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(prompts[1], num_candidates=2, generator=generators(6), output_type="pt", **STEPS).images
    torch.testing.assert_close(again, alone, atol=1e-5, rtol=0)


def test_images_that_are_not_finite_are_an_error_not_black_pictures(monkeypatch):
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    drawn = pipe.run_decoder
    monkeypatch.setattr(pipe, "run_decoder", lambda *args, **kwargs: drawn(*args, **kwargs) * float("nan"))
    for output_type in ("pil", "np", "pt"):
        with pytest.raises(ValueError, match="made images that are not finite numbers"):
            pipe("a red apple", generator=generators(0), output_type=output_type, **STEPS)
    with pytest.raises(ValueError, match="not finite"):
        pipe.postprocess(torch.tensor([0.0, float("inf")]).view(1, 1, 1, 2).expand(1, 3, 2, 2))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prior_num_inference_steps": 0}, "prior steps must be an integer >= 1, got 0"),
        ({"decoder_num_inference_steps": -1}, "decoder steps must be an integer >= 1, got -1"),
        ({"decoder_num_inference_steps": 2.5}, "decoder steps must be an integer >= 1, got 2.5"),
        ({"prior_guidance_scale": float("nan")}, "prior guidance scale must be a finite number, got nan"),
        ({"decoder_guidance_scale": float("inf")}, "decoder guidance scale must be a finite number, got inf"),
        ({"decoder_text_guidance_scale": float("-inf")}, "decoder guidance scale must be a finite number"),
    ],
)
def test_steps_and_guidance_that_are_no_numbers_of_their_kind_are_refused(settings, message):
    # steps 0 divided by zero and -1 drew an image; a NaN guidance was read as none, an infinite one drew NaNs
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe("a red apple", generator=generators(0), output_type="pt", **{**STEPS, **settings})


def test_latents_of_another_dtype_are_cast():
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, *pipe.latent_shape(), generator=torch.Generator().manual_seed(0))
    prior = torch.randn(1, pipe.prior.config.embedding_dim, generator=torch.Generator().manual_seed(1))
    given = dict(generator=generators(2), output_type="pt", **STEPS)
    first = pipe("a red apple", latents=noise, prior_latents=prior, **given).images
    given["generator"] = generators(2)
    again = pipe("a red apple", latents=noise.double(), prior_latents=prior.double(), **given)
    torch.testing.assert_close(again.images, first)


def test_a_text_or_image_alone_is_one_and_bad_arguments_are_named():
    # score() took a string for a list of its characters, and a path for a list of its letters
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    assert pipe.score(image, "a red apple").shape == (1, 1)
    torch.testing.assert_close(pipe.score([image], ["a red apple"]), pipe.score(image, "a red apple"))
    refusals = [
        (lambda: pipe.score([image], []), "texts must be a string or a non-empty list of strings"),
        (lambda: pipe(3), "prompt must be a string or a non-empty list of strings, got int"),
        (lambda: pipe("a cat", num_images_per_prompt=2.0), "num_images_per_prompt must be an integer >= 1, got 2.0"),
        (lambda: pipe.interpolate("a cat", "a dog", frames=2.0), "frames must be an integer >= 2, got 2.0"),
        (lambda: pipe.image_variation(image, num_images=0), "num_images must be an integer >= 1, got 0"),
        (lambda: pipe.image_variation(image, num_images=2, generator=generators(0)), "got 1 generators for 2"),
        (
            lambda: pipe.image_variation(image_embeds=torch.zeros(2, pipe.prior.config.embedding_dim)),
            r"image_embeds must be one embedding, \(1, E\), got \(2, ",
        ),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("name", ["UniPCMultistepScheduler", "HeunDiscreteScheduler", "DEISMultistepScheduler"])
def test_schedulers_that_draw_no_noise_run(name):
    # their step() takes no generator, which every step was given: a TypeError
    import diffusers

    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    scheduler = getattr(diffusers, name)
    pipe.prior_scheduler = scheduler.from_config(pipe.prior_scheduler.config)
    pipe.decoder_scheduler = scheduler.from_config(pipe.decoder_scheduler.config)
    images = pipe("a red apple", generator=generators(0), output_type="pt", **STEPS).images
    assert bool(torch.isfinite(images).all())
