"""VisionEncoderDecoder checkpoints of every public decoder family, and pickled weights, as published.

GPT-2 decoders run on genvl's own cached decoder; BERT- and RoBERTa-style, TrOCR and MBart (Donut) decoders run on
`ModelDecoder`, their own forward with transformers' cache. Either way the tokens must be transformers' generate()
tokens. Folders are written in the public layouts with tiny random weights.
"""

import json
import os
import pickle

import pytest
import torch

from genvl.generation import GenerationSettings, generate
from genvl.generation.decoder import CachedDecoder, ModelDecoder, decoder_for, decoder_positions
from genvl.pipelines.caption import CaptionPipeline

from .conftest import TINY, get_dummy_components, world_texts, write_public_vit_gpt2_folder
from .test_bad_input import run
from .test_hostile_folders import run as guarded_run

WORDS = sorted({word for text in world_texts(200) for word in text.split()})
BOS, PAD, EOS = 0, 1, 2  # RoBERTa's, TrOCR's and MBart's special ids
FAMILIES = ("vit-bert", "deit-roberta", "beit-trocr", "swin-mbart")
CASES = [
    dict(num_beams=1),
    dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(num_beams=1, min_new_tokens=5, forced_bos_token_id=7, forced_eos_token_id=EOS),
    dict(num_beams=3, forced_eos_token_id=EOS),
    dict(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
    dict(num_beams=5, early_stopping="never", min_new_tokens=3, no_repeat_ngram_size=3),
]


def family_model(family: str, vocab_size: int, seed: int = 0):
    """A random-weight VisionEncoderDecoderModel of `family` (encoder-decoder), as the public checkpoints of that
    family are configured, with a sharpened output layer and an end token likely enough that captions end at
    different steps."""
    from transformers import (
        BeitConfig,
        BertConfig,
        DeiTConfig,
        MBartConfig,
        RobertaConfig,
        SwinConfig,
        TrOCRConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    torch.manual_seed(seed)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ids = dict(bos_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=EOS)
    bart = dict(d_model=32, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=64, max_position_embeddings=40)
    encoder, decoder = {
        # bert2bert-style: [CLS] starts, [SEP] ends
        "vit-bert": lambda: (
            ViTConfig(image_size=32, patch_size=8, **small),
            BertConfig(
                vocab_size=vocab_size,
                max_position_embeddings=40,
                is_decoder=True,
                add_cross_attention=True,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                decoder_start_token_id=2,
                **small,
            ),
        ),
        "deit-roberta": lambda: (
            DeiTConfig(image_size=32, patch_size=8, **small),
            RobertaConfig(
                vocab_size=vocab_size,
                max_position_embeddings=42,
                is_decoder=True,
                add_cross_attention=True,
                **small,
                **ids,
            ),
        ),
        # TrOCR: a BEiT (or DeiT) encoder, its own decoder reading the encoder's width
        "beit-trocr": lambda: (
            BeitConfig(image_size=32, patch_size=8, **small),
            TrOCRConfig(vocab_size=vocab_size, cross_attention_hidden_size=32, **bart, **ids),
        ),
        # Donut: a Swin encoder and an MBart decoder, which ends every caption it cuts short with </s>
        "swin-mbart": lambda: (
            SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
            MBartConfig(
                vocab_size=vocab_size,
                encoder_layers=2,
                is_decoder=True,
                add_cross_attention=True,
                is_encoder_decoder=False,
                scale_embedding=True,
                forced_eos_token_id=EOS,
                **bart,
                **ids,
            ),
        ),
    }[family]()
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = decoder.decoder_start_token_id
    config.pad_token_id, config.eos_token_id = decoder.pad_token_id, decoder.eos_token_id
    config.tie_word_embeddings = config.decoder.tie_word_embeddings = False
    model = VisionEncoderDecoderModel(config).eval()
    output = model.decoder.get_output_embeddings()
    output.weight = torch.nn.Parameter(torch.randn_like(output.weight) * 0.5)  # peaked, as a trained model's
    with torch.no_grad():
        output.weight[decoder.eos_token_id] *= 1.5
        for name, module in model.decoder.named_modules():  # let the image weigh on the words
            if name.endswith(("crossattention.output.dense", "encoder_attn.out_proj")):
                module.weight *= 4
    return model


def family_tokenizer(family: str):
    """A tokenizer of the family's kind over the world's words: WordPiece (BERT), byte-level BPE (RoBERTa, TrOCR)
    or a SentencePiece-style unigram model (XLM-RoBERTa, as Donut's MBart decoder uses)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BertTokenizerFast, RobertaTokenizerFast, XLMRobertaTokenizerFast

    if family == "vit-bert":
        return BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)})
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    if family == "swin-mbart":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="<unk>")
        tokenizer.train_from_iterator(world_texts(300), trainer=trainer)
        return XLMRobertaTokenizerFast(tokenizer_object=tokenizer)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(world_texts(300), trainer=trainer)
    return RobertaTokenizerFast(tokenizer_object=tokenizer)


def write_family_folder(path, family: str, seed: int = 0):
    """A flat folder in the family's public layout: config.json, weights, generation_config.json, tokenizer files
    and a ViT-style preprocessor_config.json at the encoder's size."""
    tokenizer = family_tokenizer(family)
    model = family_model(family, len(tokenizer), seed)
    model.generation_config.max_new_tokens = 10
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor = {"do_normalize": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    processor.update(image_processor_type="ViTImageProcessor", resample=2, size={"height": 32, "width": 32})
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


def transformers_tokens(model, states, prompt, eos, **case):
    """transformers' generate() tokens of each returned sequence, from the encoder states `states`, with the prompt
    and what follows the end cut off."""
    from transformers.modeling_outputs import BaseModelOutput

    out = model.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=states),
        decoder_input_ids=torch.tensor([prompt]).expand(states.shape[0], -1),
        **case,
    )
    rows = [row[len(prompt) :].tolist() for row in out]
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoder_family_decodes_transformers_tokens(family, case):
    model = family_model(family, vocab_size=60, seed=1)
    case = dict(case, max_new_tokens=12)
    # the model's generation_config, then the case: as the pipeline and generate() both read them
    settings = GenerationSettings.from_generation_config(model.generation_config, None, **case)
    # random encoder states: a random encoder maps every image to about the same ones
    states = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(1)) * 3
    prefix = [9, 11] if case.get("num_beams") == 3 else []  # a prefix the captions continue
    result = generate(model, None, settings, prefix_ids=prefix, encoder_states=states)
    ours = [seq for seqs in result.sequences for seq in seqs]
    prompt = [settings.decoder_start_token_id, *prefix]
    assert ours == transformers_tokens(model, states, prompt, settings.eos_token_id, **case)
    assert max(map(len, ours)) > 1 and len(set(map(tuple, ours))) > 1  # not a degenerate comparison
    if "forced_bos_token_id" in case:
        assert all(seq[0] == 7 for seq in ours)


