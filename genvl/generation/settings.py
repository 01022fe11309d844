"""Decoding settings: one validated dataclass, filled from a model's generation_config and user overrides."""

import math
import numbers
from dataclasses import dataclass, fields
from functools import cache

# beams, or sequences returned, per image: each is a row of the decoder's batch and cache
MAX_SEQUENCES = 256
# the most token sequences `bad_words_ids` may ban, and the longest: every step checks them all
MAX_BAD_WORDS = 10_000
MAX_BAD_WORD_TOKENS = 64
# the most end tokens a config may list: beam search keeps K candidates more per end token at every step
MAX_END_TOKENS = 64
# the most stop strings, and the longest: each step reads back as many tokens as the longest has characters
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_LENGTH = 256
# generation_config options that do not change which tokens generate() writes, or that genvl reads as something
# else (bos_token_id, max_length, min_length): output and cache choices, compilation, and assisted or speculative
# decoding (the same tokens, faster; it needs an assistant model a config cannot hold). `max_time` and
# `remove_invalid_values` only act on a slow or broken model: genvl decodes to the end, and refuses a score that is not
# finite. Every other option of transformers' `GenerationConfig` is implemented (a field of `GenerationSettings`) or
# refused when set; keys `GenerationConfig` does not define are ignored, as generate() ignores them.
NOT_DECODING = {
    "_from_model_config", "transformers_version", "bos_token_id", "max_length", "min_length",
    "output_attentions", "output_hidden_states", "output_logits", "output_scores", "return_dict_in_generate",
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "prefill_chunk_size",
    "continuous_batching_config", "compile_config", "disable_compile", "low_memory", "max_time",
    "remove_invalid_values", "is_assistant", "assistant_confidence_threshold", "assistant_early_exit",
    "assistant_ensemble_weight", "assistant_lookbehind", "target_lookbehind", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "prompt_lookup_num_tokens", "max_matching_ngram_size", "speculation_type",
    "use_mtp",
}  # fmt: skip
# the settings that only sampling reads: given alone as an override, they switch sampling on
SAMPLING = ("temperature", "top_h", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
# options genvl's engine does not implement whose "off" is a number (None, False and empty values are off for every
# option): configs written by older transformers hold these
OFF_VALUES = {
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "guidance_scale": 1.0,
}


@dataclass
class GenerationSettings:
    """How to decode. Names and meanings follow transformers' `GenerationConfig`."""

    eos_token_id: int | tuple  # one end token, or several (any of them ends a caption)
    decoder_start_token_id: int
    pad_token_id: int
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50  # transformers' default where a config leaves it unset; 0 turns it off
    top_p: float = 1.0
    min_p: float | None = None  # keep tokens at least this fraction as likely as the likeliest
    top_h: float | None = None  # keep the likeliest tokens up to this fraction of the entropy
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple | None = None  # token sequences never written (lists of ids, as in transformers)
    sequence_bias: tuple | None = None  # ((token sequence, bias), ...): added to a sequence's last token's score
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    forced_bos_token_id: int | None = None  # the first new token, when the prompt is the start token alone
    forced_eos_token_id: int | tuple | None = None  # the last token there is room for (the likeliest of several)
    suppress_tokens: tuple | None = None  # tokens never written
    begin_suppress_tokens: tuple | None = None  # tokens not written first
    renormalize_logits: bool = False  # log-softmax the scores again after the penalties
    # (start, decay): from `start` tokens on, end tokens' scores grow by decay ** (tokens past start), as transformers'
    exponential_decay_length_penalty: tuple | None = None
    stop_strings: tuple | None = None  # texts that end a caption where its last token writes them (the tokenizer's)
    seed: int | None = None

    def __post_init__(self):
        self.eos_token_id = _end_tokens(self.eos_token_id)
        if self.forced_eos_token_id is not None:
            self.forced_eos_token_id = _end_tokens(self.forced_eos_token_id, "forced_eos_token_id")
        for name in ("decoder_start_token_id", "pad_token_id"):
            if not _is_token(getattr(self, name)):
                raise ValueError(f"{name} must be a token id, got {getattr(self, name)!r}")
        self.suppress_tokens = _token_ids(self.suppress_tokens, "suppress_tokens")
        self.begin_suppress_tokens = _token_ids(self.begin_suppress_tokens, "begin_suppress_tokens")
        counts = ("max_new_tokens", "min_new_tokens", "num_beams", "top_k", "no_repeat_ngram_size")
        for name in (*counts, "num_return_sequences", "seed"):
            value = getattr(self, name)  # 2.0 beams or 5.5 tokens failed deep inside torch
            if not (value is None and name == "seed") and not _is_count(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("do_sample", "renormalize_logits"):
            if not isinstance(getattr(self, name), bool):  # "yes" was read as true
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in (
            "temperature",
            "top_p",
            "typical_p",
            "epsilon_cutoff",
            "eta_cutoff",
            "repetition_penalty",
            "length_penalty",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.min_new_tokens >= 0, "min_new_tokens must be >= 0"),
            (self.min_new_tokens <= self.max_new_tokens, "min_new_tokens must be <= max_new_tokens"),
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.num_beams <= MAX_SEQUENCES, f"num_beams must be <= {MAX_SEQUENCES}"),
            (self.num_return_sequences <= MAX_SEQUENCES, f"num_return_sequences must be <= {MAX_SEQUENCES}"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.top_h is None or 0 < self.top_h <= 1, "top_h must be in (0, 1]"),
            (0 < self.typical_p <= 1, "typical_p must be in (0, 1]"),
            (0 <= self.epsilon_cutoff < 1, "epsilon_cutoff must be in [0, 1)"),
            (0 <= self.eta_cutoff < 1, "eta_cutoff must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
            (self.num_return_sequences >= 1, "num_return_sequences must be >= 1"),
            (self.early_stopping in (True, False, "never"), "early_stopping must be True, False or 'never'"),
        ]
        for ok, message in checks:
            if not ok:
                name = message.split()[0]
                raise ValueError(f"{message}, got {getattr(self, name)!r}")
        self.bad_words_ids = _token_sequences(self.bad_words_ids)
        self.sequence_bias = _sequence_biases(self.sequence_bias)
        self.exponential_decay_length_penalty = _length_decay(self.exponential_decay_length_penalty)
        self.stop_strings = _stop_strings(self.stop_strings)
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs num_beams >= it, or do_sample=True"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})"
            )

    def check_vocabulary(self, size: int) -> None:
        """A one-line error naming the setting, when a token id these settings hold is not below `size` (the
        decoder's vocabulary): such an id would index past the decoder's embedding or never be written."""
        named = {
            "eos_token_id": self.end_tokens,
            "decoder_start_token_id": (self.decoder_start_token_id,),
            "pad_token_id": (self.pad_token_id,),
            "forced_bos_token_id": () if self.forced_bos_token_id is None else (self.forced_bos_token_id,),
            "forced_eos_token_id": () if self.forced_eos_token_id is None else _as_tuple(self.forced_eos_token_id),
            "bad_words_ids": [t for sequence in self.bad_words_ids or () for t in sequence],
            "sequence_bias": [t for sequence, _ in self.sequence_bias or () for t in sequence],
            "suppress_tokens": self.suppress_tokens or (),
            "begin_suppress_tokens": self.begin_suppress_tokens or (),
        }
        for name, ids in named.items():
            largest = max(ids, default=-1)
            if largest >= size:
                raise ValueError(f"{name} holds token id {largest}, beyond the vocabulary ({size} tokens)")

    @property
    def end_tokens(self) -> tuple:
        """Every token that ends a caption, the first one first."""
        return _as_tuple(self.eos_token_id)

    @property
    def reads_history(self) -> bool:
        """Whether decoding must read the tokens written so far (penalties and bans do)."""
        return (
            self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size > 0
            or bool(self.bad_words_ids)
            or bool(self.sequence_bias)
        )

    @classmethod
    def from_generation_config(cls, generation_config, tokenizer, **overrides) -> "GenerationSettings":
        """Defaults from a transformers `GenerationConfig` (as saved in generation_config.json), then overrides.

        A sampling parameter given without `do_sample` switches sampling on, as a user would expect of
        `temperature=0.7`. `max_length` in an old config counts the start token, as in transformers.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k, v in overrides.items() if k not in known)
        if unknown:
            raise TypeError(f"unknown decoding arguments {unknown}; expected some of {sorted(known)}")
        values = {}
        eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
        eos = eos if eos not in (None, [], ()) else tokenizer.eos_token_id
        start = getattr(generation_config, "decoder_start_token_id", None) if generation_config else None
        start = _first(start) if start is not None else _first(getattr(generation_config, "bos_token_id", None))
        pad = getattr(generation_config, "pad_token_id", None) if generation_config else None
        values.update(
            eos_token_id=eos,
            decoder_start_token_id=start if start is not None else _first(eos),
            pad_token_id=pad if pad is not None else _first(eos),
        )
        if generation_config is not None:
            _refuse_unimplemented(generation_config, known)
            for name in known - {"eos_token_id", "decoder_start_token_id", "pad_token_id", "seed"}:
                value = getattr(generation_config, name, None)
                if value is not None:
                    values[name] = _first(value) if name == "forced_bos_token_id" else value
            if getattr(generation_config, "max_new_tokens", None) is None and generation_config.max_length:
                values["max_new_tokens"] = max(1, generation_config.max_length - 1)
            if getattr(generation_config, "min_length", 0) and "min_new_tokens" not in values:
                values["min_new_tokens"] = max(0, generation_config.min_length - 1)
        given = {k: v for k, v in overrides.items() if v is not None}
        if "do_sample" not in given and any(k in given for k in SAMPLING):
            given["do_sample"] = True
        values.update(given)
        return cls(**values)


def _refuse_unimplemented(generation_config, implemented: set) -> None:
    """A one-line error when `generation_config` turns on an option of transformers' `GenerationConfig` that genvl's
    engine does not implement (see `NOT_DECODING`), rather than decoding other tokens than generate() would."""
    for name in sorted(_generate_options() - implemented - NOT_DECODING):
        value = getattr(generation_config, name, None)
        off = value is None or (isinstance(value, (bool, list, tuple, dict)) and not value)
        if not off and not (name in OFF_VALUES and value == OFF_VALUES[name]):
            raise ValueError(f"generation_config sets {name}={value!r:.200}, which genvl's engine does not implement")


@cache
def _generate_options() -> frozenset:
    """The names of transformers' `GenerationConfig` options, read once."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict())


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _end_tokens(value, name: str = "eos_token_id"):
    """`eos_token_id` (or `forced_eos_token_id`) as one token id, or a tuple of several, or a one-line error naming
    what is wrong."""
    if isinstance(value, (list, tuple)) and value and all(_is_token(t) for t in value):
        unique = tuple(dict.fromkeys(value))
        if len(unique) > MAX_END_TOKENS:
            raise ValueError(f"{name} may list at most {MAX_END_TOKENS} end tokens, got {len(unique)}")
        return unique[0] if len(unique) == 1 else unique
    if not _is_token(value):
        raise ValueError(f"{name} must be a token id or a non-empty list of them, got {value!r:.200}")
    return value


