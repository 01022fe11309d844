"""Train a visual question-answering model on the world's scenes with accelerate: genvl's captioner architecture,
the question as the decoder's prefix and the answer decoded after it.

    accelerate launch -m genvl.recipes.train_vqa --config configs/train_vqa.json

Each step asks one question of every image in the batch, drawn from its scene graph (`genvl.world.questions`:
colour, count, relation, existence, biggest object) in a training phrasing only; the held-out phrasings are left
for `genvl eval vqa`. The decoder reads BOS, the question (`question_prefix`: lower case, ending in "?") and the
answer, and the loss is the answer's tokens and EOS alone. `--pretrained_model_name_or_path` starts from a
captioner (a pipeline folder), whose encoder already sees the world's objects and whose tokenizer is kept;
without it a fresh model and tokenizer are trained. `--encoder_from_judge` puts a judge's convolutional body in
the encoder's place (`genvl.models.grid_encoder`), `--freeze_encoder` keeps it as it is, `--question_dropout`
drops template words from the training questions, `--describe_share` asks that share of them for the whole scene,
answered by its caption, and `--balance_kinds` asks every kind as often. `--decoder_positions` gives a pretrained
decoder room for longer questions. With `--augment flip`, a mirrored image is asked about its mirrored scene, so
that left and right stay true. Ends with `CaptionPipeline.save_pretrained(output_dir)`:
`CaptionPipeline(images, question=...)` and `genvl ask` answer with it.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from genvl.io.imagefolder import load_images
from genvl.models.captioner import (
    CaptionerArchitecture,
    build_captioner,
    build_image_processor,
    grow_positions,
    train_tokenizer,
)
from genvl.pipelines.caption import CaptionPipeline, question_prefix
from genvl.training.answers import answer_settings
from genvl.training.args import (
    JudgeEncoderArgs,
    TrainArgs,
    check_at_least,
    parse_args,
    run_script,
    save_architecture,
    saving_run,
)
from genvl.training.augment import augment_batch, pad_fill_of, parse_augmentations, scene_rooms
from genvl.training.data import read_training_data
from genvl.training.features import load_or_train_tokenizer
from genvl.training.loop import caption_loss, make_accelerator, train_loop
from genvl.training.pretrained import prepare_encoder
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.world.questions import DESCRIBE, KINDS, answered_kinds, ask, describe
from genvl.world.scenes import mirror_scene


@dataclass
class TrainVqaArgs(TrainArgs, JudgeEncoderArgs):
    """Train a question-answering captioner."""

    output_dir: str = "runs/vqa"
    architecture: str = "configs/captioner_small.json"
    pretrained_model_name_or_path: str | None = None
    # each word of a training question that the template put there (not an object's name, plural or relation)
    # is dropped with this probability, so that the answer must come from what is asked about, not the template
    question_dropout: float = 0.0
    # the share of training questions that ask for the whole scene (`genvl.world.questions.DESCRIBE`) and are
    # answered by its caption: every object's name, colour and place, where one answer names one of them
    describe_share: float = 0.0
    # draw each training question's kind evenly from the five and then a scene that answers it, in place of the
    # batch's scene where that one cannot (few scenes answer "biggest"; without this it is under 1 question in 100)
    balance_kinds: bool = False
    # grow a pretrained model's decoder to this many positions (`grow_positions`), so that longer questions fit
    decoder_positions: int | None = None
    vocab_size: int = 1024
    augment: str = ""  # comma-separated kinds of genvl.training.augment: flip, shift, squash, letterbox, light, jpeg

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "vocab_size")
        if not 0.0 <= self.question_dropout < 1.0:
            raise ValueError(f"--question_dropout must be in [0, 1), got {self.question_dropout}")
        if not 0.0 <= self.describe_share < 1.0:
            raise ValueError(f"--describe_share must be in [0, 1), got {self.describe_share}")
        parse_augmentations(self.augment)
        if self.decoder_positions is not None and not self.pretrained_model_name_or_path:
            raise ValueError("--decoder_positions grows a pretrained model; a fresh one takes --architecture's")


def drop_template_words(question: str, slots: dict, rate: float, rng: random.Random) -> str:
    """`question` (as `question_prefix` gives it) with each word not put there by a slot dropped with probability
    `rate`; the slots' words always stay, and so does the question mark."""
    protected = {word for value in slots.values() for word in value.split()}
    words = question_prefix(question)[:-1].split()
    kept = [word for word in words if word in protected or rng.random() >= rate]
    return " ".join(kept) + "?" if kept else question_prefix(question)