def several_ends_model(kind: str, tokenizer, end_scale: float = 1.0):
    """A model of `kind` whose generation_config lists two end tokens (its own, then a word it often writes, both
    scaled by `end_scale` in the output layer), the encoder states it decodes, and that word."""
    if kind == "gpt2":
        model, _ = get_dummy_components(tokenizer, seed=1)
        states = model.encoder(pixel_values=torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        states = states.last_hidden_state
    else:
        model = family_model(kind, vocab_size=60, seed=1)
        states = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(1)) * 3
    config = model.generation_config
    free = GenerationSettings.from_generation_config(config, tokenizer, max_new_tokens=12)
    written = [t for seqs in generate(model, None, free, encoder_states=states).sequences for t in seqs[0]]
    common = max(set(written), key=written.count)  # a word written by most captions, in the middle of some
    config.eos_token_id = [free.eos_token_id, common]
    with torch.no_grad():
        model.decoder.get_output_embeddings().weight[config.eos_token_id] *= end_scale
    return model, states, config, common


@pytest.mark.parametrize(
    "case",
    [
        dict(num_beams=1),
        dict(num_beams=1, min_new_tokens=4, no_repeat_ngram_size=2),
        dict(num_beams=3),
        dict(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
        dict(num_beams=3, min_new_tokens=3, bad_words_ids="ends"),
        dict(num_beams=2, forced_eos_token_id="ends"),
        # end tokens likely enough that more than K of the best 2K candidates end: only the extra K go on
        dict(num_beams=2, length_penalty=2.0, early_stopping="never", end_scale=2.0),
        dict(num_beams=3, length_penalty=3.0, early_stopping="never", end_scale=2.0),
    ],
    ids=["greedy", "greedy-min-ngram", "beam3", "beam4-early-return2", "beam3-min-bans", "beam2-forced-ends"]
    + ["beam2-never", "beam3-never"],
)
@pytest.mark.parametrize("kind", ["gpt2", "deit-roberta"])
def test_several_end_tokens_decode_transformers_tokens(kind, case, tiny_tokenizer):
    """A generation_config that lists several end tokens: any of them ends a caption, none of them is banned, and
    beam search keeps K more candidates per extra end token, as transformers' generate() does."""
    case = dict(case)
    model, states, config, common = several_ends_model(kind, tiny_tokenizer, case.pop("end_scale", 1.0))
    ends = config.eos_token_id
    case = {k: (ends if v == "ends" else v) for k, v in dict(case, max_new_tokens=12).items()}
    if "bad_words_ids" in case:
        case["bad_words_ids"] = [[t] for t in ends] + [[7]]  # the end tokens alone are left out, 7 is banned
    settings = GenerationSettings.from_generation_config(config, tiny_tokenizer, **case)
    assert settings.end_tokens == tuple(ends)
    result = generate(model, None, settings, encoder_states=states)
    ours = [seq for seqs in result.sequences for seq in seqs]
    from transformers.modeling_outputs import BaseModelOutput

    out = model.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=states),
        decoder_input_ids=torch.full((states.shape[0], 1), settings.decoder_start_token_id),
        return_dict_in_generate=True,
        output_scores=True,
        **case,
    )
    theirs = []
    for row in out.sequences[:, 1:].tolist():
        cut = [i for i, t in enumerate(row) if t in ends]
        theirs.append(row[: cut[0]] if cut else row)
    assert ours == theirs
    # scores: the beams' as transformers reports them; a greedy caption's log-probabilities up to its end token
    if settings.num_beams > 1:
        expected = out.sequences_scores
    else:
        steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        expected = torch.stack([row[: len(seq) + 1].sum() for row, seq in zip(steps, theirs)])
    torch.testing.assert_close(torch.tensor([s for row in result.scores for s in row]), expected, atol=1e-4, rtol=1e-4)
    assert all(common not in seq for seq in ours) and max(map(len, ours)) > 1
    if "bad_words_ids" not in case and "forced_eos_token_id" not in case:
        # the second end token cut captions short: with the first alone, some run on past it
        alone = GenerationSettings.from_generation_config(config, tiny_tokenizer, **dict(case, eos_token_id=ends[0]))
        longer = [s for seqs in generate(model, None, alone, encoder_states=states).sequences for s in seqs]
        assert any(common in seq for seq in longer)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_fallback_drops_images_whose_captions_have_ended(num_beams, monkeypatch):
    model = family_model("deit-roberta", vocab_size=60, seed=1)
    settings = GenerationSettings.from_generation_config(
        model.generation_config, None, max_new_tokens=12, num_beams=num_beams
    )
    states = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(1)) * 3
    kept, keep = [], ModelDecoder.keep
    monkeypatch.setattr(
        ModelDecoder, "keep", lambda self, rows, images: (kept.append(len(images)), keep(self, rows, images))
    )
    result = generate(model, None, settings, encoder_states=states)
    assert len({len(seqs[0]) for seqs in result.sequences}) > 1 and kept  # images ended at different steps
    case = dict(max_new_tokens=12, num_beams=num_beams)
    assert [s[0] for s in result.sequences] == transformers_tokens(model, states, [EOS], EOS, **case)


