"""genvl's decoding engine against transformers' generate() on the same weights."""

import re

import pytest
import torch

from genvl.generation import GenerationSettings, generate
from genvl.generation import decoder as decoder_module
from genvl.generation.processors import (
    bad_words,
    cutoff_filter,
    min_p_filter,
    no_repeat_ngram,
    top_h_filter,
    top_k_filter,
    top_p_filter,
    typical_filter,
)
from genvl.models.captioner import CaptionerArchitecture
from genvl.pipelines.caption import CaptionPipeline

from .conftest import TINY, get_dummy_components

CASES = [
    dict(num_beams=1),
    dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(num_beams=1, min_new_tokens=6),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.2, num_return_sequences=2),
    dict(num_beams=5, early_stopping="never", length_penalty=1.5, min_new_tokens=3),
]


def hf_sequences(model, pixel_values, prompt, case, max_new_tokens):
    out = model.generate(
        pixel_values=pixel_values,
        decoder_input_ids=prompt.expand(pixel_values.shape[0], -1),
        max_new_tokens=max_new_tokens,
        return_dict_in_generate=True,
        output_scores=case.get("num_beams", 1) > 1,
        **{"do_sample": False, **case},
    )
    return out


def trimmed(row, prompt_len, eos):
    tokens = row[prompt_len:].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_tokens_match_transformers_generate(tiny_tokenizer, case, seed):
    model, _ = get_dummy_components(tiny_tokenizer, seed=seed)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    prefix = tiny_tokenizer("a red").input_ids if seed == 1 else []
    prompt = torch.tensor([[eos, *prefix]])
    settings = GenerationSettings(
        eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12, **case
    )
    ours = generate(model, pixel_values, settings, prefix_ids=prefix)
    theirs = hf_sequences(model, pixel_values, prompt, case, 12)
    count = settings.num_return_sequences
    expected = [trimmed(row, prompt.shape[1], eos) for row in theirs.sequences]
    got = [seq for seqs in ours.sequences for seq in seqs]
    assert got == expected
    assert any(len(seq) > 1 for seq in got)  # a degenerate model would make this comparison vacuous
    if settings.num_beams > 1:
        torch.testing.assert_close(
            torch.tensor([s for row in ours.scores for s in row]), theirs.sequences_scores, rtol=1e-4, atol=1e-4
        )
        assert len(ours.sequences[0]) == count


def test_tall_linear_equals_linear():
    weight, bias = torch.randn(300, 48), torch.randn(300)
    for rows in (1, 8, decoder_module._TALL_ROWS + 1):
        x = torch.randn(rows, 48)
        for b in (bias, None):
            out = decoder_module._linear(weight, b, tall=True)(x)
            assert out.is_contiguous()
            torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, b))


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["greedy", "beam"])
def test_tall_output_layer_keeps_tokens_identical(tiny_tokenizer, monkeypatch, case):
    """A large output layer runs as W @ x^T (faster for big vocabularies); tokens must not change."""
    model, _ = get_dummy_components(tiny_tokenizer, seed=0)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = GenerationSettings(
        eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12, **case
    )
    monkeypatch.setattr(decoder_module, "_TALL_BYTES", 0)  # the tiny model's output layer counts as large
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append(a.shape) or mm(a, b))
    got = [seq for seqs in generate(model, pixel_values, settings).sequences for seq in seqs]
    assert tuple(model.decoder.lm_head.weight.shape) in calls
    monkeypatch.setattr(torch, "mm", mm)
    expected = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 12).sequences
    assert got == [trimmed(row, 1, eos) for row in expected]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_offloaded_and_hooked_layers_still_run_as_modules(tiny_tokenizer, num_beams):
    """The decoder calls plain layers' kernels directly; layers whose call does more (accelerate's offloading
    hooks keep the weights on the meta device until the call, or a forward hook) must still be called."""
    from accelerate import cpu_offload

    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    settings = GenerationSettings(
        eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=8, num_beams=num_beams
    )
    expected = generate(get_dummy_components(tiny_tokenizer)[0], pixel_values, settings).sequences
    offloaded, _ = get_dummy_components(tiny_tokenizer)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert offloaded.decoder.lm_head.weight.device.type == "meta"
    assert generate(offloaded, pixel_values, settings).sequences == expected
    hooked, _ = get_dummy_components(tiny_tokenizer)
    calls = []
    hooked.decoder.transformer.h[0].mlp.c_fc.register_forward_hook(lambda *_: calls.append(1))
    assert generate(hooked, pixel_values, settings).sequences == expected
    assert calls