def fitted(item: dict | None, tokenizer, max_length: int) -> dict | None:
    """`item` (an `ask` or `describe` question) if its question and answer fit in `max_length` positions with the
    start token and EOS; else the same question unwrapped (its template filled, as `phrase` found it), if that
    fits; else None. A tokenizer that splits the question's words into many pieces needs this."""

    def fits(question: str) -> bool:
        asked = tokenizer(question_prefix(question), add_special_tokens=False).input_ids
        return 2 + len(asked) + len(tokenizer(" " + item["answer"], add_special_tokens=False).input_ids) <= max_length

    if item is None or fits(item["question"]):
        return item
    plain = item["template"].format(**item["slots"])
    return {**item, "question": plain} if fits(plain) else None


def balanced(indices: list[int], scene_kinds: list[set], answering: dict, rng: random.Random):
    """(indices, kinds): a kind drawn evenly for each of the batch's scene `indices`, and the scene kept where it
    answers that kind (`scene_kinds[i]`: the kinds scene i answers), else one drawn from those that do
    (`answering[kind]`)."""
    drawn = [rng.choice(KINDS) for _ in indices]
    return [i if kind in scene_kinds[i] else rng.choice(answering[kind]) for i, kind in zip(indices, drawn)], drawn


def question_tokens(tokenizer, questions, answers, max_length: int, start_id: int):
    """(decoder_input_ids, labels, attention_mask) of question-answer pairs: `start_id`, the question and the
    answer; the answer and EOS as labels at the positions that predict them (-100 elsewhere); the mask over
    the start, question and answer. Padded with EOS / -100 / 0. A pair longer than `max_length` is an error:
    its answer would be cut."""
    eos = tokenizer.eos_token_id
    inputs = torch.full((len(questions), max_length), eos, dtype=torch.long)
    labels = torch.full((len(questions), max_length), -100, dtype=torch.long)
    mask = torch.zeros((len(questions), max_length), dtype=torch.long)
    inputs[:, 0] = start_id
    for i, (question, answer) in enumerate(zip(questions, answers)):
        asked = tokenizer(question_prefix(question), add_special_tokens=False).input_ids
        said = tokenizer(" " + answer, add_special_tokens=False).input_ids
        length = 1 + len(asked) + len(said)
        if length > max_length:
            raise ValueError(f"{question!r} and its answer take more than the decoder's {max_length} positions")
        inputs[i, 1:length] = torch.tensor(asked + said)
        labels[i, len(asked) : length] = torch.tensor(said + [eos])
        mask[i, :length] = 1
    return inputs, labels, mask