def test_gpt2_decoders_take_the_fast_path_and_others_the_fallback(tiny_tokenizer):
    states = torch.zeros(1, 4, 32)
    assert isinstance(decoder_for(family_model("vit-bert", 60), states, 8), ModelDecoder)
    gpt2, _ = get_dummy_components(tiny_tokenizer)
    assert isinstance(decoder_for(gpt2, torch.zeros(1, 4, TINY.decoder_hidden_size), 8), CachedDecoder)
    # positions: GPT-2's n_positions, BERT's table, RoBERTa's table past its padding index, TrOCR's sinusoids
    assert decoder_positions(gpt2.config.decoder) == TINY.max_positions
    assert decoder_positions(family_model("vit-bert", 60).config.decoder) == 40
    assert decoder_positions(family_model("deit-roberta", 60).config.decoder) == 40
    trocr = family_model("beit-trocr", 60).config.decoder
    assert decoder_positions(trocr) == 40
    trocr.use_learned_position_embeddings = False
    assert decoder_positions(trocr) is None
    with pytest.raises(ValueError, match="only 40"):
        decoder_for(family_model("vit-bert", 60), states, 41)


@pytest.mark.parametrize("family", FAMILIES)
def test_public_family_folders_caption_as_transformers_does(family, tmp_path, scene_images):
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    folder = write_family_folder(tmp_path / family, family)
    pipeline = CaptionPipeline.from_pretrained(folder)
    ours = pipeline(scene_images[:3], num_beams=3).captions
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        ids = model.generate(pixel_values=pipeline.preprocess(scene_images[:3]), num_beams=3)
    expected = [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert [c[0] for c in ours] == expected
    assert any(expected)
    # a prefix is the words alone, without the [CLS]/<s> a tokenizer wraps text in
    prefixed = pipeline(scene_images[:1], prefix="a red", max_new_tokens=4).captions[0][0]
    assert prefixed.startswith("a red")
    # saved in genvl's layout and loaded again, it captions the same (a WordPiece or SentencePiece tokenizer had
    # no merges.txt to write: the save failed half way)
    pipeline.save_pretrained(tmp_path / "saved")
    assert CaptionPipeline.from_pretrained(tmp_path / "saved")(scene_images[:3], num_beams=3).captions == ours


def other_encoder(name: str):
    """The config of a vision encoder other checkpoints pair with a GPT-2 decoder, tiny, and the image processor its
    public checkpoints ship (CLIP's and DINOv2's resize the shortest edge and crop the centre)."""
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        Dinov2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
        Swinv2Config,
        ViTImageProcessor,
    )

    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    square, crop = {"height": 32, "width": 32}, dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return {
        "clip": lambda: (CLIPVisionConfig(**small, intermediate_size=64), CLIPImageProcessor(**crop)),
        "dinov2": lambda: (Dinov2Config(**small), BitImageProcessor(**crop)),
        "siglip": lambda: (SiglipVisionConfig(**small, intermediate_size=64), SiglipImageProcessor(size=square)),
        "swinv2": lambda: (
            Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
            ViTImageProcessor(size=square),
        ),
    }[name]()


