"""Tiny random-weight folders in the published hub layouts of two unCLIP-family text-to-image checkpoints:
kakaobrain/karlo-v1-alpha (diffusers' `UnCLIPPipeline`, whose model_index.json names the text projection
`["unclip", "UnCLIPTextProjModel"]`) and the kandinsky-community/kandinsky-2-2-decoder and -prior pair.

Components are diffusers' and transformers' own classes saved with `save_pretrained` (safetensors). As published:
the schedulers' settings, the CLIP text towers' legacy `eos_token_id=2`, CLIP tokenizer folders of vocab.json,
merges.txt and legacy tokenizer_config.json / special_tokens_map.json (no tokenizer.json) with each checkpoint's pad
token, and the Kandinsky prior's legacy `CLIPFeatureExtractor` preprocessor config. Sizes are tiny, so a pipeline
call with two steps per stage takes a few hundredths of a second on a CPU. `karlo_pipeline` and
`kandinsky_pipeline` build diffusers' pipelines by hand with plain `from_pretrained` calls: the reference.
"""

import json
from itertools import product
from pathlib import Path

import torch

START, END = "<|startoftext|>", "<|endoftext|>"
EMBED = 32  # CLIP width = projection = prior embedding, one size as in the published towers (768; 1280 for 2.2)
TOKENS = 77  # the tokenizers' model_max_length and the priors' num_embeddings
PHRASES = ["two blue cars left of a dog", "a cat on the right of three small birds", "an empty white room"] + [
    f"a {colour} {thing}"
    for colour, thing in product(("red", "green", "blue", "yellow"), ("apple", "car", "dog", "cube"))
]
UNET_BLOCKS = dict(
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
)
SMALL = dict(layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8)


def write_clip_tokenizer(path, pad_token) -> Path:
    """A byte-level BPE trained offline on PHRASES, written as OpenAI CLIP's tokenizer folders are: vocab.json (byte
    symbols with and without `</w>`, then the merges, then `<|startoftext|>`, `<|endoftext|>`), merges.txt,
    tokenizer_config.json and special_tokens_map.json in the legacy `CLIPTokenizer` format."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    words = pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([words, pre_tokenizers.ByteLevel(add_prefix_space=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(PHRASES, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab.update({START: len(vocab), END: len(vocab) + 1})

    def added(token):
        return {"content": token, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    special = {"bos_token": added(START), "eos_token": added(END), "pad_token": pad_token, "unk_token": added(END)}
    config = {k: {"__type": "AddedToken", **v} if isinstance(v, dict) else v for k, v in special.items()}
    config.update(add_prefix_space=False, do_lower_case=True, errors="replace", model_max_length=TOKENS)
    config["tokenizer_class"] = "CLIPTokenizer"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    (path / "merges.txt").write_text(merges_text, encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True))
    return path


def vocab_size(tokenizer_folder) -> int:
    return len(json.loads((Path(tokenizer_folder) / "vocab.json").read_text(encoding="utf-8")))


def text_encoder(vocab):
    """A random `CLIPTextModelWithProjection` with the published towers' legacy token ids (eos 2: pool at argmax)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    sizes = dict(hidden_size=EMBED, intermediate_size=2 * EMBED, num_hidden_layers=1, num_attention_heads=2)
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    config = CLIPTextConfig(vocab_size=vocab, max_position_embeddings=TOKENS, projection_dim=EMBED, **sizes, **ids)
    return CLIPTextModelWithProjection(config).eval()


def prior_transformer():
    """A random `PriorTransformer` (the published defaults but the sizes), with unit CLIP statistics."""
    from diffusers import PriorTransformer

    sizes = dict(num_attention_heads=2, attention_head_dim=16, num_layers=1)
    prior = PriorTransformer(embedding_dim=EMBED, num_embeddings=TOKENS, **sizes)
    torch.nn.init.ones_(prior.clip_std)
    return prior.eval()


def save_folder(path, class_name, version, parts, entries) -> Path:
    """Save each part in its subfolder; write model_index.json naming them and the extra `entries`."""
    path = Path(path)
    index = {"_class_name": class_name, "_diffusers_version": version}
    for name, part in parts.items():
        part.save_pretrained(path / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
    index.update(entries)
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def write_karlo_folder(path, seed=0) -> Path:
    """A random-weight folder in the layout of kakaobrain/karlo-v1-alpha: an 8 px decoder, 32 px super-resolution."""
    from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    path = Path(path)
    vocab = vocab_size(write_clip_tokenizer(path / "tokenizer", "!"))
    torch.manual_seed(seed)
    decoder = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=6,  # a mean and a learned variance per channel
        cross_attention_dim=EMBED,
        attention_head_dim=8,
        class_embed_type="identity",  # the text projection's time embedding, added as is
        resnet_time_scale_shift="scale_shift",
        **UNET_BLOCKS,
        **SMALL,
    )
    time_embed_dim = 4 * SMALL["block_out_channels"][0]
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=EMBED, time_embed_dim=time_embed_dim, cross_attention_dim=EMBED)
    resnets = dict(down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2)
    super_res = dict(sample_size=32, in_channels=6, out_channels=3, add_attention=False, **resnets, **SMALL)
    parts = dict(
        prior=prior_transformer(),
        decoder=decoder.eval(),
        text_proj=text_proj.eval(),
        super_res_first=UNet2DModel(**super_res).eval(),
        super_res_last=UNet2DModel(**super_res).eval(),
        text_encoder=text_encoder(vocab),
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    )
    entries = {"tokenizer": ["transformers", "CLIPTokenizer"], "text_proj": ["unclip", "UnCLIPTextProjModel"]}
    return save_folder(path, "UnCLIPPipeline", "0.11.0.dev0", parts, entries)


