"""CaptionPipeline: images in, captions out, decoded by genvl's own engine."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..attention import AttentionBackendMixin
from ..cache import EmbeddingCacheMixin
from ..generation import GenerationSettings, generate
from ..generation.decoder import encode_images
from ..io.components import check_tokenizer, load_image_processor, load_tokenizer, local_folder, pipeline_from_folder
from ..io.folders import check_model_folder, load_transformers_model
from ..io.images import preprocess_each
from ..lora import LoraMixin


@dataclass
class CaptionOutput(BaseOutput):
    """`captions[i]` lists the captions of image i, best first; `scores[i]` their log-probability scores."""

    captions: list[list[str]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)


def question_prefix(question: str) -> str:
    """The text a question-answering captioner reads before its answer: the question in lower case with its
    spaces collapsed, ending in one question mark, so that every phrasing ends where the answer starts."""
    if not isinstance(question, str):
        raise TypeError(f"a question must be a string, got {type(question).__name__}")
    text = " ".join(question.lower().split()).rstrip(" ?.!")
    if not text:
        raise ValueError("the question is empty")
    return f"{text}?"


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
    """

    lora_components = ("model",)

    def __init__(self, model, tokenizer, image_processor):
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer, image_processor=image_processor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=None, torch_dtype=None, local_files_only=True):
        """Load a genvl pipeline folder or a flat VisionEncoderDecoder folder (a local path, or a hub id already
        in the Hugging Face cache). Components are resolved from an allow-list of classes (see
        `genvl.io.components`): nothing the folder names is imported."""
        dtype = dtype or torch_dtype
        path = local_folder(pretrained_model_name_or_path, local_files_only)
        if not (path / "model_index.json").exists():
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"{path}: not a captioner folder (no model_index.json or config.json)")
            return cls._from_flat_folder(path, dtype)
        pipeline = pipeline_from_folder(cls, path, dtype)
        check_tokenizer(path / "tokenizer", pipeline.tokenizer, pipeline.model.decoder.config.vocab_size)
        return pipeline

    @classmethod
    def _from_flat_folder(cls, path: Path, dtype=None):
        from transformers import VisionEncoderDecoderModel

        check_model_folder(path)
        model = load_transformers_model(VisionEncoderDecoderModel, path, dtype or torch.float32)
        tokenizer = load_tokenizer(path, model.decoder.config.vocab_size)
        return cls(model=model, tokenizer=tokenizer, image_processor=load_image_processor(path))

    def save_pretrained(self, save_directory, **kwargs):
        """Save in genvl's layout; weights as safetensors, the tokenizer also as vocab.json + merges.txt."""
        from ..models.captioner import save_gpt2_vocab_files

        self.check_no_adapters()
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        save_gpt2_vocab_files(self.tokenizer, Path(save_directory) / "tokenizer")

    def preprocess(self, images) -> torch.Tensor:
        """PIL images or paths -> pixel values (B, 3, H, W) on the model's device and dtype. Each image is loaded
        and preprocessed on its own, so that no more than one is held at full size (a batch of large photos would
        otherwise take gigabytes)."""
        return preprocess_each(self.image_processor, images).to(device=self.model.device, dtype=self.model.dtype)

    def _encode_rows(self, rows: list) -> torch.Tensor:
        """Encoder states (B, N, C) of preprocessed images, one (3, H, W) tensor each."""
        return encode_images(self.model, torch.stack(rows))

    def settings(self, **overrides) -> GenerationSettings:
        """Decoding settings: the model's generation_config, then the given overrides."""
        return GenerationSettings.from_generation_config(self.model.generation_config, self.tokenizer, **overrides)

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
        **decoding,
    ):
        """Caption `images` (a PIL image, a path, or a list of them), or answer a question about each.

        Args:
            prefix: text every caption must continue, e.g. "a photo of".
            question: a question about every image, or a list of one per image; the captions are then the
                answers (the question not included). Images asked the same question are decoded together.
            generator: a `torch.Generator` for sampling (or pass `seed=` for a fresh one).
            decoding: `num_beams`, `do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty`,
                `no_repeat_ngram_size`, `length_penalty`, `early_stopping`, `num_return_sequences`,
                `max_new_tokens`, `min_new_tokens`, `seed`.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if question is not None:
            return self._answer(list(images), question, prefix, generator, return_dict, decoding)
        settings = self.settings(**decoding)
        # 1. encode images, preprocessed one by one (through the embedding cache when one is set)
        pixel_values = self.preprocess(images)
        states = self.cached_encode(self.model, list(pixel_values), self._encode_rows, self.image_processor.size)
        # 2. decode
        prefix_ids = self.prefix_ids(prefix)
        result = generate(self.model, None, settings, prefix_ids=prefix_ids, generator=generator, encoder_states=states)
        # 3. detokenise: the prefix is part of the caption
        captions = [
            [self.tokenizer.decode(prefix_ids + seq, skip_special_tokens=True).strip() for seq in seqs]
            for seqs in result.sequences
        ]
        if not return_dict:
            return captions, result.scores
        return CaptionOutput(captions=captions, scores=result.scores)

    def _answer(self, images: list, question, prefix, generator, return_dict: bool, decoding: dict):
        """The answers of `images` to `question` (one, or one per image), each question's images in one call."""
        if prefix is not None:
            raise ValueError("pass a prefix or a question, not both: the question is the answer's prefix")
        questions = [question] * len(images) if isinstance(question, str) else list(question)
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions for {len(images)} images: give one per image")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("with questions, pass one torch.Generator (or seed=) for all the images")
        prefixes = [question_prefix(q) for q in questions]
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
        return CaptionOutput(captions=captions, scores=scores)
