"""The captioner: a ViT (or Swin) encoder and a GPT-2 decoder with cross-attention, in the Hugging Face
VisionEncoderDecoder format, so that public ViT-GPT2 (and Donut-style Swin) captioning folders load in its place.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .architecture import JsonArchitecture

DEFAULT_BOS = "<|endoftext|>"
NO_REPEAT_NGRAM_SIZE = 4  # the default generation_config of a captioner built here


@dataclass
class CaptionerArchitecture(JsonArchitecture):
    """Named sizes of a captioner; saved as JSON in `configs/` and expanded into the HF configs."""

    image_size: int = 64
    patch_size: int = 8
    encoder_hidden_size: int = 192
    encoder_layers: int = 6
    encoder_heads: int = 3
    decoder_hidden_size: int = 192
    decoder_layers: int = 3
    decoder_heads: int = 3
    max_positions: int = 40
    vocab_size: int = 1024
    # "vit", or "swin": a hierarchical encoder of local windows (patch_size pixels per token at the first
    # stage, one stage per entry of swin_depths, each halving the grid and doubling the width from
    # encoder_hidden_size)
    encoder_type: str = "vit"
    swin_depths: tuple = (2, 2, 6)
    swin_window: int = 4


def train_tokenizer(texts, vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer on captions and wrap it as a GPT-2 tokenizer.

    `<|endoftext|>` is the only special token and serves as BOS, EOS and padding, as in GPT-2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[DEFAULT_BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=DEFAULT_BOS,
        eos_token=DEFAULT_BOS,
        pad_token=DEFAULT_BOS,
        unk_token=DEFAULT_BOS,
        model_max_length=1024,
    )


def save_gpt2_vocab_files(tokenizer, directory) -> None:
    """Write `vocab.json` and `merges.txt` (the classic GPT-2 tokenizer files) beside `tokenizer.json`,
    so that tools which read only the classic files can load the tokenizer too. A tokenizer that is no byte-pair
    one (a BERT decoder's WordPiece, MBart's SentencePiece) has no such files: its own save is all there is."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or "merges" not in model:
        return
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    directory = Path(directory)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_captioner(arch: CaptionerArchitecture, tokenizer):
    """A randomly initialised VisionEncoderDecoderModel (ViT + GPT2LMHeadModel with cross-attention)."""
    from transformers import (
        GenerationConfig,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    encoder = _encoder_config(arch)
    eos = tokenizer.eos_token_id
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=arch.max_positions,
        n_embd=arch.decoder_hidden_size,
        n_layer=arch.decoder_layers,
        n_head=arch.decoder_heads,
        add_cross_attention=True,
        bos_token_id=eos,
        eos_token_id=eos,
        is_decoder=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    config.tie_word_embeddings = True
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_new_tokens=arch.max_positions - 8,
        num_beams=1,
        # no world caption repeats a run of 4 tokens (rows repeat ", a red"), so this never bars a true caption,
        # and a model shown something it cannot read cannot answer one word to the token limit
        no_repeat_ngram_size=NO_REPEAT_NGRAM_SIZE,
    )
    return model


def grow_positions(model, positions: int) -> None:
    """Give the GPT-2 decoder of the VisionEncoderDecoder `model` `positions` learned positions, in place: the
    trained ones are kept and each new one starts as a copy of the last trained one, so the model reads and writes
    every sequence it could before exactly as before."""
    import torch

    config = model.decoder.config
    if getattr(config, "model_type", None) != "gpt2":
        raise ValueError(f"growing positions needs a GPT-2 decoder, this one is {config.model_type!r}")
    old = model.decoder.transformer.wpe
    if positions < old.num_embeddings:
        raise ValueError(f"the decoder already has {old.num_embeddings} positions, more than {positions}")
    grown = torch.nn.Embedding(positions, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        grown.weight[: old.num_embeddings] = old.weight
        grown.weight[old.num_embeddings :] = old.weight[-1]
    model.decoder.transformer.wpe = grown
    config.n_positions = model.config.decoder.n_positions = positions  # the same config, or a copy of it


def _encoder_config(arch: CaptionerArchitecture):
    from transformers import SwinConfig, ViTConfig

    if arch.encoder_type == "vit":
        return ViTConfig(
            image_size=arch.image_size,
            patch_size=arch.patch_size,
            hidden_size=arch.encoder_hidden_size,
            num_hidden_layers=arch.encoder_layers,
            num_attention_heads=arch.encoder_heads,
            intermediate_size=4 * arch.encoder_hidden_size,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if arch.encoder_type == "swin":
        depths = list(arch.swin_depths)
        return SwinConfig(
            image_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.encoder_hidden_size,
            depths=depths,
            num_heads=[arch.encoder_heads * 2**stage for stage in range(len(depths))],
            window_size=arch.swin_window,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        )
    raise ValueError(f"encoder_type must be 'vit' or 'swin', got {arch.encoder_type!r}")


def build_image_processor(arch: CaptionerArchitecture):
    """The ViT image processor matching `arch`: resize to the model's size, scale to [-1, 1]."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": arch.image_size, "width": arch.image_size},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )


def tokenize_captions(tokenizer, captions, max_length: int):
    """(decoder_input_ids, labels): BOS + tokens, tokens + EOS, padded with EOS / -100."""
    import torch

    eos = tokenizer.eos_token_id
    inputs = torch.full((len(captions), max_length), eos, dtype=torch.long)
    labels = torch.full((len(captions), max_length), -100, dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = tokenizer(caption).input_ids[: max_length - 1]
        inputs[i, 1 : len(ids) + 1] = torch.tensor(ids)
        labels[i, : len(ids) + 1] = torch.tensor(ids + [eos])
    return inputs, labels