@pytest.mark.parametrize("encoder", ["clip", "dinov2", "siglip", "swinv2"])
def test_other_vision_encoders_caption_as_transformers_does(encoder, tiny_tokenizer, tmp_path, scene_images):
    """A VisionEncoderDecoder folder with a CLIP, DINOv2, SigLIP or Swin V2 encoder and a GPT-2 decoder: the fast
    path reads any encoder's states, and the folder's own image processor prepares the pictures."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    encoder_config, processor = other_encoder(encoder)
    eos = tiny_tokenizer.eos_token_id
    decoder = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=40, add_cross_attention=True
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config).eval()
    model.config.tie_word_embeddings = model.decoder.config.tie_word_embeddings = False
    model.decoder.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.decoder.lm_head.weight) * 0.5)
    for part in (model, tiny_tokenizer, processor):
        part.save_pretrained(tmp_path)
    pipeline = CaptionPipeline.from_pretrained(tmp_path)
    assert isinstance(decoder_for(pipeline.model, torch.zeros(1, 4, 32), 8), CachedDecoder)
    images = [image.resize((48, 36)) for image in scene_images[:3]]  # not square: the processor's own resize
    ours = pipeline(images, num_beams=2, max_new_tokens=8).captions
    with torch.no_grad():
        ids = model.generate(
            pixel_values=processor(images, return_tensors="pt").pixel_values, num_beams=2, max_new_tokens=8
        )
    assert [c[0] for c in ours] == [t.strip() for t in tiny_tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert len({c[0] for c in ours}) > 1


def stop_inside(tokenizer, rows) -> str:
    """A stop string that starts on the last character one token of `rows` (token ids) writes and ends inside the
    next token's text (whole characters: a random model writes many lone bytes)."""
    for row in rows:
        for i in range(1, len(row)):
            before = tokenizer.decode(row[:i], skip_special_tokens=True)
            added = tokenizer.decode(row[: i + 1], skip_special_tokens=True)[len(before) :]
            stop = before[-1:] + added[:2]
            if len(stop) >= 2 and "\ufffd" not in stop and stop.strip() == stop:
                return stop
    raise AssertionError("no token boundary between whole characters")


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("family", ["vit-gpt2", "deit-roberta", "swin-mbart"])
def test_stop_strings_end_captions_as_transformers_does(family, num_beams, tmp_path, scene_images):
    """A stop string across a token boundary of a caption the folder writes: the captions end on the token that
    completes it, as transformers' generate(stop_strings=...) ends them (byte-level BPE and SentencePiece-style
    vocabularies)."""
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    if family == "vit-gpt2":
        folder = write_public_vit_gpt2_folder(tmp_path / family)
    else:
        folder = write_family_folder(tmp_path / family, family)
    pipeline = CaptionPipeline.from_pretrained(folder)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    images, decoding = scene_images[:4], dict(num_beams=num_beams, max_new_tokens=10)

    def transformers_captions(**stops):
        with torch.no_grad():
            ids = model.generate(pixel_values=pipeline.preprocess(images), **decoding, **stops)
        return ids, [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    free_ids, free = transformers_captions()
    stop = stop_inside(tokenizer, free_ids[:, 1:].tolist())
    ours = [c[0] for c in pipeline(images, **decoding, stop_strings=[stop]).captions]
    assert ours == transformers_captions(stop_strings=[stop], tokenizer=tokenizer)[1]
    assert ours != free  # a stop cut captions short (beam search may then keep others that do not write it)
    assert num_beams > 1 or any(stop in caption for caption in ours)


def test_cli_captions_with_a_bert_decoder_and_checks_its_positions(tmp_path, capsys, scene_images):
    folder = write_family_folder(tmp_path / "vit-bert", "vit-bert")
    image = tmp_path / "scene.png"
    scene_images[0].save(image)
    code, out, err = run(["caption", str(image), "--model", str(folder), "--beam", "2"], capsys)
    assert code == 0, err
    expected = CaptionPipeline.from_pretrained(folder)([image], num_beams=2).captions[0][0]
    assert out.strip().endswith(expected)
    code, out, err = run(["caption", str(image), "--model", str(folder), "--max-new-tokens", "40"], capsys)
    assert code == 2 and "40 positions" in err and "Traceback" not in err


def test_unsupported_generation_options_are_refused_not_ignored(tmp_path):
    folder = write_family_folder(tmp_path / "trocr", "beit-trocr")
    pipeline = CaptionPipeline.from_pretrained(folder)
    pipeline.model.generation_config.dola_layers = "high"
    with pytest.raises(ValueError, match="dola_layers='high', which genvl's engine does not implement"):
        pipeline.settings()
    pipeline.model.generation_config.dola_layers = None
    pipeline.model.generation_config.eos_token_id = None
    pipeline.tokenizer.eos_token = None
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        pipeline.settings()


@pytest.mark.parametrize(
    "name, value, refused",
    [
        ("dola_layers", "high", True),
        ("top_h", 0.4, False),  # implemented
        ("token_healing", True, True),
        ("guidance_scale", 3.0, True),
        ("watermarking_config", {"greenlist_ratio": 0.25}, True),
        ("num_beam_groups", 2, True),
        ("typical_p", 0.9, False),  # implemented
        ("exponential_decay_length_penalty", (3, 1.5), False),
        ("sequence_bias", [[[7], 2.0]], False),
        ("guidance_scale", 1.0, False),  # off, as transformers reads it
        ("typical_p", 1.0, False),  # off, as older configs write it out
        ("output_scores", True, False),  # what generate() returns, not which tokens
        ("prompt_lookup_num_tokens", 3, False),  # the same tokens, faster
        ("max_time", 5.0, False),
        ("a_key_generate_does_not_know", 7, False),
    ],
)
def test_every_generate_option_that_changes_tokens_is_implemented_or_refused(name, value, refused):
    model = family_model("deit-roberta", vocab_size=60)
    setattr(model.generation_config, name, value)
    if refused:
        with pytest.raises(ValueError, match=f"generation_config sets {name}=.*which genvl's engine does not"):
            GenerationSettings.from_generation_config(model.generation_config, None)
    else:
        settings = GenerationSettings.from_generation_config(model.generation_config, None, max_new_tokens=6)
        states = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)) * 3  # assisted: one at a time
        ours = [seqs[0] for seqs in generate(model, None, settings, encoder_states=states).sequences]
        assert ours == transformers_tokens(model, states, [EOS], EOS, max_new_tokens=6)


