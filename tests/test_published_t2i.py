"""Published unCLIP checkpoints (Karlo, Kandinsky 2.2) as they are on the hub: genvl loads them through its own
checks and draws the images diffusers' pipelines draw for the same seed and settings."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genvl.pipelines.published import load_kandinsky, load_karlo, published_layout

from .public_t2i import kandinsky_pipeline, karlo_pipeline, write_kandinsky_folders, write_karlo_folder
from .test_hostile_folders import run

PROMPT = "a red apple"
KARLO_STEPS = ["--prior-steps", "2", "--decoder-steps", "3", "--super-res-steps", "4"]
KANDINSKY_STEPS = ["--prior-steps", "2", "--decoder-steps", "3", "--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    return write_karlo_folder(tmp_path_factory.mktemp("published") / "karlo-v1-alpha")


@pytest.fixture(scope="module")
def kandinsky(tmp_path_factory):
    return write_kandinsky_folders(tmp_path_factory.mktemp("published"))


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def generated(out: str) -> list:
    return [Image.open(line.strip()) for line in out.strip().splitlines()]


def test_karlo_folder_as_published_draws_diffusers_images(karlo, tmp_path, capsys):
    index = json.loads((karlo / "model_index.json").read_text())
    assert index["_class_name"] == "UnCLIPPipeline" and index["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    assert published_layout(karlo) == "UnCLIPPipeline"
    argv = ["generate", PROMPT, "--model", str(karlo), *KARLO_STEPS, "-n", "2", "--seed", "5", "--out", "out"]
    code, out, err = run(argv, capsys, tmp_path)
    assert code == 0, err
    ours = generated(out.replace("out/", str(tmp_path / "out") + "/"))
    reference = karlo_pipeline(karlo)(
        PROMPT,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(5),
        prior_num_inference_steps=2,
        decoder_num_inference_steps=3,
        super_res_num_inference_steps=4,
    ).images
    assert len(ours) == 2 and ours[0].size == reference[0].size
    for mine, theirs in zip(ours, reference):
        assert np.abs(pixels(mine) - pixels(theirs)).max() <= 2
    assert np.abs(pixels(ours[0]) - pixels(ours[1])).max() > 2  # two draws of one generator, not one image twice
    assert ours[0].text["seed"] == "5" and json.loads(ours[0].text["settings"])["super_res_num_inference_steps"] == 4


def test_kandinsky_folders_as_published_draw_diffusers_images(kandinsky, tmp_path, capsys):
    decoder, prior = kandinsky
    argv = ["generate", PROMPT, "--model", str(decoder), "--prior", str(prior), *KANDINSKY_STEPS, "--seed", "2"]
    code, out, err = run([*argv, "--negative", "a blue car", "--out", "out"], capsys, tmp_path)
    assert code == 0, err
    [ours] = generated(out.replace("out/", str(tmp_path / "out") + "/"))
    [theirs] = kandinsky_pipeline(decoder, prior)(
        PROMPT,
        negative_prompt="a blue car",
        generator=torch.Generator().manual_seed(2),
        num_inference_steps=3,
        prior_num_inference_steps=2,
        height=64,
        width=64,
    ).images
    assert ours.size == theirs.size == (64, 64)
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 2
    assert pixels(ours).std() > 1  # a picture, not one flat colour


def test_python_api_loads_each_component_through_genvl(karlo, kandinsky):
    from diffusers import KandinskyV22CombinedPipeline, UnCLIPPipeline

    pipe = load_karlo(karlo, torch.bfloat16)
    assert isinstance(pipe, UnCLIPPipeline) and pipe.decoder.dtype == torch.bfloat16
    assert type(pipe.text_proj).__name__ == "UnCLIPTextProjModel"
    combined = load_kandinsky(*kandinsky)
    assert isinstance(combined, KandinskyV22CombinedPipeline)
    assert type(combined.prior_image_encoder).__name__ == "CLIPVisionModelWithProjection"


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--candidates", "2"], "--candidates does not apply here"),
        (["--batch-size", "2"], "--batch-size does not apply here"),
        (["--scheduler", "ddim"], "--scheduler does not apply here"),
        (["--height", "64"], "--height does not apply here"),
        (["--negative", "a dog"], "--negative does not apply here"),
        (["--no-rewrite"], "--no-rewrite does not apply here"),
        (["--prior-steps", "2000"], "--prior-steps 2000: the prior's scheduler has only 1000 timesteps"),
        (["--steps", "1500"], "--steps 1500: the prior's scheduler has only 1000 timesteps"),
        (["-n", "17"], "at most 16"),
    ],
)
def test_flags_that_do_not_apply_to_karlo_are_refused(karlo, tmp_path, capsys, extra, fragment):
    code, out, err = run(["generate", PROMPT, "--model", str(karlo), *extra], capsys, tmp_path)
    assert code == 2 and out == "" and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()


def random_adapter(model, network: str, folder, seed: int = 0):
    """A LoRA adapter on `model` with random weights (a fresh one changes nothing), saved to `folder` and removed."""
    from genvl.lora import add_adapter, lora_config, remove_adapters, save_adapter

    add_adapter(model, lora_config(network, rank=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    save_adapter(model, folder)
    remove_adapters(model)
    return folder


@pytest.mark.parametrize("layout", ["karlo", "kandinsky"])
def test_lora_adapters_load_on_published_decoders_and_priors(layout, karlo, kandinsky, tmp_path, capsys):
    from genvl.lora import load_adapter

    if layout == "karlo":
        reference, folders = karlo_pipeline(karlo), ["--model", str(karlo), *KARLO_STEPS]
        decoder, prior = "decoder", "prior"
    else:
        reference = kandinsky_pipeline(*kandinsky)
        folders = ["--model", str(kandinsky[0]), "--prior", str(kandinsky[1]), *KANDINSKY_STEPS]
        decoder, prior = "unet", "prior_prior"
    adapter = tmp_path / "adapter"
    random_adapter(getattr(reference, decoder), "decoder", adapter / decoder)
    random_adapter(getattr(reference, prior), "prior", adapter / prior, seed=1)
    argv = ["generate", PROMPT, *folders, "--seed", "4", "--out", "out"]
    images = {}
    for name, extra in (("plain", []), ("lora", ["--lora", str(adapter)]), ("off", ["--lora", f"{adapter}:0"])):
        (tmp_path / name).mkdir()
        code, out, err = run([*argv, *extra], capsys, tmp_path / name)
        assert code == 0, err
        [images[name]] = generated(out.replace("out/", str(tmp_path / name / "out") + "/"))
    for component in (decoder, prior):
        load_adapter(getattr(reference, component), adapter / component)
    steps = {"prior_num_inference_steps": 2}
    if layout == "karlo":
        steps.update(decoder_num_inference_steps=3, super_res_num_inference_steps=4)
    else:
        steps.update(num_inference_steps=3, height=64, width=64)
    [theirs] = reference(PROMPT, generator=torch.Generator().manual_seed(4), **steps).images
    assert np.abs(pixels(images["lora"]) - pixels(theirs)).max() <= 2  # the adapter as PEFT applies it
    assert np.abs(pixels(images["lora"]) - pixels(images["plain"])).max() > 2  # and it changes the image
    assert np.abs(pixels(images["off"]) - pixels(images["plain"])).max() <= 2  # at scale 0 it is off


def test_kandinsky_needs_its_prior_and_genvl_folders_refuse_published_flags(kandinsky, t2i_dir, tmp_path, capsys):
    decoder, _ = kandinsky
    code, out, err = run(["generate", PROMPT, "--model", str(decoder)], capsys, tmp_path)
    assert code == 2 and "pass its prior folder with --prior" in err
    code, out, err = run(["generate", PROMPT, "--model", str(t2i_dir), "--super-res-steps", "3"], capsys, tmp_path)
    assert code == 2 and "--super-res-steps is for a published checkpoint" in err
    code, out, err = run(["vary", str(decoder / "model_index.json"), "--model", str(decoder)], capsys, tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_published_folder_naming_another_module_is_refused_without_importing_it(karlo, tmp_path, capsys):
    import shutil

    folder = tmp_path / "karlo"
    shutil.copytree(karlo, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_proj"] = ["unclip_evil", "UnCLIPTextProjModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    code, out, err = run(["generate", PROMPT, "--model", str(folder), *KARLO_STEPS], capsys, tmp_path)
    assert code == 1 and "unclip_evil.UnCLIPTextProjModel, which genvl does not load" in err


def test_a_bad_out_is_refused_before_anything_is_drawn(karlo, tmp_path, capsys, monkeypatch):
    from genvl.pipelines.published import KarloPipeline

    monkeypatch.setattr(KarloPipeline, "__call__", lambda *a, **k: pytest.fail("drew before checking --out"))
    (tmp_path / "taken").write_text("a file")
    code, out, err = run(["generate", PROMPT, "--model", str(karlo), "--out", "taken"], capsys, tmp_path)
    assert code == 1 and "--out taken: is a file" in err and (tmp_path / "taken").read_text() == "a file"


def test_kandinsky_takes_other_schedulers_and_keeps_the_best_of_k_draws(kandinsky, tmp_path, capsys):
    from diffusers import DPMSolverMultistepScheduler

    decoder, prior = kandinsky
    argv = ["generate", PROMPT, "--model", str(decoder), "--prior", str(prior), *KANDINSKY_STEPS, "--seed", "6"]
    # DPM-Solver++ on the decoder, as diffusers draws with it
    code, out, err = run([*argv, "--scheduler", "dpm", "--out", "out"], capsys, tmp_path)
    assert code == 0, err
    [ours] = generated(out.replace("out/", str(tmp_path / "out") + "/"))
    reference = kandinsky_pipeline(decoder, prior)
    reference.scheduler = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.decoder_pipe.scheduler = reference.scheduler
    steps = dict(num_inference_steps=3, prior_num_inference_steps=2, height=64, width=64)
    [theirs] = reference(PROMPT, generator=torch.Generator().manual_seed(6), **steps).images
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 2 and ours.text["scheduler"] == "dpm"
    # best of 3: the draw of the three the prior's CLIP scores highest against the prompt
    code, out, err = run([*argv, "--candidates", "3", "--out", "best"], capsys, tmp_path)
    assert code == 0, err
    [best] = generated(out.replace("best/", str(tmp_path / "best") + "/"))
    draws = kandinsky_pipeline(decoder, prior)(
        PROMPT, num_images_per_prompt=3, generator=torch.Generator().manual_seed(6), **steps
    ).images
    scores = load_kandinsky(decoder, prior).clip_scores(draws, PROMPT)
    assert scores.shape == (3,) and len(set(scores.tolist())) == 3
    assert np.abs(pixels(best) - pixels(draws[int(scores.argmax())])).max() <= 2 and best.text["candidates"] == "3"


def test_score_reads_the_kandinsky_priors_clip_towers(kandinsky, tmp_path, capsys):
    decoder, prior = kandinsky
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)
    argv = ["score", str(image), PROMPT, "a blue car", "--model", str(prior), "--json"]
    code, out, err = run(argv, capsys, tmp_path)
    assert code == 0, err
    scores = json.loads(out)["scores"]
    expected = [float(load_kandinsky(decoder, prior).clip_scores([Image.open(image)], text)) for text in scores]
    assert list(scores.values()) == pytest.approx(expected, abs=1e-5) and len(set(scores.values())) == 2


def reference_mix(decoder, prior, sources, weights, count, seed):
    """diffusers' own way: the prior pipeline's `interpolate`, then the decoder on its embeddings."""
    pipe = kandinsky_pipeline(decoder, prior)
    generator = torch.Generator().manual_seed(seed)
    embeds = pipe.prior_pipe.interpolate(
        sources, weights, num_images_per_prompt=count, num_inference_steps=2, generator=generator
    )
    return pipe.decoder_pipe(
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=generator,
    ).images


def test_kandinsky_variations_and_interpolation_draw_as_diffusers_does(kandinsky, karlo, tmp_path, capsys):
    decoder, prior = kandinsky
    source = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(source)
    folders = ["--model", str(decoder), "--prior", str(prior), "--steps", "2", "--height", "64", "--width", "64"]
    code, out, err = run(["vary", str(source), *folders, "-n", "2", "--seed", "3", "--out", "vary"], capsys, tmp_path)
    assert code == 0, err
    ours = generated(out.replace("vary/", str(tmp_path / "vary") + "/"))
    theirs = reference_mix(decoder, prior, [Image.open(source)], [1.0], 2, 3)
    assert len(ours) == 2 and all(np.abs(pixels(a) - pixels(b)).max() <= 2 for a, b in zip(ours, theirs))
    argv = ["interpolate", PROMPT, str(source), *folders, "--frames", "3", "--seed", "1", "--out", "frames"]
    code, out, err = run(argv, capsys, tmp_path)
    assert code == 0, err
    frames = generated(out.replace("frames/", str(tmp_path / "frames") + "/"))
    for frame, t in zip(frames, (0.0, 0.5, 1.0)):
        [expected] = reference_mix(decoder, prior, [PROMPT, Image.open(source)], [1 - t, t], 1, 1)
        assert np.abs(pixels(frame) - pixels(expected)).max() <= 2
    assert np.abs(pixels(frames[0]) - pixels(frames[2])).max() > 2
    # Karlo has no image tower; genvl pipelines take no --prior
    code, out, err = run(["vary", str(source), "--model", str(karlo)], capsys, tmp_path)
    assert code == 2 and "has no image tower" in err
    code, out, err = run([*argv, "--no-rewrite"], capsys, tmp_path)  # genvl's own prompt rewriting
    assert code == 2 and "--no-rewrite does not apply here" in err and len(err.strip().splitlines()) == 1


def test_kandinsky_image_tower_runs_once_per_image_with_an_embedding_cache(kandinsky, karlo):
    from genvl.cache import EmbeddingCache

    decoder, prior = kandinsky
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    settings = dict(prior_num_inference_steps=2, num_inference_steps=2, height=64, width=64)
    pipe = load_kandinsky(decoder, prior)
    plain_scores = pipe.clip_scores([red, blue], PROMPT)
    plain_frames = pipe.mix([PROMPT, red], [0.5, 0.5], generator=torch.Generator().manual_seed(0), **settings)

    cache = EmbeddingCache()
    pipe.set_embedding_cache(cache)
    calls = []
    pipe.prior_image_encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    assert torch.equal(pipe.clip_scores([red, blue], PROMPT), plain_scores)
    assert torch.allclose(pipe.clip_scores([blue, red], PROMPT), plain_scores.flip(0), atol=1e-6)
    frames = pipe.mix([PROMPT, red], [0.5, 0.5], generator=torch.Generator().manual_seed(0), **settings)
    # both images encoded once, then found; the 1s are the prior's own zero-image embedding, once per prior call
    assert calls == [2, 1, 1] and (cache.hits, cache.misses) == (3, 2)
    assert all(np.abs(pixels(a) - pixels(b)).max() <= 1 for a, b in zip(frames, plain_frames))
    with pytest.raises(ValueError, match="has no image tower"):
        load_karlo(karlo).set_embedding_cache(cache)
