"""LoRA adapters (PEFT format) on the captioner: targets, saving and loading, weights, fusing, unloading."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file

from genvl.cache import EmbeddingCache
from genvl.cli import main
from genvl.lora import (
    LORA_TARGETS,
    adapter_layers,
    add_adapter,
    lora_config,
    parse_lora_spec,
    remove_adapters,
    save_adapter,
)
from genvl.pipelines.caption import CaptionPipeline

from .conftest import get_dummy_components


def with_random_adapter(model, rank=4, seed=1):
    """`model` with a LoRA adapter whose B matrices are random (fresh ones are zero and change nothing)."""
    add_adapter(model, lora_config("captioner", rank=rank, lora_alpha=2 * rank))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def logits(model, pixels):
    ids = torch.tensor([[0, 5, 9, 12]] * len(pixels))
    with torch.no_grad():
        return model(pixel_values=pixels, decoder_input_ids=ids).logits


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def adapter_dir(tmp_path, tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    save_adapter(with_random_adapter(model), tmp_path / "adapter")
    return tmp_path / "adapter"


def test_default_targets_cover_vit_and_gpt2(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    total = sum(p.numel() for p in model.parameters())
    add_adapter(model, lora_config("captioner", rank=2))
    layers = adapter_layers(model)
    wrapped = {name: module for name, module in model.named_modules() if any(module is m for m in layers)}
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == {"q_proj", "v_proj", "c_attn"}
    assert "encoder.layers.1.attention.v_proj" in wrapped and "decoder.transformer.h.1.crossattention.c_attn" in wrapped
    # GPT-2's Conv1D stores its weight transposed: PEFT must treat it as fan-in/fan-out, ViT's Linear not
    assert wrapped["decoder.transformer.h.0.attn.c_attn"].fan_in_fan_out
    assert not wrapped["encoder.layers.0.attention.q_proj"].fan_in_fan_out
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.1 * total
    with pytest.raises(ValueError, match="unknown network"):
        lora_config("vae")
    assert lora_config("decoder").target_modules == set(LORA_TARGETS["decoder"])


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_default_targets_reach_a_grid_encoder(method, tiny_tokenizer, tmp_path):
    """A captioner with genvl's grid encoder (a judge's convolutional body: no attention projections) gets its
    convolutions adapted too, all but the dilated one (PEFT's LoRA convolution has no dilation); the adapter
    changes what the encoder sees and saves and loads like any other."""
    from transformers import VisionEncoderDecoderModel

    from genvl.lora import adapter_config, convolutional_encoder_targets
    from genvl.models.grid_encoder import GridEncoder, GridEncoderConfig

    def captioner():
        torch.manual_seed(0)
        encoder = GridEncoder(GridEncoderConfig(image_size=32, channels=(8, 8, 16)))
        return VisionEncoderDecoderModel(encoder=encoder, decoder=get_dummy_components(tiny_tokenizer)[0].decoder)

    model = captioner()
    convs = [n for n, m in model.encoder.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and convolutional_encoder_targets(model, "captioner") == [
        f"encoder.{name}" for name in convs[:-1]
    ]
    assert convolutional_encoder_targets(get_dummy_components(tiny_tokenizer)[0], "captioner") == []  # a ViT
    add_adapter(model, adapter_config(method, "captioner", rank=2, model=model))
    layers = adapter_layers(model)
    wrapped = [name for name, module in model.named_modules() if any(module is m for m in layers)]
    assert [n for n in wrapped if n.startswith("encoder.")] == [f"encoder.{name}" for name in convs[:-1]]
    assert any(n.startswith("decoder.") for n in wrapped)
    with torch.no_grad():  # trained-looking adapter weights: LoRA's B away from zero, IA3's scales apart
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "ia3_l" in name:
                parameter.copy_(1 + torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    save_adapter(model, tmp_path / "adapter")
    loaded = captioner()
    plain = loaded.encoder(pixels).last_hidden_state
    pipe = CaptionPipeline(model=loaded, tokenizer=tiny_tokenizer, image_processor=None)
    pipe.load_lora_weights(tmp_path / "adapter")
    torch.testing.assert_close(logits(pipe.model, pixels), logits(model.eval(), pixels))
    assert (pipe.model.encoder(pixels).last_hidden_state - plain).abs().max() > 1e-2


def test_adapter_is_saved_in_peft_format(adapter_dir, tiny_tokenizer, pixels):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    keys = list(load_file(adapter_dir / "adapter_model.safetensors"))
    assert keys and all(k.startswith("base_model.model.") and "lora_" in k for k in keys)
    # PEFT itself loads it, and gives the same outputs as genvl's loader
    base, _ = get_dummy_components(tiny_tokenizer)
    reference = logits(PeftModel.from_pretrained(base, adapter_dir).eval(), pixels)
    pipe = CaptionPipeline(
        model=get_dummy_components(tiny_tokenizer)[0], tokenizer=tiny_tokenizer, image_processor=None
    )
    plain = logits(pipe.model, pixels)
    pipe.load_lora_weights(adapter_dir)
    torch.testing.assert_close(logits(pipe.model, pixels), reference)
    assert (logits(pipe.model, pixels) - plain).abs().max() > 1e-3


def test_weights_fuse_unfuse_and_unload(adapter_dir, tiny_tokenizer, pixels, tmp_path):
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    plain = logits(model, pixels)
    base = {key: value.clone() for key, value in model.state_dict().items()}
    pipe.load_lora_weights(adapter_dir, adapter_name="concept")
    full = logits(model, pixels)
    pipe.set_adapters("concept", 0.0)
    torch.testing.assert_close(logits(model, pixels), plain)
    pipe.set_adapters(["concept"], [0.5])
    half = logits(model, pixels)
    assert (half - plain).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3
    pipe.set_adapters("concept", 1.0)
    pipe.fuse_lora()
    torch.testing.assert_close(logits(model, pixels), full, atol=1e-4, rtol=1e-4)
    pipe.unfuse_lora()
    torch.testing.assert_close(logits(model, pixels), full, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unload_lora_weights"):
        pipe.save_pretrained(tmp_path / "saved")
    pipe.fuse_lora(lora_scale=0.5)
    # while fused, a new scale or a second fuse would unfuse the wrong amount: refused, nothing changed
    for call, what in (
        (lambda: pipe.set_adapters("concept", 0.3), "before set_adapters"),
        (lambda: pipe.fuse_lora(lora_scale=0.5), "before fusing them again"),
        (lambda: pipe.load_lora_weights(adapter_dir, adapter_name="other"), "before loading another adapter"),
    ):
        with pytest.raises(ValueError, match=f"the adapters are fused into the weights: call unfuse_lora\\(\\) {what}"):
            call()
    pipe.unload_lora_weights()  # unfuses first: the base weights come back, exactly
    assert not adapter_layers(model)
    after = model.state_dict()  # as before but for float rounding (a second fuse had left them 0.02 off)
    assert after.keys() == base.keys() and all(torch.allclose(after[k], base[k], atol=1e-6) for k in base)
    torch.testing.assert_close(logits(model, pixels), plain, atol=1e-5, rtol=1e-5)
    pipe.save_pretrained(tmp_path / "saved")


def test_engine_decodes_through_the_adapter(adapter_dir, tiny_tokenizer, scene_images):
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    cache = EmbeddingCache()
    pipe.set_embedding_cache(cache)
    before = pipe(scene_images, max_new_tokens=8)
    pipe.load_lora_weights(adapter_dir)
    adapted = pipe(scene_images, max_new_tokens=8)
    assert adapted.scores != before.scores
    assert cache.misses == 2 * len(scene_images)  # the plain ViT's cached encodings were not reused
    # the same captions from plain modules holding the merged weights
    merged, _ = get_dummy_components(tiny_tokenizer)
    merged = with_random_adapter(merged)
    for layer in adapter_layers(merged):
        layer.merge()
    remove_adapters(merged)
    assert not adapter_layers(merged)
    reference = CaptionPipeline(model=merged, tokenizer=tiny_tokenizer, image_processor=processor)(
        scene_images, max_new_tokens=8
    )
    assert adapted.captions == reference.captions
    assert [s for row in adapted.scores for s in row] == pytest.approx(
        [s for row in reference.scores for s in row], abs=1e-4
    )


def test_bad_adapters_are_refused_and_leave_nothing(tmp_path, tiny_tokenizer, pixels):
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        pipe.load_lora_weights(tmp_path)
    # an adapter made for a UNet's attention does not fit a ViT-GPT2 model
    other, _ = get_dummy_components(tiny_tokenizer)
    add_adapter(other, lora_config("captioner", rank=2, target_modules=["q_proj", "k_proj"]))
    save_adapter(other, tmp_path / "other")
    config = json.loads((tmp_path / "other" / "adapter_config.json").read_text())
    config["target_modules"] = ["to_q", "to_v"]  # a UNet's
    (tmp_path / "other" / "adapter_config.json").write_text(json.dumps(config))
    plain = logits(model, pixels)
    with pytest.raises(ValueError, match="does not fit"):
        pipe.load_lora_weights(tmp_path / "other")
    assert not adapter_layers(model) and not getattr(model, "peft_config", None)
    torch.testing.assert_close(logits(model, pixels), plain)
    with pytest.raises(ValueError, match="no adapter named"):
        pipe.set_adapters("missing")


@pytest.mark.parametrize(
    "change",
    [
        # another adapter type: BOFT builds a CUDA extension (starts ninja and gcc), LoHa's rank bounds nothing
        {"peft_type": "BOFT", "boft_block_size": 4, "boft_block_num": 0, "boft_n_butterfly_factor": 1},
        {"peft_type": "LOHA"},
        {"peft_type": None},
        # LoRA settings that rewrite the base weights (PiSSA's SVD, for as many iterations as asked), import a module,
        # copy or grow the model, train its biases, or add parameters of other kinds
        {"init_lora_weights": "pissa_niter_1000000000"},
        {"init_lora_weights": "olora"},
        {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}},
        {"megatron_config": {"a": 1}, "megatron_core": "os"},
        {"modules_to_save": ["lm_head"]},
        {"layer_replication": [[0, 2], [0, 2]]},
        {"bias": "all"},
        {"use_dora": True},
        {"trainable_token_indices": [1, 2]},
        {"a_later_setting": 3},
    ],
)
def test_adapter_configs_that_would_run_anything_but_an_adapter_are_refused(change, adapter_dir, tiny_tokenizer):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (adapter_dir / "adapter_config.json").write_text(json.dumps({**config, **change}))
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    started = []
    with mock.patch("subprocess.Popen", side_effect=lambda *a, **k: started.append(a) or pytest.fail("ran")):
        with pytest.raises(ValueError, match=r"adapter_config.json: .* (genvl loads|is not a setting genvl)"):
            pipe.load_lora_weights(adapter_dir)
    assert not started and not adapter_layers(model)


def test_adapter_configs_of_other_settings_still_load(adapter_dir, tiny_tokenizer):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    for change in ({"init_lora_weights": "gaussian"}, {"use_rslora": True}, {"a_later_setting": None}, {}):
        (adapter_dir / "adapter_config.json").write_text(json.dumps({**config, **change}))
        model, processor = get_dummy_components(tiny_tokenizer)
        CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).load_lora_weights(adapter_dir)
        assert adapter_layers(model)


def test_parse_lora_spec():
    assert parse_lora_spec("adapters/red:0.7") == ("adapters/red", 0.7)
    assert parse_lora_spec("adapters/red") == ("adapters/red", 1.0)
    assert parse_lora_spec("C:/adapters/red") == ("C:/adapters/red", 1.0)


def scene_folder(tmp_path):
    from genvl.world.dataset import write_imagefolder

    return write_imagefolder(tmp_path / "scenes", 4, seed=0, split="test", resolution=32)


def test_caption_cli_loads_adapters_with_a_scale(tiny_pipeline_dir, adapter_dir, scene_images, tmp_path, capsys):
    image = tmp_path / "img.png"
    scene_images[0].save(image)

    def score(*flags):
        argv = ["caption", str(image), "--model", str(tiny_pipeline_dir), "--json", "--quiet", "--max-new-tokens", "6"]
        assert main([*argv, *flags]) == 0
        return json.loads(capsys.readouterr().out)["captions"][0]["score"]

    plain = score()
    assert score("--lora", f"{adapter_dir}:0") == pytest.approx(plain, abs=1e-5)
    assert score("--lora", str(adapter_dir)) != pytest.approx(plain, abs=1e-3)
    # the evaluator takes adapters too
    evaluate = [
        "eval",
        "caption",
        "--data",
        str(scene_folder(tmp_path)),
        "--model",
        str(tiny_pipeline_dir),
        "--quiet",
        "--max-new-tokens",
        "6",
        "--output",
    ]
    assert main([*evaluate, str(tmp_path / "plain.json")]) == 0
    assert main([*evaluate, str(tmp_path / "lora.json"), "--lora", str(adapter_dir)]) == 0
    reports = [json.loads((tmp_path / name).read_text()) for name in ("plain.json", "lora.json")]
    assert [e["prediction"] for e in reports[0]["examples"]] != [e["prediction"] for e in reports[1]["examples"]]
    capsys.readouterr()
    assert main(["caption", str(image), "--model", str(tiny_pipeline_dir), "--lora", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--lora" in err and len(err.splitlines()) == 1


def test_text_to_image_adapters_per_component(tmp_path):
    from genvl.pipelines.text_to_image import TextToImagePipeline

    from .conftest import get_dummy_unclip_components

    def image(pipe, **kwargs):
        out = pipe(
            "a red apple",
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            prior_num_inference_steps=2,
            decoder_num_inference_steps=2,
            **kwargs,
        )
        return torch.from_numpy(out.images)

    source = TextToImagePipeline(**get_dummy_unclip_components())
    for component in ("decoder", "prior"):
        model = getattr(source, component)
        add_adapter(model, lora_config(component, rank=2))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        save_adapter(model, tmp_path / "both" / component)
    save_adapter(source.decoder, tmp_path / "decoder_only")
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)
    plain = image(pipe)
    pipe.load_lora_weights(tmp_path / "both", adapter_name="both")
    assert adapter_layers(pipe.decoder) and adapter_layers(pipe.prior) and not adapter_layers(pipe.clip)
    both = image(pipe)
    assert (both - plain).abs().max() > 1e-3
    pipe.set_adapters("both", 0.0)
    torch.testing.assert_close(image(pipe), plain, atol=1e-5, rtol=1e-5)
    pipe.unload_lora_weights()
    torch.testing.assert_close(image(pipe), plain, atol=1e-5, rtol=1e-5)
    pipe.load_lora_weights(tmp_path / "decoder_only")  # a bare adapter folder goes to the decoder
    assert adapter_layers(pipe.decoder) and not adapter_layers(pipe.prior)
    with pytest.raises(ValueError, match="unload_lora_weights"):
        pipe.save_pretrained(tmp_path / "saved")
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "pipe")

    def generated(*flags):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert (
            main(
                [
                    "generate",
                    "a red apple",
                    "--model",
                    str(tmp_path / "pipe"),
                    "--seed",
                    "0",
                    "--steps",
                    "2",
                    "--out",
                    str(out),
                    "--quiet",
                    *flags,
                ]
            )
            == 0
        )
        with Image.open(next(out.glob("*.png"))) as png:
            return np.asarray(png, dtype=int)

    plain_png = generated()
    assert np.abs(generated("--lora", f"{tmp_path / 'both'}:0") - plain_png).max() <= 1
    assert np.abs(generated("--lora", str(tmp_path / "both")) - plain_png).max() > 10


def test_ia3_adapters_save_load_and_switch(tmp_path, tiny_tokenizer, pixels):
    from genvl.lora import ia3_config

    source, _ = get_dummy_components(tiny_tokenizer)
    add_adapter(source, ia3_config("captioner"))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in source.named_modules() if any(m is a for a in adapter_layers(source))}
    assert wrapped == {"k_proj", "v_proj", "fc2", "c_attn", "c_proj"}
    with torch.no_grad():  # fresh IA³ vectors are ones (the identity)
        for name, parameter in source.named_parameters():
            if "ia3_l" in name:
                parameter.uniform_(0.5, 1.5)
    save_adapter(source, tmp_path / "ia3")
    assert json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())["peft_type"] == "IA3"
    base, _ = get_dummy_components(tiny_tokenizer)
    reference = logits(PeftModel.from_pretrained(base, tmp_path / "ia3").eval(), pixels)

    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    plain = logits(model, pixels)
    pipe.load_lora_weights(tmp_path / "ia3", adapter_name="ia3")
    torch.testing.assert_close(logits(model, pixels), reference)
    assert (reference - plain).abs().max() > 1e-3
    pipe.set_adapters("ia3", 0.0)  # off
    torch.testing.assert_close(logits(model, pixels), plain)
    with pytest.raises(ValueError, match="use 0 or 1"):
        pipe.set_adapters("ia3", 0.5)
    pipe.set_adapters("ia3", 1.0)
    pipe.fuse_lora()
    torch.testing.assert_close(logits(model, pixels), reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="only LoRA"):
        pipe.fuse_lora(lora_scale=0.5)
    pipe.unload_lora_weights()
    torch.testing.assert_close(logits(model, pixels), plain, atol=1e-5, rtol=1e-5)
