"""Tiny seeded components shared by the tests."""

import json
import os
import random

import pytest
import torch

from genvl.models.captioner import (
    CaptionerArchitecture,
    build_captioner,
    build_image_processor,
    save_gpt2_vocab_files,
    train_tokenizer,
)
from genvl.world import sample_scene, scene_captions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything the tests load is local

TINY = CaptionerArchitecture(
    image_size=32,
    patch_size=8,
    encoder_hidden_size=32,
    encoder_layers=2,
    encoder_heads=2,
    decoder_hidden_size=32,
    decoder_layers=2,
    decoder_heads=2,
    max_positions=32,
    vocab_size=300,
)


def world_texts(count=300, seed=0):
    rng = random.Random(seed)
    return [c for _ in range(count) for c in scene_captions(sample_scene(rng))]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(world_texts(), TINY.vocab_size)


def get_dummy_components(tokenizer, seed=0, arch=TINY):
    """A random-weight captioner and its processor.

    The output layer is untied from the input embedding (a random tied model just repeats its input token)
    and scaled up, so that distributions are peaked like a trained model's and argmaxes well separated.
    """
    torch.manual_seed(seed)
    model = build_captioner(arch, tokenizer).eval()
    untie_and_sharpen(model)
    return model, build_image_processor(arch)


def untie_and_sharpen(model, scale=0.5):
    """Give a VisionEncoderDecoderModel's decoder its own random output layer (saved and loaded as such)."""
    model.config.tie_word_embeddings = False
    model.decoder.config.tie_word_embeddings = False
    weight = torch.randn_like(model.decoder.lm_head.weight) * scale
    model.decoder.lm_head.weight = torch.nn.Parameter(weight)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_tokenizer):
    from genvl.pipelines.caption import CaptionPipeline

    model, processor = get_dummy_components(tiny_tokenizer)
    path = tmp_path_factory.mktemp("tiny_pipeline")
    CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).save_pretrained(path)
    return path


def save_tiny_judge(data_dir, folder):
    """A random-weight 32 px judge of the objects in imagefolder `data_dir`'s scenes (one colour, width 16), saved
    to `folder`: a body for the grid encoder of judge-eyed runs. Returns the judge."""
    from genvl.models.judge import SceneJudge

    lines = (data_dir / "metadata.jsonl").read_text().splitlines()
    names = sorted({thing["name"] for line in lines for thing in json.loads(line)["scene"]["objects"]})
    judge = SceneJudge(object_names=names, colour_names=["red"], channels=(8, 8, 16), image_size=32)
    judge.save_pretrained(folder)
    return judge


def write_public_vit_gpt2_folder(path, seed=0):
    """A random-weight folder in the layout of public ViT-GPT2 captioning checkpoints
    (e.g. vit-gpt2-image-captioning): one flat folder with the VisionEncoderDecoder config.json and weights,
    GPT-2 BPE tokenizer files (vocab.json, merges.txt) with <|endoftext|> as the last id, a ViT feature
    extractor config at 224 pixels, and a generation_config.json. Sizes are small; the layout is exact.
    """
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2TokenizerFast,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    trained = train_tokenizer(world_texts(200, seed=seed + 1), 400)
    # public GPT-2 vocabularies put <|endoftext|> last (50256): renumber the vocabulary that way
    bpe = json.loads(trained.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens + ["<|endoftext|>"])}
    eos = vocab["<|endoftext|>"]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=[tuple(m) for m in bpe["merges"]])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    save_gpt2_vocab_files(tokenizer, path)

    torch.manual_seed(seed)
    encoder = ViTModel(
        ViTConfig(
            image_size=224,
            patch_size=16,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=96,
        )
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=eos + 1,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            add_cross_attention=True,
            is_decoder=True,
            bos_token_id=eos,
            eos_token_id=eos,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    untie_and_sharpen(model)
    model.config.decoder_start_token_id = eos
    model.config.pad_token_id = eos
    model.config.eos_token_id = eos
    model.generation_config = GenerationConfig(
        decoder_start_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=16,
        num_beams=4,
    )
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "size": 224,
            },
            indent=2,
        )
    )
    return path


