"""CaptionPipeline: images in, captions out, decoded by genvl's own engine."""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..attention import AttentionBackendMixin
from ..cache import EmbeddingCacheMixin
from ..generation import GenerationSettings, generate
from ..generation.decoder import encode_images
from ..io.components import (
    as_torch_dtype,
    check_tokenizer,
    load_image_processor,
    load_tokenizer,
    local_folder,
    pipeline_from_folder,
)
from ..io.folders import check_model_folder, first_line, load_transformers_model, read_json
from ..io.images import check_pad_fill, preprocess_each
from ..io.outputs import weights_readable_as_umask
from ..lora import LoraMixin
from ..models import grid_encoder  # noqa: F401 (registers the grid encoder, so that folders holding one load)
from ..models.clip import warn_if_truncated
from .arguments import image_list, text_list


@dataclass
class CaptionOutput(BaseOutput):
    """`captions[i]` lists the captions of image i, best first; `scores[i]` their log-probability scores. With
    `output_attentions=True`, `attentions[i][j]` lists the words of caption j of image i, each with its
    cross-attention map over the image (`word_attention`)."""

    captions: list[list[str]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    attentions: list[list[list[tuple[str, torch.Tensor]]]] | None = None
    questions: list[str] | None = None  # with question=: the question each image was asked (`asked_questions`)


def patch_grid(tokens: int) -> tuple[int, int]:
    """(leading tokens, grid side) of an encoder's `tokens` output tokens: a square grid of patches after up to two
    leading tokens (none for Swin, ViT's class token, DeiT's class and distillation tokens)."""
    for leading in (0, 1, 2):
        side = math.isqrt(tokens - leading)
        if side * side == tokens - leading:
            return leading, side
    raise ValueError(f"the encoder's {tokens} tokens do not lay out as a square grid of patches")


# words an attention figure leaves out: they name nothing in the image
FUNCTION_WORDS = frozenset("a an the of to is are there and at in on from by with beside row group".split())


def attention_figure(image, words, panel: int = 128, padded: bool = False):
    """A PIL image of `image` followed by one panel per content word of `words` (`word_attention`'s pairs, function
    words left out): the image in grey with the word's map over it in red, the word written beneath. With `padded`
    (a pipeline that pads pictures to a square, `pad_to_square`), each map covers the padded square, so the panels
    keep the picture's own shape and show the part of the map that lies over the picture."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..io.images import picture_mask

    shown = [(word, heat) for word, heat in words if word.strip(",.").lower() not in FUNCTION_WORDS]
    lines = torch.ones(panel), torch.ones(panel)  # the rows and columns the picture covers in the square
    if padded:  # each axis on its own, the other as long as the square's side
        side = max(image.size)
        lines = (
            picture_mask(side, image.height, (panel, panel))[:, 0],
            picture_mask(image.width, side, (panel, panel))[0],
        )
    # a picture thinner than a panel pixel (1000x3) covers no pixel centre across: it keeps the middle line
    rows, columns = (line.nonzero()[:, 0] if line.any() else torch.tensor([panel // 2]) for line in lines)
    box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1)
    height, width = len(rows), len(columns)
    base = image.convert("RGB").resize((width, height), Image.BICUBIC)
    grey = np.asarray(base.convert("L").convert("RGB"), dtype=np.float32)
    figure = Image.new("RGB", (width * (1 + len(shown)), height + 16), "white")
    figure.paste(base, (0, 0))
    draw = ImageDraw.Draw(figure)
    for k, (word, heat) in enumerate(shown, start=1):
        heat = torch.nn.functional.interpolate(heat[None, None].float(), size=(panel, panel), mode="bilinear")[0, 0]
        heat = heat[box]
        heat = (heat / heat.max().clamp_min(1e-12)).numpy()[..., None]
        red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
        blended = 0.5 * grey * (1 - heat) + heat * (0.4 * grey + 0.6 * red)
        figure.paste(Image.fromarray(blended.clip(0, 255).astype(np.uint8)), (width * k, 0))
        draw.text((width * k + 4, height + 2), word, fill="black")
    return figure


@torch.no_grad()
def word_attention(model, tokenizer, states: torch.Tensor, token_ids: list[int]) -> list[tuple[str, torch.Tensor]]:
    """The words of a caption (`token_ids`, without start or EOS) and each word's cross-attention map (side, side)
    over the patch grid of one image's encoder `states` (N, C): the attention of the decoder queries that chose the
    word's tokens, averaged over heads, layers and the word's tokens, the leading tokens left out and the rest
    renormalised. One teacher-forced pass of the decoder with eager attention (its backend is restored after)."""
    from ..attention import attention_backend, set_attention_backend

    if not token_ids:
        return []
    inputs = torch.tensor([[model.config.decoder_start_token_id, *token_ids[:-1]]], device=states.device)
    backend = attention_backend(model.decoder)
    set_attention_backend(model.decoder, "eager")
    try:
        out = model.decoder(input_ids=inputs, encoder_hidden_states=states[None], output_attentions=True)
    finally:
        set_attention_backend(model.decoder, backend)
    maps = torch.stack([layer[0].float().mean(0) for layer in out.cross_attentions]).mean(0)  # (T, N)
    leading, side = patch_grid(maps.shape[1])
    maps = maps[:, leading:]
    maps = (maps / maps.sum(1, keepdim=True).clamp_min(1e-12)).view(-1, side, side).cpu()
    rows, pending = [], []  # each word's token positions; space tokens waiting for the word they begin
    for k in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)
        if not text or text[-1].isspace():
            pending.append(k)
            continue
        if len(text.split()) > len(rows):
            rows.append([])
        rows[-1] += pending + [k]
        pending = []
    spoken = tokenizer.decode(token_ids, skip_special_tokens=True).split()
    return [(word, maps[group].mean(0)) for word, group in zip(spoken, rows)]


def question_prefix(question: str) -> str:
    """The text a question-answering captioner reads before its answer: the question in lower case with its
    spaces collapsed, ending in one question mark, so that every phrasing ends where the answer starts."""
    if not isinstance(question, str):
        raise TypeError(f"a question must be a string, got {type(question).__name__}")
    text = " ".join(question.lower().split()).rstrip(" ?.!")
    if not text:
        raise ValueError("the question is empty")
    return f"{text}?"


# the question sets a pipeline's `question_world` may say its model learnt to answer: "genvl", those of
# `genvl.world.questions` (both worlds ask them)
QUESTION_WORLDS = ("genvl",)


class CaptionPipeline(LoraMixin, AttentionBackendMixin, EmbeddingCacheMixin, DiffusionPipeline):
    """Caption images with a VisionEncoderDecoder model: genvl's ViT-GPT2 captioners and the public layouts
    (ViT, DeiT, BEiT or Swin encoders; GPT-2, BERT- or RoBERTa-style, TrOCR or MBart decoders).

    Loads a genvl pipeline folder (model_index.json with model/, tokenizer/, image_processor/) or a flat
    Hugging Face VisionEncoderDecoder folder (config.json, weights, tokenizer files, preprocessor_config.json),
    the layout of public ViT-GPT2 captioning checkpoints. The model's `generation_config` gives the decoding
    defaults; keyword arguments of `__call__` override them. With `set_embedding_cache`, image encodings are
    kept in a shared `EmbeddingCache`. LoRA adapters (PEFT format) load with `load_lora_weights`.

    A model trained to answer questions (`genvl.recipes.train_vqa`) is a captioner whose decoder reads the
    question first: `pipe(images, question="how many apples?")` decodes the answer after it, with the same
    engine and settings. One pipeline rather than an answering one beside it, because nothing else differs:
    the question is a prefix the answer continues, and the answer is the caption without it.

    The setting `pad_to_square` (in model_index.json; genvl's own captioners set it) pads each image to a square
    with its border colour before the image processor resizes it (`genvl.io.images.pad_to_square`), so that a wide
    or tall image's objects keep their shapes; without it the processor squashes the image, as transformers does.
    `pad_fill` picks the padding's colour (`genvl.io.images.pad_colour`): "border" blends it with the picture,
    "contrast" sets it apart, so that a model trained on such padding (`--augment letterbox`) can tell the
    picture's own edges, and thirds, from the square's.
    The setting `question_world` (in model_index.json) says the model learnt to answer the questions of genvl's
    world (`genvl.world.questions`): a question typed another way is then asked in the phrasing training used
    where `genvl.world.typed_questions` can read it (`asked_questions`).

    An optional `matcher` (`genvl.models.matching.MatchingHead`) scores whether a caption describes an image
    (`match`), and with `rerank=K` picks the best of K decoded captions.
    """

    lora_components = ("model",)
    _optional_components = ["matcher"]
    config_values = ("question_world", "pad_to_square", "pad_fill")  # settings in model_index.json, not components

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        matcher=None,
        question_world: str | None = None,
        pad_to_square: bool = False,
        pad_fill: str = "border",
    ):
        super().__init__()
        if question_world not in (None, *QUESTION_WORLDS):
            raise ValueError(
                f"question_world must be null or one of {', '.join(QUESTION_WORLDS)}, got {question_world!r}"
            )
        if not isinstance(pad_to_square, bool):
            raise ValueError(f"pad_to_square must be true or false, got {pad_to_square!r}")
        check_pad_fill(pad_fill, "pad_fill")
        self.register_modules(model=model, tokenizer=tokenizer, image_processor=image_processor, matcher=matcher)
        self.register_to_config(question_world=question_world, pad_to_square=pad_to_square, pad_fill=pad_fill)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=None, torch_dtype=None, local_files_only=True):
        """Load a genvl pipeline folder or a flat VisionEncoderDecoder folder (a local path, or a hub id already
        in the Hugging Face cache). Components are resolved from an allow-list of classes (see
        `genvl.io.components`): nothing the folder names is imported."""
        dtype = as_torch_dtype(dtype or torch_dtype)
        path = local_folder(pretrained_model_name_or_path, local_files_only)
        if not (path / "model_index.json").exists():
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"{path}: not a captioner folder (no model_index.json or config.json)")
            pipeline = cls._from_flat_folder(path, dtype)
        else:
            pipeline = pipeline_from_folder(cls, path, dtype)
            check_tokenizer(path / "tokenizer", pipeline.tokenizer, pipeline.model.decoder.config.vocab_size)
        try:  # a generation config the engine cannot decode with is refused here, not at the first call
            pipeline.settings()
        except ValueError as err:
            raise ValueError(f"{path}: its generation config is not usable ({first_line(err)})") from None
        return pipeline

    @classmethod
    def _from_flat_folder(cls, path: Path, dtype=None):
        from transformers import VisionEncoderDecoderModel

        check_model_folder(path)
        config = read_json(path / "config.json")
        kind = config.get("model_type") or config.get("_class_name") if isinstance(config, dict) else None
        if kind != "vision-encoder-decoder":  # a judge's, a CLIP's, a UNet's folder
            raise ValueError(f"{path}: not a captioner folder (its config.json is of a {kind or 'different'} model)")
        model = load_transformers_model(VisionEncoderDecoderModel, path, dtype or torch.float32)
        tokenizer = load_tokenizer(path, model.decoder.config.vocab_size)
        return cls(model=model, tokenizer=tokenizer, image_processor=load_image_processor(path))

    def save_pretrained(self, save_directory, **kwargs):
        """Save in genvl's layout; weights as safetensors, the tokenizer also as vocab.json + merges.txt."""
        from ..models.captioner import save_gpt2_vocab_files

        self.check_no_adapters()
        kwargs.setdefault("safe_serialization", True)
        with weights_readable_as_umask(save_directory):
            super().save_pretrained(save_directory, **kwargs)
        save_gpt2_vocab_files(self.tokenizer, Path(save_directory) / "tokenizer")

    def preprocess(self, images) -> torch.Tensor:
        """PIL images or paths -> pixel values (B, 3, H, W), or (B, 4, H, W) with the picture mask for an encoder
        with picture positions (`genvl.models.grid_encoder`), on the model's device and dtype. Each image is loaded
        and preprocessed on its own, so that no more than one is held at full size (a batch of large photos would
        otherwise take gigabytes)."""
        square, fill = self.config.get("pad_to_square", False), self.config.get("pad_fill", "border")
        mask = getattr(self.model.encoder.config, "picture_positions", False)  # see genvl.models.grid_encoder
        pixel_values = preprocess_each(self.image_processor, images, square, fill, mask)
        return pixel_values.to(device=self.model.device, dtype=self.model.dtype)

    def _encode_rows(self, rows: list) -> torch.Tensor:
        """Encoder states (B, N, C) of preprocessed images, one (C, H, W) tensor each."""
        return encode_images(self.model, torch.stack(rows))

    def settings(self, **overrides) -> GenerationSettings:
        """Decoding settings: the model's generation_config, then the given overrides, checked against the decoder's
        vocabulary."""
        settings = GenerationSettings.from_generation_config(self.model.generation_config, self.tokenizer, **overrides)
        settings.check_vocabulary(self.model.decoder.config.vocab_size)
        return settings

    def quantize(self, mode: str = "int8"):
        """Quantize the decoder's linear layers (GPT-2's `Conv1D` included) to int8 for CPU inference
        (`genvl.quantize`); the encoder, which runs once per image, stays as it is."""
        from ..quantize import quantize_linear_layers

        quantize_linear_layers(self.model.decoder, mode)
        return self

    def positions_left(self, prefix: str | None) -> int | None:
        """How many new tokens fit after the start token and `prefix` in the decoder's positions (negative when
        the prefix alone overflows them); None for a decoder without a limit."""
        from ..generation.decoder import decoder_positions

        positions = decoder_positions(self.model.config.decoder)
        return None if positions is None else positions - 1 - len(self.prefix_ids(prefix))

    def prefix_ids(self, prefix: str | None) -> list[int]:
        """The token ids of `prefix` alone, without the special tokens a tokenizer may wrap text in (BERT's
        [CLS] and [SEP]): the caption continues it."""
        return self.tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []

    @torch.no_grad()
    def __call__(
        self,
        images,
        prefix: str | None = None,
        question=None,
        generator=None,
        return_dict: bool = True,
        output_attentions: bool = False,
        rerank: int = 1,
        rewrite_questions: bool = True,
        **decoding,
    ):
        """Caption `images` (a PIL image, a path, or a list of them), or answer a question about each.

        Args:
            prefix: text every caption must continue, e.g. "a photo of".
            question: a question about every image, or a list of one per image; the captions are then the
                answers (the question not included). Images asked the same question are decoded together.
            rewrite_questions: with the pipeline's `question_world` set, ask each question in the phrasing
                training used where the world's reader reads it (`asked_questions`); False asks it as typed.
            output_attentions: also return each caption's words with their cross-attention maps over the image
                (`CaptionOutput.attentions`, see `word_attention`): one more decoder pass per caption, after
                decoding, which is untouched.
            rerank: K > 1 decodes K captions per image (beam search over at least K beams, or K samples with
                `do_sample=True`) and keeps the one the `matcher` scores highest; `scores` then hold its matching
                probability.
            generator: a `torch.Generator` for sampling (or pass `seed=` for a fresh one).
            decoding: `num_beams`, `do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty`,
                `no_repeat_ngram_size`, `length_penalty`, `early_stopping`, `num_return_sequences`,
                `max_new_tokens`, `min_new_tokens`, `seed`.
        """
        images = image_list(images)
        if question is not None:
            if output_attentions or rerank != 1:
                raise ValueError("output_attentions and rerank are for captions; they do not apply with question=")
            return self._answer(list(images), question, prefix, generator, return_dict, rewrite_questions, decoding)
        if not isinstance(rerank, int) or rerank < 1:
            raise ValueError(f"rerank must be an integer >= 1, got {rerank!r}")
        if rerank > 1:
            self._check_matcher()
            if output_attentions:
                raise ValueError("output_attentions does not apply with rerank")
            decoding = self.rerank_decoding(decoding, rerank)
        settings = self.settings(**decoding)
        # 1. encode images, preprocessed one by one (through the embedding cache when one is set)
        pixel_values = self.preprocess(images)
        states = self.cached_encode(self.model, list(pixel_values), self._encode_rows, self.image_processor.size)
        # 2. decode
        prefix_ids = self.prefix_ids(prefix)
        result = generate(
            self.model, None, settings, prefix_ids, generator, encoder_states=states, tokenizer=self.tokenizer
        )
        # 3. detokenise: the prefix is part of the caption
        captions = [
            [self.tokenizer.decode(prefix_ids + seq, skip_special_tokens=True).strip() for seq in seqs]
            for seqs in result.sequences
        ]
        scores = result.scores
        if rerank > 1:
            captions, scores = self._keep_best(states, captions)
        attentions = None
        if output_attentions:
            attentions = [
                [word_attention(self.model, self.tokenizer, states[i], prefix_ids + seq) for seq in seqs]
                for i, seqs in enumerate(result.sequences)
            ]
        if not return_dict:
            return (captions, scores, attentions) if output_attentions else (captions, scores)
        return CaptionOutput(captions=captions, scores=scores, attentions=attentions)

    def rerank_decoding(self, decoding: dict, rerank: int) -> dict:
        """`decoding` set to give `rerank` captions per image: as many samples when it samples, else beam search
        over at least that many beams."""
        if decoding.get("num_return_sequences", 1) != 1:
            raise ValueError("rerank keeps one caption per image: do not ask for num_return_sequences")
        decoding = {**decoding, "num_return_sequences": rerank}
        if not self.settings(**{**decoding, "num_return_sequences": 1}).do_sample:
            decoding["num_beams"] = max(rerank, decoding.get("num_beams") or self.settings().num_beams)
        return decoding

    def _check_matcher(self):
        if self.matcher is None:
            raise ValueError("this captioner has no matcher (an image-text matching head): see genvl train matching")

    def _match_states(self, states: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Matching probabilities of caption i with image states `states[i]`."""
        from ..models.matching import caption_features

        return self.matcher(*caption_features(self.model, self.tokenizer, states, captions)).sigmoid().cpu()

    def _keep_best(self, states: torch.Tensor, candidates: list[list[str]]):
        """([[best caption]], [[its matching probability]]) of each image's candidate captions."""
        rows = torch.tensor([i for i, found in enumerate(candidates) for _ in found])
        probabilities = self._match_states(states[rows.to(states.device)], [c for found in candidates for c in found])
        best, scores, start = [], [], 0
        for found in candidates:
            chunk = probabilities[start : start + len(found)]
            start += len(found)
            best.append([found[int(chunk.argmax())]])
            scores.append([float(chunk.max())])
        return best, scores

    @torch.no_grad()
    def match(self, images, captions: list[str]) -> torch.Tensor:
        """(len(captions),) probabilities that caption i describes image i, by the `matcher`; one image is
        matched with every caption (a caption alone is one)."""
        self._check_matcher()
        images, captions = image_list(images), text_list(captions, "captions")
        if len(images) not in (1, len(captions)):
            raise ValueError(f"{len(images)} images for {len(captions)} captions: give one, or one per caption")
        # the matcher reads a caption's first tokens only, as many as the decoder has positions (one is its start)
        warn_if_truncated(self.tokenizer, captions, self.model.config.decoder.max_position_embeddings - 1)
        pixel_values = self.preprocess(images)
        states = self.cached_encode(self.model, list(pixel_values), self._encode_rows, self.image_processor.size)
        return self._match_states(
            states.expand(len(captions), -1, -1).contiguous() if len(images) == 1 else states, captions
        )

    def asked_questions(self, questions: list[str], rewrite: bool = True) -> list[str]:
        """The text each question is asked as (`question_prefix`'s form). With `rewrite` and the pipeline's
        `question_world` set, a question `genvl.world.typed_questions.asked_question` reads ("What's the
        colour of the apple") is asked in the phrasing training asked it ("what colour is the apple?"); the
        others, and all without `question_world`, as typed."""
        from ..world.typed_questions import asked_question

        rewrite = rewrite and self.config.get("question_world") is not None
        return [question_prefix((asked_question(q) if rewrite else None) or q) for q in questions]

    def _answer(self, images: list, question, prefix, generator, return_dict: bool, rewrite: bool, decoding: dict):
        """The answers of `images` to `question` (one, or one per image), each question's images in one call."""
        if prefix is not None:
            raise ValueError("pass a prefix or a question, not both: the question is the answer's prefix")
        questions = text_list(question, "question")
        questions = questions * len(images) if isinstance(question, str) else questions
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions for {len(images)} images: give one per image")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("with questions, pass one torch.Generator (or seed=) for all the images")
        prefixes = self.asked_questions(questions, rewrite)
        captions, scores = [None] * len(images), [None] * len(images)
        for asked in dict.fromkeys(prefixes):
            rows = [i for i, text in enumerate(prefixes) if text == asked]
            prefix_ids = self.prefix_ids(asked)
            answers, row_scores = self(
                [images[i] for i in rows], prefix=asked, generator=generator, return_dict=False, **decoding
            )
            cut = len(self.tokenizer.decode(prefix_ids, skip_special_tokens=True).strip())
            for i, found, score in zip(rows, answers, row_scores):
                captions[i], scores[i] = [text[cut:].strip() for text in found], score
        if not return_dict:
            return captions, scores
        return CaptionOutput(captions=captions, scores=scores, questions=prefixes)