def test_greedy_score_is_sum_of_token_log_probs(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    settings = GenerationSettings(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=10)
    result = generate(model, pixel_values, settings)
    for image, (seq,) in enumerate(result.sequences):
        full = [eos, *seq, eos] if len(seq) < 10 else [eos, *seq]
        ids = torch.tensor([full])
        logits = model(pixel_values=pixel_values[image : image + 1], decoder_input_ids=ids[:, :-1]).logits
        expected = logits.detach().log_softmax(-1)[0].gather(1, ids[0, 1:, None]).sum()
        assert result.scores[image][0] == pytest.approx(float(expected), abs=1e-3)


def test_greedy_batch_with_captions_ending_at_different_steps(tiny_tokenizer, monkeypatch):
    """Images whose captions have ended leave the batch while the others go on: tokens must match transformers
    and each image's tokens and score those of the image decoded alone."""
    model, _ = get_dummy_components(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    # swap EOS's output row with a token this model emits at different steps for different images
    lm_head = model.decoder.lm_head.weight.data
    lm_head[[eos, 239]] = lm_head[[239, eos]]
    pixel_values = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = GenerationSettings(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12)
    kept = []
    keep = decoder_module.CachedDecoder.keep
    monkeypatch.setattr(
        decoder_module.CachedDecoder,
        "keep",
        lambda self, rows, images: kept.append(len(images)) or keep(self, rows, images),
    )
    result = generate(model, pixel_values, settings)
    lengths = [len(seqs[0]) for seqs in result.sequences]
    assert len(set(lengths)) >= 3 and kept  # captions end at several steps and some images leave the batch
    theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), {}, 12)
    assert [seqs[0] for seqs in result.sequences] == [trimmed(row, 1, eos) for row in theirs.sequences]
    for image in range(8):
        alone = generate(model, pixel_values[image : image + 1], settings)
        assert alone.sequences[0] == result.sequences[image]
        assert result.scores[image][0] == pytest.approx(alone.scores[0][0], abs=1e-4)


def test_sampling_is_reproducible_and_per_image(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    model.decoder.lm_head.weight.data.div_(4.0)  # flatter distributions so that seeds matter
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    settings = GenerationSettings(
        eos_token_id=eos,
        decoder_start_token_id=eos,
        pad_token_id=eos,
        max_new_tokens=10,
        do_sample=True,
        top_k=20,
        top_p=0.9,
        temperature=1.2,
        num_return_sequences=2,
    )
    first = generate(model, pixel_values, settings, generator=torch.Generator().manual_seed(0))
    again = generate(model, pixel_values, settings, generator=torch.Generator().manual_seed(0))
    other = generate(model, pixel_values, settings, generator=torch.Generator().manual_seed(1))
    assert first.sequences == again.sequences
    assert first.sequences != other.sequences
    # per-image generators: an image's captions do not depend on the rest of the batch
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    batch = generate(model, pixel_values, settings, generator=gens())
    alone = generate(model, pixel_values[2:], settings, generator=gens()[2:])
    assert batch.sequences[2] == alone.sequences[0]


def test_no_repeat_ngram_bans_completions():
    scores = torch.zeros(1, 10)
    ids = torch.tensor([[1, 2, 3, 1, 2]])  # next after "1 2"... the trailing "2" was followed by 3 before
    banned = no_repeat_ngram(scores, ids, 2)
    assert banned[0, 3] == float("-inf")
    assert torch.isfinite(banned[0, [0, 1, 2, 4]]).all()
    assert no_repeat_ngram(scores, ids, 3)[0, 3] == float("-inf")  # "1 2" -> 3 seen before


@pytest.mark.parametrize("num_beams", [1, 4])
def test_banned_sequences_match_transformers_generate(tiny_tokenizer, num_beams):
    """`bad_words_ids` taken from what the model writes unbanned (a token it writes, and a pair of tokens it writes
    in a row): genvl's engine and transformers' generate() write the same tokens under the bans, and never those."""
    model, _ = get_dummy_components(tiny_tokenizer, seed=0)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = dict(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12)
    free = [seq for seqs in generate(model, pixel_values, GenerationSettings(**settings)).sequences for seq in seqs]
    longest = max(free, key=len)
    banned = [[longest[-1]], longest[:2], [eos]]  # the end token alone is never banned, as in transformers
    case = dict(num_beams=num_beams, bad_words_ids=banned)
    result = generate(model, pixel_values, GenerationSettings(**settings, **case))
    ours = [seq for seqs in result.sequences for seq in seqs]
    theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 12).sequences
    assert ours == [trimmed(row, 1, eos) for row in theirs]
    assert ours != free and any(len(seq) > 1 for seq in ours)
    for seq in ours:
        assert longest[-1] not in seq
        assert all(seq[i : i + 2] != longest[:2] for i in range(len(seq) - 1))