@pytest.fixture(scope="session")
def public_folder(tmp_path_factory):
    return write_public_vit_gpt2_folder(tmp_path_factory.mktemp("public") / "vit-gpt2-image-captioning")


@pytest.fixture
def scene_images():
    from genvl.world import render_scene

    rng = random.Random(3)
    return [render_scene(sample_scene(rng), 32) for _ in range(6)]


TINY_CLIP = dict(
    image_size=32,
    patch_size=8,
    vision_hidden_size=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden_size=32,
    text_layers=1,
    text_heads=2,
    max_positions=16,
    projection_dim=16,
    vocab_size=300,
)


def get_dummy_unclip_components(seed=0, latent=True):
    """Random-weight components of an UnCLIPPipeline at 32 px (an 8x8 latent grid when `latent`)."""
    from diffusers import DDPMScheduler

    from genvl.models.clip import ClipArchitecture, build_clip, build_clip_image_processor, train_clip_tokenizer
    from genvl.models.unclip import (
        UnclipArchitecture,
        UnclipConditioner,
        build_autoencoder,
        build_decoder_unet,
        build_prior,
    )

    torch.manual_seed(seed)
    clip_arch = ClipArchitecture(**TINY_CLIP)
    tokenizer = train_clip_tokenizer(world_texts(100), clip_arch.vocab_size, clip_arch.max_positions)
    clip = build_clip(clip_arch, tokenizer).eval()
    arch = UnclipArchitecture(
        prior_layers=1,
        prior_heads=2,
        prior_head_dim=8,
        decoder_channels=(16, 32),
        decoder_attention=(False, True),
        decoder_head_dim=8,
        decoder_cross_dim=16,
        image_tokens=2,
        latent_channels=4,
        autoencoder_channels=(16, 16, 16),
    )
    embed = clip_arch.projection_dim
    prior = build_prior(arch, embed, clip_arch.max_positions).eval()
    torch.nn.init.ones_(prior.clip_std)
    vae = build_autoencoder(arch).eval() if latent else None
    size = 8 if latent else 32
    decoder = build_decoder_unet(arch, size, 4 if latent else 3, embed).eval()
    conditioner = UnclipConditioner(embed, clip_arch.text_hidden_size, arch.decoder_cross_dim, arch.image_tokens)
    return dict(
        clip=clip,
        tokenizer=tokenizer,
        image_processor=build_clip_image_processor(32),
        prior=prior,
        prior_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=False),
        conditioner=conditioner.eval(),
        decoder=decoder,
        decoder_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False),
        vae=vae,
    )


def write_public_clip_folder(path, seed=0):
    """A random-weight folder in the layout of public CLIP checkpoints (e.g. clip-vit-base-patch32): config.json
    of a `CLIPModel` with the legacy text eos_token_id=2, model.safetensors, a CLIP BPE vocabulary (byte
    symbols with and without `</w>`, `<|startoftext|>` and `<|endoftext|>` last) as vocab.json + merges.txt +
    tokenizer files, and a 224 px preprocessor_config.json. Sizes are small; the layout is exact."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from genvl.models.clip import build_clip_image_processor

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = []
    for word in ("red", "apple", "blue", "car", "two", "the", "left"):
        current = word[0]
        for i, char in enumerate(word[1:], 1):
            piece = char + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{current} {piece}")
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            projection_dim=24,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=24,
        ),
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    build_clip_image_processor(224).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def t2i_dir(tmp_path_factory):
    """A tiny random text-to-image pipeline, saved."""
    from genvl.pipelines.text_to_image import TextToImagePipeline

    path = tmp_path_factory.mktemp("t2i_pipeline")
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(path)
    return path
