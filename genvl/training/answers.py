"""How a question-answering captioner decodes its answers: the settings `train_vqa.py` saves with the model and
`export_captioner.py` gives an exported checkpoint of such a run."""

from ..world.questions import every_answer

CAPTION_TOKENS = 24  # the most new tokens a model that also describes whole scenes decodes (`--describe_share`)


def answer_tokens(tokenizer) -> int:
    """The most new tokens an answer of the world takes with `tokenizer`, EOS included: the saved model decodes no
    more, which leaves the rest of the decoder's positions to the question."""
    return 1 + max(len(tokenizer(" " + answer, add_special_tokens=False).input_ids) for answer in every_answer())


def answer_settings(model, tokenizer, describe_share: float) -> None:
    """Set `model`'s generation config to decode answers greedily: at most the new tokens of the world's longest
    answer (`answer_tokens`; a whole caption's, `CAPTION_TOKENS`, for a model that also describes scenes), and no
    n-gram rule, whose n-grams would span the question."""
    longest = answer_tokens(tokenizer) if not describe_share else CAPTION_TOKENS
    model.generation_config.update(max_new_tokens=longest, no_repeat_ngram_size=0, num_beams=1)