def write_kandinsky_folders(root, seed=0) -> tuple[Path, Path]:
    """(decoder folder, prior folder) in the layouts of kandinsky-community/kandinsky-2-2-decoder and
    kandinsky-2-2-prior: an 8x8x4 latent UNet and a four-level MoVQ (x8), so 64 px images."""
    from diffusers import DDPMScheduler, UnCLIPScheduler, UNet2DConditionModel, VQModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from genvl.models.clip import CLIP_MEAN, CLIP_STD

    root = Path(root)
    decoder_folder, prior_folder = root / "kandinsky-2-2-decoder", root / "kandinsky-2-2-prior"
    vocab = vocab_size(write_clip_tokenizer(prior_folder / "tokenizer", END))
    legacy = dict(crop_size=224, do_center_crop=True, do_normalize=True, do_resize=True)
    legacy.update(feature_extractor_type="CLIPFeatureExtractor", image_mean=CLIP_MEAN, image_std=CLIP_STD)
    (prior_folder / "image_processor").mkdir(parents=True, exist_ok=True)
    config = json.dumps({**legacy, "resample": 3, "size": 224}, indent=2)
    (prior_folder / "image_processor" / "preprocessor_config.json").write_text(config)
    torch.manual_seed(seed)
    sizes = dict(hidden_size=EMBED, intermediate_size=2 * EMBED, num_hidden_layers=1, num_attention_heads=2)
    vision = CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=EMBED, **sizes)
    prior_parts = dict(
        prior=prior_transformer(),
        image_encoder=CLIPVisionModelWithProjection(vision).eval(),
        text_encoder=text_encoder(vocab),
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=10.0),
    )
    entries = {
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
    }
    # the hub lists kandinsky-2-2-prior (main, and its June 2023 commits) as a KandinskyV22PriorPipeline
    save_folder(prior_folder, "KandinskyV22PriorPipeline", "0.17.0.dev0", prior_parts, entries)

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=8,  # a mean and a learned variance per latent channel
        cross_attention_dim=EMBED,
        attention_head_dim=8,
        addition_embed_type="image",
        addition_embed_type_num_heads=64,
        encoder_hid_dim=EMBED,
        encoder_hid_dim_type="image_proj",
        resnet_time_scale_shift="scale_shift",
        **UNET_BLOCKS,
        **SMALL,
    )
    blocks = dict(
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
    )
    # spatial norm has 32 groups whatever norm_num_groups says: 32 channels at least
    blocks.update(block_out_channels=(32,) * 4, latent_channels=4, num_vq_embeddings=64, vq_embed_dim=4)
    movq = VQModel(norm_type="spatial", sample_size=32, **blocks)
    schedule = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    scheduler = DDPMScheduler(prediction_type="epsilon", thresholding=False, **schedule)
    decoder_parts = dict(unet=unet.eval(), scheduler=scheduler, movq=movq.eval())
    save_folder(decoder_folder, "KandinskyV22Pipeline", "0.17.0.dev0", decoder_parts, {})
    return decoder_folder, prior_folder


def from_subfolders(folder, classes) -> dict:
    """{name: classes[name].from_pretrained(folder / name)}."""
    return {name: cls.from_pretrained(Path(folder) / name) for name, cls in classes.items()}


def karlo_pipeline(folder):
    """diffusers' `UnCLIPPipeline`, built by hand from a Karlo folder's subfolders."""
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    classes = dict(prior=PriorTransformer, decoder=UNet2DConditionModel, text_proj=UnCLIPTextProjModel)
    classes.update(super_res_first=UNet2DModel, super_res_last=UNet2DModel)
    classes.update(text_encoder=CLIPTextModelWithProjection, tokenizer=CLIPTokenizer)
    classes.update(dict.fromkeys(("prior_scheduler", "decoder_scheduler", "super_res_scheduler"), UnCLIPScheduler))
    return UnCLIPPipeline(**from_subfolders(folder, classes))


def kandinsky_pipeline(decoder_folder, prior_folder):
    """diffusers' `KandinskyV22CombinedPipeline`, built by hand from a Kandinsky 2.2 decoder folder and prior folder."""
    import diffusers
    import transformers

    prior = dict(prior=diffusers.PriorTransformer, scheduler=diffusers.UnCLIPScheduler)
    prior.update(
        image_encoder=transformers.CLIPVisionModelWithProjection, image_processor=transformers.CLIPImageProcessor
    )
    prior.update(text_encoder=transformers.CLIPTextModelWithProjection, tokenizer=transformers.CLIPTokenizer)
    decoder = dict(unet=diffusers.UNet2DConditionModel, scheduler=diffusers.DDPMScheduler, movq=diffusers.VQModel)
    prior_parts = {f"prior_{name}": part for name, part in from_subfolders(prior_folder, prior).items()}
    return diffusers.KandinskyV22CombinedPipeline(**from_subfolders(decoder_folder, decoder), **prior_parts)