def _token_ids(value, name: str) -> tuple | None:
    """A list of token ids as a tuple (None when empty), or a one-line error naming what is wrong."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if not isinstance(value, (list, tuple)) or not all(_is_token(t) for t in value):
        raise ValueError(f"{name} must be a list of token ids (integers >= 0), got {value!r:.200}")
    if len(value) > MAX_BAD_WORDS:
        raise ValueError(f"{name} may hold at most {MAX_BAD_WORDS} token ids")
    return tuple(value)


def _token_sequences(value, name: str = "bad_words_ids") -> tuple | None:
    """`bad_words_ids` as a tuple of token-id tuples (None when empty), or a one-line error naming what is wrong."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, (list, tuple)) and s for s in value):
        raise ValueError(f"{name} must be a list of non-empty lists of token ids, got {value!r:.200}")
    if len(value) > MAX_BAD_WORDS or any(len(s) > MAX_BAD_WORD_TOKENS for s in value):
        raise ValueError(f"{name} may hold at most {MAX_BAD_WORDS} sequences of at most {MAX_BAD_WORD_TOKENS} tokens")
    if not all(_is_token(t) for s in value for t in s):
        raise ValueError(f"{name} must hold token ids (integers >= 0), got {value!r:.200}")
    return tuple(tuple(s) for s in value)