# ---- pickled weights -----------------------------------------------------------------------------------------


def pickled(folder, shards: int = 1):
    """Replace the folder's safetensors weights with `pytorch_model.bin` (or `shards` shards and their index), as
    transformers wrote them before safetensors."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    keys, weight_map = sorted(state), {}
    for shard in range(shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
        part = keys[shard::shards]
        torch.save({key: state[key] for key in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("shards", [1, 2])
def test_pickled_vit_gpt2_weights_load_as_published(tmp_path, scene_images, capsys, shards):
    safe = write_public_vit_gpt2_folder(tmp_path / "safe")
    published = pickled(write_public_vit_gpt2_folder(tmp_path / "vit-gpt2-image-captioning"), shards)
    assert not list(published.glob("*.safetensors"))
    expected = CaptionPipeline.from_pretrained(safe)(scene_images[:3]).captions
    pipeline = CaptionPipeline.from_pretrained(published)
    assert pipeline.settings().num_beams == 4  # its generation_config.json is read too
    assert pipeline(scene_images[:3]).captions == expected
    image = tmp_path / "scene.png"
    scene_images[0].save(image)
    code, out, err = run(["caption", str(image), "--model", str(published)], capsys)
    assert code == 0, err
    assert (code, out) == run(["caption", str(image), "--model", str(safe)], capsys)[:2]


class RunsCode:
    """Unpickled, it would run a shell command that leaves a file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dumps"])
