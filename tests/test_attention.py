"""Attention backends (sdpa, eager, xformers) and gradient checkpointing on genvl's models and pipelines."""

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from genvl.attention import attend, attention_backend, enable_gradient_checkpointing, models_in
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.text_to_image import TextToImagePipeline

from .conftest import get_dummy_components, get_dummy_unclip_components


def logits(model):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(model.device)
    ids = torch.tensor([[0, 5, 9, 12, 3]] * 2, device=model.device)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], device=model.device)
    with torch.no_grad():
        return model(pixel_values=pixels, decoder_input_ids=ids, decoder_attention_mask=mask).logits


@pytest.fixture
def fake_xformers(monkeypatch):
    """An `xformers.ops` stand-in computing memory_efficient_attention in plain torch, with xformers' layout
    ((B, T, H, D) tensors, an additive `attn_bias` or a `LowerTriangularMask`), so genvl's glue is tested
    without the real package."""

    class LowerTriangularMask:
        pass

    calls = []

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        calls.append(query.shape)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        weights = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if isinstance(attn_bias, LowerTriangularMask):
            weights = weights.masked_fill(torch.ones_like(weights, dtype=torch.bool).triu(1), float("-inf"))
        elif attn_bias is not None:
            weights = weights + attn_bias
        return (weights.softmax(-1) @ v).transpose(1, 2)

    ops = types.SimpleNamespace(
        memory_efficient_attention=memory_efficient_attention, LowerTriangularMask=LowerTriangularMask
    )
    module = types.ModuleType("xformers")
    module.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", module)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


def test_captioner_backends_agree(tiny_tokenizer, scene_images, fake_xformers):
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    reference, captions = logits(model), pipe(scene_images, num_beams=3, max_new_tokens=8)
    for backend in ("eager", "xformers"):
        pipe.set_attention_backend(backend)
        assert attention_backend(model) == backend
        assert model.encoder.config._attn_implementation == model.decoder.config._attn_implementation
        torch.testing.assert_close(logits(model), reference, atol=1e-5, rtol=1e-5)
        out = pipe(scene_images, num_beams=3, max_new_tokens=8)  # genvl's engine follows the model's backend
        assert out.captions == captions.captions
        assert np.allclose(out.scores, captions.scores, atol=1e-4)
    assert fake_xformers  # the xformers kernel really ran
    pipe.disable_xformers_memory_efficient_attention()
    assert attention_backend(model) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        pipe.set_attention_backend("flash")


def test_text_to_image_backends_agree():
    pipe = TextToImagePipeline(**get_dummy_unclip_components())
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe(
            "a red apple",
            prior_num_inference_steps=2,
            decoder_num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    reference = draw()
    pipe.set_attention_backend("eager")
    assert attention_backend(pipe.clip) == "eager"
    assert {type(p).__name__ for p in pipe.decoder.attn_processors.values()} == {"AttnProcessor"}
    np.testing.assert_allclose(draw(), reference, atol=1e-4)
    pipe.set_attention_backend("sdpa")
    assert {type(p).__name__ for p in pipe.prior.attn_processors.values()} == {"AttnProcessor2_0"}


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("xformers") is None,
    reason="the real xformers kernel needs a CUDA GPU and xformers installed",
)
def test_real_xformers_kernel_agrees_with_sdpa_on_a_gpu(tiny_tokenizer, scene_images):
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).to("cuda")
    reference, captions = logits(model), pipe(scene_images, num_beams=3, max_new_tokens=8)
    pipe.enable_xformers_memory_efficient_attention()
    assert attention_backend(model) == "xformers"
    torch.testing.assert_close(logits(model), reference, atol=1e-3, rtol=1e-3)
    assert pipe(scene_images, num_beams=3, max_new_tokens=8).captions == captions.captions

    t2i = TextToImagePipeline(**get_dummy_unclip_components()).to("cuda")
    t2i.set_progress_bar_config(disable=True)

    def draw():
        generator = torch.Generator("cuda").manual_seed(0)
        steps = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2)
        return t2i("a red apple", generator=generator, output_type="np", **steps).images

    reference = draw()
    t2i.enable_xformers_memory_efficient_attention()
    assert {type(p).__name__ for p in t2i.decoder.attn_processors.values()} == {"XFormersAttnProcessor"}
    np.testing.assert_allclose(draw(), reference, atol=2e-3)


def test_missing_xformers_is_a_clear_error(tiny_tokenizer):
    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed")
    except ImportError:
        pass
    model, processor = get_dummy_components(tiny_tokenizer)
    pipe = CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor)
    with pytest.raises(ImportError, match=r"pip install 'genvl\[xformers\]'"):
        pipe.enable_xformers_memory_efficient_attention()
    assert attention_backend(model) == "sdpa"  # unchanged


def test_eager_attend_matches_sdpa():
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    for causal in (False, True):
        torch.testing.assert_close(
            attend(q, k, v, "eager", is_causal=causal, scale=0.3), attend(q, k, v, "sdpa", is_causal=causal, scale=0.3)
        )


def test_gradient_checkpointing_keeps_the_gradients(tiny_tokenizer):
    def gradients(checkpointing):
        model, _ = get_dummy_components(tiny_tokenizer)
        model.train()
        for module in model.modules():  # the same computation in both runs
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        ids = torch.tensor([[0, 5, 9, 12, 3]] * 2)
        model(pixel_values=pixels, decoder_input_ids=ids).logits.square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(gradients(True), gradients(False), atol=1e-5, rtol=1e-4)
    components = get_dummy_unclip_components()
    wrapper = torch.nn.ModuleDict({"conditioner": components["conditioner"], "unet": components["decoder"]})
    assert models_in(wrapper) == [components["conditioner"], components["decoder"]]
    enable_gradient_checkpointing(wrapper)
    assert components["decoder"].is_gradient_checkpointing