def test_bad_words_bans_completions():
    scores = torch.zeros(2, 10)
    ids = torch.tensor([[0, 4, 5], [0, 5, 4]])
    banned = bad_words(scores, ids, ((7,), (4, 5, 6), (5, 8), (0,)), end_tokens=(0,))
    assert torch.isinf(banned).nonzero().tolist() == [[0, 6], [0, 7], [0, 8], [1, 7]]  # (0,) is the end token
    assert torch.isfinite(bad_words(scores, ids[:, :1], ((4, 5, 6),), end_tokens=(0,))).all()  # too short to match


def test_stop_strings_need_the_tokenizer(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    settings = GenerationSettings(eos_token_id=0, decoder_start_token_id=0, pad_token_id=0, stop_strings=".")
    assert settings.stop_strings == (".",)
    with pytest.raises(ValueError, match="stop_strings needs the captioner's tokenizer: pass tokenizer="):
        generate(model, torch.zeros(1, 3, 32, 32), settings)
    assert generate(model, torch.zeros(1, 3, 32, 32), settings, tokenizer=tiny_tokenizer).sequences


@pytest.mark.parametrize(
    "name, value",
    [
        ("eos_token_id", [0, "V"]),
        ("decoder_start_token_id", "V"),
        ("pad_token_id", "V"),
        ("forced_bos_token_id", "V"),
        ("forced_eos_token_id", [0, "V"]),
        ("bad_words_ids", [[1], [2, "V"]]),
        ("sequence_bias", [[[1, "V"], 2.0]]),
        ("suppress_tokens", [1, "V"]),
        ("begin_suppress_tokens", ["V"]),
    ],
)
def test_token_ids_beyond_the_vocabulary_are_refused_before_decoding(tiny_tokenizer, name, value, monkeypatch):
    model, _ = get_dummy_components(tiny_tokenizer)
    vocabulary = model.decoder.config.vocab_size

    def beyond(v):
        return [beyond(x) for x in v] if isinstance(v, list) else vocabulary if v == "V" else v

    settings = dict(eos_token_id=0, decoder_start_token_id=0, pad_token_id=0, max_new_tokens=4)
    settings = GenerationSettings(**{**settings, name: beyond(value)})
    monkeypatch.setattr("genvl.generation.search.encode_images", None)  # refused before any image is encoded
    with pytest.raises(ValueError, match=f"^{name} holds token id {vocabulary}, beyond the vocabulary"):
        generate(model, torch.zeros(1, 3, 32, 32), settings)


def test_top_k_and_top_p_filters():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(top_k_filter(scores, 2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_p_filter(scores, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_p_filter(scores, 0.9)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(top_p_filter(scores, 1.0)).any()


@pytest.mark.parametrize(
    "ours, warper, value",
    [
        (min_p_filter, "MinPLogitsWarper", 0.05),
        (min_p_filter, "MinPLogitsWarper", 0.3),
        (typical_filter, "TypicalLogitsWarper", 0.2),
        (typical_filter, "TypicalLogitsWarper", 0.9),
        (cutoff_filter, "EpsilonLogitsWarper", 3e-3),
        (cutoff_filter, "EpsilonLogitsWarper", 0.05),
        ("eta", "EtaLogitsWarper", 3e-3),
        ("eta", "EtaLogitsWarper", 0.2),
        (top_h_filter, "TopHLogitsWarper", 0.4),
        (top_h_filter, "TopHLogitsWarper", 0.9),
    ],
)
def test_sampling_filters_match_transformers_warpers(ours, warper, value):
    """The same scores come out, -inf where transformers' warper drops a token, on peaked and flat rows with tokens
    already banned."""
    import transformers.generation.logits_process as processes

    scores = torch.randn(6, 80, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [[0.3], [1], [2], [4], [6], [9]]
    )
    scores[1, :5] = float("-inf")
    expected = getattr(processes, warper)(value)(None, scores)
    got = cutoff_filter(scores, value, eta=True) if ours == "eta" else ours(scores, value)
    assert torch.equal(got, expected)
    dropped = torch.isinf(got).sum(dim=1) - torch.isinf(scores).sum(dim=1)
    assert dropped.min() < dropped.max() and (torch.isfinite(got).sum(dim=1) >= 1).all()  # rows differ; none empty


def test_sampling_that_keeps_only_the_likeliest_token_is_greedy(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    base = dict(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=10)
    greedy = generate(model, pixel_values, GenerationSettings(**base)).sequences
    for only_the_likeliest in (dict(min_p=1.0), dict(epsilon_cutoff=0.999)):
        settings = GenerationSettings(**base, do_sample=True, seed=0, **only_the_likeliest)
        assert generate(model, pixel_values, settings).sequences == greedy
    loose = GenerationSettings(**base, do_sample=True, seed=0, min_p=0.01, typical_p=0.95, eta_cutoff=1e-4)
    assert generate(model, pixel_values, loose).sequences != greedy


@pytest.mark.parametrize(
    "case",
    [dict(num_beams=1), dict(num_beams=4, renormalize_logits=True), dict(num_beams=3, forced_bos_token_id="second")],
    ids=["greedy", "beam4-renormalize", "beam3-forced-bos"],
)
def test_suppressed_tokens_match_transformers_generate(tiny_tokenizer, case):
    """`suppress_tokens` (a token the model writes mid-caption) and `begin_suppress_tokens` (the first token of most
    captions, or the second after a forced first): the same tokens and beam scores as transformers' generate()."""
    model, _ = get_dummy_components(tiny_tokenizer, seed=1)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = dict(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12)
    case, begin = dict(case), 0
    if case.get("forced_bos_token_id"):
        begin, case["forced_bos_token_id"] = (
            1,
            generate(model, pixel_values, GenerationSettings(**base)).sequences[0][0][0],
        )
    # a token the case writes mid-caption, then the token it most often writes first once that one is suppressed
    free = [s for seqs in generate(model, pixel_values, GenerationSettings(**base, **case)).sequences for s in seqs]
    middles = [t for s in free for t in s[begin + 1 :]]
    case["suppress_tokens"] = [max(middles, key=middles.count)]
    partial = [s for seqs in generate(model, pixel_values, GenerationSettings(**base, **case)).sequences for s in seqs]
    firsts = [s[begin] for s in partial if len(s) > begin + 1]
    case["begin_suppress_tokens"] = [max(firsts, key=firsts.count)]
    result = generate(model, pixel_values, GenerationSettings(**base, **case))
    ours = [seq for seqs in result.sequences for seq in seqs]
    theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 12)
    assert ours == [trimmed(row, 1, eos) for row in theirs.sequences]
    assert partial != free and all(case["suppress_tokens"][0] not in seq for seq in partial + ours)
    assert ours != partial and all(seq[begin] not in case["begin_suppress_tokens"] for seq in ours if len(seq) > begin)
    if case["num_beams"] > 1:
        scores = torch.tensor([s for row in result.scores for s in row])
        torch.testing.assert_close(scores, theirs.sequences_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_sequence_bias_and_length_decay_match_transformers_generate(tiny_tokenizer, num_beams):
    """`sequence_bias` (a token the model writes pushed down, one it does not pulled up, and a pair that would follow
    it) and `exponential_decay_length_penalty` (the end token raised after three tokens): transformers' tokens."""
    model, _ = get_dummy_components(tiny_tokenizer, seed=0)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    base = dict(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12)
    free = [s for seqs in generate(model, pixel_values, GenerationSettings(**base)).sequences for s in seqs]
    written = [t for s in free for t in s]
    common, unseen = max(written, key=written.count), min(set(range(60)) - set(written))
    free = [
        s
        for seqs in generate(model, pixel_values, GenerationSettings(**base, num_beams=num_beams)).sequences
        for s in seqs
    ]
    cases = [
        dict(sequence_bias=[[[common], -4.0], [[unseen], 3.0], [[unseen, free[0][1]], 5.0], [[eos, unseen], 0.5]]),
        dict(exponential_decay_length_penalty=(3, 1.6)),
    ]
    cases = [dict(case, num_beams=num_beams) for case in cases]
    for case in cases:
        result = generate(model, pixel_values, GenerationSettings(**base, **case))
        ours = [seq for seqs in result.sequences for seq in seqs]
        theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 12)
        assert ours == [trimmed(row, 1, eos) for row in theirs.sequences] and ours != free
        if num_beams > 1:
            scores = torch.tensor([s for row in result.scores for s in row])
            torch.testing.assert_close(scores, theirs.sequences_scores, rtol=1e-4, atol=1e-4)
    assert max(map(len, ours)) < max(map(len, free))  # the decay ends captions sooner


@pytest.mark.parametrize(
    "case",
    [
        dict(num_beams=3, temperature=0.7),
        dict(num_beams=4, top_k=12, top_p=0.9, num_return_sequences=2),
        dict(num_beams=3, min_p=0.05, typical_p=0.95, length_penalty=0.6, early_stopping=True),
        dict(num_beams=2, temperature=1.3, eta_cutoff=1e-3, no_repeat_ngram_size=2),
        dict(num_beams=3, top_h=0.6, top_k=0),
    ],
    ids=["temperature", "top-k-top-p-return2", "min-p-typical-early", "eta-ngram", "top-h"],
)
def test_beam_sampling_draws_transformers_tokens_from_the_same_seed(tiny_tokenizer, case):
    """Beam sampling (do_sample with num_beams > 1): from the same torch seed, genvl's engine draws the candidates
    transformers' generate() draws, and reports the same beam scores; the draws differ from plain beam search."""
    model, _ = get_dummy_components(tiny_tokenizer, seed=1)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    base = dict(eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=12)
    case = dict(case, do_sample=True)
    plain = generate(model, pixel_values, GenerationSettings(**base, **{**case, "do_sample": False}))
    differ = 0
    for seed in range(4):
        torch.manual_seed(seed)  # no generator: both draw from torch's global one
        result = generate(model, pixel_values, GenerationSettings(**base, **case))
        torch.manual_seed(seed)
        theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 12)
        assert result.sequences[0] == [trimmed(row, 1, eos) for row in theirs.sequences]
        torch.testing.assert_close(torch.tensor(result.scores[0]), theirs.sequences_scores, rtol=1e-4, atol=1e-4)
        differ += result.sequences != plain.sequences
    assert differ > 0


def test_beam_sampling_is_reproducible_per_image(tiny_tokenizer):
    model, _ = get_dummy_components(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    settings = GenerationSettings(
        eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=10, num_beams=3, do_sample=True
    )

    def generators(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = generate(model, pixel_values, settings, generator=generators(5, 6, 7)).sequences
    alone = [
        generate(model, pixel_values[i : i + 1], settings, generator=generators(5 + i)).sequences[0] for i in range(3)
    ]
    assert batch == alone
    assert generate(model, pixel_values, settings, generator=generators(5, 6, 7)).sequences == batch
    seeded = GenerationSettings(**{**settings.__dict__, "seed": 11})
    assert generate(model, pixel_values, seeded).sequences == generate(model, pixel_values, seeded).sequences


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_beams=0), "num_beams"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(bad_words_ids=[3, 4]), "bad_words_ids must be a list of non-empty lists"),
        (dict(bad_words_ids=[[3], []]), "bad_words_ids must be a list of non-empty lists"),
        (dict(bad_words_ids=[[3, -1]]), "bad_words_ids must hold token ids"),
        (dict(bad_words_ids=[[True]]), "bad_words_ids must hold token ids"),
        (dict(bad_words_ids=[[1]] * 10_001), "at most 10000 sequences"),
        (dict(min_p=1.5), "min_p must be in"),
        (dict(top_h=0), "top_h must be in"),
        (dict(typical_p=0), "typical_p must be in"),
        (dict(eta_cutoff=1.0), "eta_cutoff must be in"),
        (dict(epsilon_cutoff=float("nan")), "epsilon_cutoff must be a finite number"),
        (dict(suppress_tokens=[3, -2]), "suppress_tokens must be a list of token ids"),
        (dict(begin_suppress_tokens=5), "begin_suppress_tokens must be a list of token ids"),
        (dict(sequence_bias=[[[3], float("nan")]]), "sequence_bias must give each sequence a finite bias"),
        (dict(sequence_bias=[[[3], float("inf")]]), "sequence_bias must give each sequence a finite bias"),
        (dict(sequence_bias=[[3, 2.0]]), "sequence_bias must be a list of non-empty lists of token ids"),
        (dict(sequence_bias=[[[3]]]), "sequence_bias must be a list of \\[token ids, bias\\] pairs"),
        (dict(exponential_decay_length_penalty=(2, 0)), "decay must be a finite number > 0"),
        (dict(stop_strings=["", "."]), "stop_strings must be a text or a list of non-empty texts"),
        (dict(stop_strings=[7]), "stop_strings must be a text or a list of non-empty texts"),
        (dict(stop_strings=["x" * 257]), "at most 64 texts of at most 256 characters"),
        (dict(exponential_decay_length_penalty=(-1, 1.5)), "must be \\[start, decay\\]"),
    ],
)
def test_bad_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(eos_token_id=0, decoder_start_token_id=0, pad_token_id=0, **bad)


def test_end_tokens_are_one_id_or_a_list_of_them():
    settings = dict(decoder_start_token_id=0, pad_token_id=0)
    assert GenerationSettings(eos_token_id=[5, 5], **settings).eos_token_id == 5  # a list of one is that id
    assert GenerationSettings(eos_token_id=[5, 2, 5], **settings).end_tokens == (5, 2)
    assert GenerationSettings(eos_token_id=5, forced_eos_token_id=[5, 2], **settings).forced_eos_token_id == (5, 2)
    for bad in ([], [5, True], [5, -1], "5", None):
        with pytest.raises(ValueError, match="eos_token_id must be a token id or a non-empty list of them"):
            GenerationSettings(eos_token_id=bad, **settings)
    with pytest.raises(ValueError, match="eos_token_id may list at most 64 end tokens, got 65"):
        GenerationSettings(eos_token_id=list(range(65)), **settings)


TINY_SWIN = CaptionerArchitecture(
    **{**TINY.to_dict(), "patch_size": 4, "encoder_hidden_size": 16, "encoder_type": "swin", "swin_depths": (1, 1)}
)


@pytest.mark.parametrize("case", CASES[:2] + CASES[3:4], ids=[str(c) for c in CASES[:2] + CASES[3:4]])
def test_swin_encoder_tokens_match_transformers_generate(tiny_tokenizer, case, tmp_path):
    model, processor = get_dummy_components(tiny_tokenizer, seed=3, arch=TINY_SWIN)
    assert model.config.encoder.model_type == "swin"
    eos = tiny_tokenizer.eos_token_id
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = GenerationSettings(
        eos_token_id=eos, decoder_start_token_id=eos, pad_token_id=eos, max_new_tokens=10, **case
    )
    got = [seq for seqs in generate(model, pixel_values, settings).sequences for seq in seqs]
    theirs = hf_sequences(model, pixel_values, torch.tensor([[eos]]), case, 10)
    assert got == [trimmed(row, 1, eos) for row in theirs.sequences]
    assert any(len(seq) > 1 for seq in got)
    # saved as a pipeline folder, it loads through genvl's checks as it was
    CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).save_pretrained(tmp_path)
    loaded = CaptionPipeline.from_pretrained(tmp_path)
    assert generate(loaded.model, pixel_values, settings).sequences == generate(model, pixel_values, settings).sequences


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"num_beams": 2.0}, "num_beams must be an integer, got 2.0"),
        ({"max_new_tokens": 5.5}, "max_new_tokens must be an integer, got 5.5"),
        ({"top_k": 2.5}, "top_k must be an integer, got 2.5"),
        ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size must be an integer, got 2.5"),
        ({"num_return_sequences": True}, "num_return_sequences must be an integer, got True"),
        ({"do_sample": True, "seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"do_sample": "yes"}, "do_sample must be true or false, got 'yes'"),
    ],
)
def test_counts_and_switches_of_another_type_are_refused(setting, message):
    # each failed deep inside torch, or ("yes") was read as true
    with pytest.raises(ValueError, match=re.escape(message)):
        GenerationSettings(eos_token_id=2, decoder_start_token_id=1, pad_token_id=2, **setting)