def main(argv=None):
    args = parse_args(TrainVqaArgs, argv)
    accelerator = make_accelerator(args, "train_vqa")
    output_dir = Path(args.output_dir)
    records = read_training_data(accelerator, args)
    if not all(isinstance(r.get("scene"), dict) for r in records):
        raise ValueError(f"{args.train_data_dir}: every record needs a scene graph to ask questions of")

    # 1. the model: a captioner to start from, or a fresh one with a tokenizer of the captions and questions; with
    # --encoder_from_judge, its encoder is the judge's body
    if args.pretrained_model_name_or_path:
        pretrained = CaptionPipeline.from_pretrained(args.pretrained_model_name_or_path)
        model, tokenizer, image_processor = pretrained.model, pretrained.tokenizer, pretrained.image_processor
        if args.decoder_positions is not None:
            grow_positions(model, args.decoder_positions)
    else:
        arch = CaptionerArchitecture.from_json(args.architecture)
        arch.image_size = args.resolution
        save_architecture(accelerator, args, arch)
        asked = [ask(r["scene"], random.Random(f"{args.seed}/tokenizer/{i}")) for i, r in enumerate(records)]
        texts = [r["text"] for r in records] + [f"{question_prefix(q['question'])} {q['answer']}" for q in asked]
        texts += [question_prefix(text) for text in DESCRIBE] * 10
        tokenizer = load_or_train_tokenizer(accelerator, output_dir, lambda: train_tokenizer(texts, args.vocab_size))
        model = build_captioner(arch, tokenizer)
        image_processor = build_image_processor(arch)
    model = prepare_encoder(args, model)
    picture_positions = getattr(model.config.encoder, "picture_positions", False)  # the run's or the start's
    max_length = model.config.decoder.max_position_embeddings
    start_id = model.config.decoder_start_token_id
    kinds = parse_augmentations(args.augment)
    device = accelerator.device

    # 2. the data in memory: images, scene graphs, and the room each leaves shift, squash and letterbox
    images = load_images(Path(args.train_data_dir), records, args.image_column, args.resolution)
    scenes = [r["scene"] for r in records]
    rooms = scene_rooms(scenes, kinds)
    if args.balance_kinds:
        scene_kinds = [answered_kinds(scene) for scene in scenes]
        answering = {kind: [i for i, found in enumerate(scene_kinds) if kind in found] for kind in KINDS}
        if not all(answering.values()):
            empty = [kind for kind, found in answering.items() if not found]
            raise ValueError(f"{args.train_data_dir}: no scene answers a question of kind {', '.join(empty)}")

    def compute_loss(model, batch, step):
        drawn = [None] * len(batch)
        if args.balance_kinds:
            rng = random.Random(f"{args.seed}/{step}/{accelerator.process_index}/kinds")
            batch, drawn = balanced([int(i) for i in batch], scene_kinds, answering, rng)
        batch = torch.as_tensor(batch)
        pixel_values = images[batch].to(device).float().div_(127.5).sub_(1.0)
        flipped = torch.zeros(len(batch), dtype=torch.bool)
        if kinds:
            generator = step_generator(args.seed, step, AUGMENTATION)
            batch_rooms = rooms[batch] if rooms is not None else None
            pixel_values, flipped, _ = augment_batch(
                pixel_values, batch_rooms, kinds, generator, picture_mask=picture_positions
            )
        asked = []
        for index, mirrored, kind in zip(batch.tolist(), flipped.tolist(), drawn):
            scene = mirror_scene(scenes[index]) if mirrored else scenes[index]
            rng = random.Random(f"{args.seed}/{step}/{index}")
            item = describe(scene, rng) if rng.random() < args.describe_share else None
            # (a mirrored scene's boxes round differently: one on the margin may no longer answer "biggest")
            asked_kind = ask(scene, rng, kind=kind) or ask(scene, rng)
            item = fitted(item, tokenizer, max_length) or fitted(asked_kind, tokenizer, max_length)
            if item is None:
                raise ValueError(
                    f"no question about {records[index]['file_name']} fits the decoder's {max_length} positions"
                )
            asked.append(item)
        if args.question_dropout:
            rng = random.Random(f"{args.seed}/{step}/dropout")
            for q in asked:
                q["question"] = drop_template_words(q["question"], q["slots"], args.question_dropout, rng)
        questions, answers = [q["question"] for q in asked], [q["answer"] for q in asked]
        inputs, labels, mask = question_tokens(tokenizer, questions, answers, max_length, start_id)
        longest = int(mask.sum(1).max())  # no step spends work on padding past the longest
        inputs, labels, mask = (x[:, :longest].to(device) for x in (inputs, labels, mask))
        # the mean over every process's answer tokens (see the captioner's recipe)
        tokens = accelerator.reduce((labels != -100).sum(), "sum") / accelerator.num_processes
        return caption_loss(model, pixel_values, inputs, labels, tokens, mask)

    trained = [p for p in model.parameters() if p.requires_grad]
    losses = train_loop(accelerator, args, model, trained, len(records), compute_loss)

    # 3. save the pipeline (EMA weights when EMA is on), decoding answers
    if accelerator.is_main_process:
        answer_settings(model, tokenizer, args.describe_share)
        # the world's questions; images of any shape padded to a square (see CaptionPipeline)
        fill = pad_fill_of(kinds, pretrained.config if args.pretrained_model_name_or_path else None)
        with saving_run(output_dir, losses):
            pipeline = CaptionPipeline(
                model, tokenizer, image_processor, question_world="genvl", pad_to_square=True, pad_fill=fill
            )
            pipeline.save_pretrained(output_dir)
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