def test_pickles_that_hold_more_than_tensors_are_refused_before_they_run(tmp_path, capsys, scene_images, how):
    folder = pickled(write_public_vit_gpt2_folder(tmp_path / "hostile"))
    marker = tmp_path / "ran"
    state = {"decoder.lm_head.weight": RunsCode(marker)}
    if how == "torch.save":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(state))
    image = tmp_path / "scene.png"
    scene_images[0].save(image)
    code, out, err = guarded_run(["caption", str(image), "--model", str(folder)], capsys, tmp_path)
    assert code == 1 and "pickle files are refused unless they hold tensors only" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="holds more"):
        CaptionPipeline.from_pretrained(folder)
    assert not marker.exists()
    # a pickle of tensors under a name that is not a weights file is refused as before
    (folder / "pytorch_model.bin").unlink()
    torch.save({}, folder / "optimizer.pt")
    with pytest.raises(ValueError, match="optimizer.pt: pickle files are refused"):
        CaptionPipeline.from_pretrained(folder)


def test_pickled_diffusers_weights_load_as_published(tmp_path):
    from diffusers import PriorTransformer
    from safetensors.torch import load_file

    from genvl.io.folders import load_diffusers_model

    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=16)
    prior.save_pretrained(tmp_path)
    state = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    loaded = load_diffusers_model(PriorTransformer, tmp_path, torch.bfloat16)
    assert not loaded.training and loaded.dtype == torch.bfloat16
    assert all(torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16)) for k, v in state.items())
    torch.save({**state, "extra": torch.ones(1)}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="the weights hold extra"):
        load_diffusers_model(PriorTransformer, tmp_path)