def _stop_strings(value) -> tuple | None:
    """`stop_strings` (a text or a list of them) as a tuple (None when empty), or a one-line error naming what is
    wrong."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"stop_strings must be a text or a list of non-empty texts, got {value!r:.200}")
    if len(texts) > MAX_STOP_STRINGS or max(map(len, texts)) > MAX_STOP_STRING_LENGTH:
        raise ValueError(
            f"stop_strings may hold at most {MAX_STOP_STRINGS} texts of at most {MAX_STOP_STRING_LENGTH} characters"
        )
    return tuple(texts)


def _length_decay(value) -> tuple | None:
    """`exponential_decay_length_penalty` as (start, decay), or a one-line error naming what is wrong."""
    if value is None:
        return None
    start, decay = value if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None)
    if not _is_token(start) or isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise ValueError(f"exponential_decay_length_penalty must be [start, decay], got {value!r:.200}")
    if not (math.isfinite(decay) and decay > 0):
        raise ValueError(f"exponential_decay_length_penalty's decay must be a finite number > 0, got {decay!r}")
    return start, float(decay)


def _sequence_biases(value) -> tuple | None:
    """`sequence_bias` ([[token ids], bias] pairs, or a dict of token-id tuples to biases) as ((sequence, bias), ...)
    with one bias per sequence, the last given (None when empty), or a one-line error naming what is wrong."""
    if value is None or (isinstance(value, (list, tuple, dict)) and not value):
        return None
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ValueError(f"sequence_bias must be a list of [token ids, bias] pairs, got {value!r:.200}")
    sequences = _token_sequences([sequence for sequence, _ in pairs], "sequence_bias")
    biases = [bias for _, bias in pairs]
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and (math.isfinite(b) or b < 0) for b in biases):
        raise ValueError(f"sequence_bias must give each sequence a finite bias (or -inf), got {value!r:.200}")
    return tuple(dict(zip(sequences, map(float, biases))).items())


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _first(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value
