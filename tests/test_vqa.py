"""Visual question answering: questions true of their scene graphs, held-out phrasings apart from training's, the
answer decoded after the question by the captioning engine, the training recipe's targets, `genvl ask` and
`genvl eval vqa`."""

import json
import random
from collections import Counter

import pytest
import torch
from PIL import Image

from genvl.pipelines.caption import FUNCTION_WORDS, CaptionPipeline, question_prefix
from genvl.training.answers import CAPTION_TOKENS, answer_tokens
from genvl.world.dataset import write_imagefolder
from genvl.world.questions import (
    COLOUR_VERBS,
    DESCRIBE,
    FAMILIES,
    HELD_OUT_2,
    KINDS,
    PREFIXES,
    SUFFIXES,
    TRAIN,
    answerable,
    answered_kinds,
    ask,
    describe,
    every_answer,
    phrase,
    question_set,
)
from genvl.world.scenes import mirror_scene

from .conftest import TINY, save_tiny_judge
from .scripts import recipe
from .test_hostile_folders import run

train_vqa = recipe("train_vqa")


def thing(name, colour, box, position=None):
    return {"name": name, "colour": colour, "size": None, "position": position, "bbox": box}


PAIR = {  # a red apple to the left of a bigger blue car
    "layout": "pair_h",
    "objects": [thing("apple", "red", [4, 20, 20, 36], "left"), thing("car", "blue", [30, 16, 54, 40], "right")],
}
GROUP = {"layout": "count", "objects": [thing("bell", None, [4 + 16 * i, 20, 16 + 16 * i, 32]) for i in range(3)]}


def test_questions_are_true_of_their_scene():
    found = answerable(PAIR)
    one = {"is": "is", "has": "has", "does": "does"}
    assert found["colour"] == [({"name": "apple", **one}, "red"), ({"name": "car", **one}, "blue")]
    assert ({"relation": "to the left of", "name": "car"}, "apple") in found["relation"]
    assert ({"relation": "to the right of", "name": "apple"}, "car") in found["relation"]
    assert found["biggest"] == [({}, "car")]  # 24 px against 16: past the margin
    group = answerable(GROUP)
    assert group["count"] == [({"plural": "bells"}, "three")]
    assert "colour" not in group and "relation" not in group and "biggest" not in group  # unpainted, alike
    painted = {**GROUP, "objects": [{**obj, "colour": "green"} for obj in GROUP["objects"]]}
    several = {"name": "bells", "is": "are", "has": "have", "does": "do"}
    assert answerable(painted)["colour"] == [(several, "green")]
    mixed = {**GROUP, "objects": [{**obj, "colour": colour} for obj, colour in zip(GROUP["objects"], "ab")]}
    assert "colour" not in answerable(mixed)  # two colours: no one answer
    # a mirrored image is asked about its mirrored scene, where left and right trade places
    mirrored = answerable(mirror_scene({**PAIR, "background": {"kind": "plain"}}))
    assert ({"relation": "to the left of", "name": "apple"}, "car") in mirrored["relation"]
    rng = random.Random(0)
    negatives = [ask(PAIR, rng, kind="exists") for _ in range(200)]
    assert {q["answer"] for q in negatives} == {"yes", "no"}
    for q in negatives:
        words = q["question"].rstrip("?").split()
        assert bool({"apple", "car"} & set(words)) == (q["answer"] == "yes"), q
    assert ask(GROUP, rng, kind="relation") is None


def test_colour_questions_agree_in_number_in_every_phrasing():
    several = {"name": "apples", **COLOUR_VERBS["several"]}
    asked = [template.format(**several) for family in FAMILIES.values() for template in family["colour"]]
    assert asked == [
        "what colour are the apples?",
        "what color are the apples?",
        "which colour are the apples?",
        "what is the colour of the apples?",
        "the apples are what colour?",
        "in what color are the apples painted?",
        "colour of the apples?",
        "give the colour of the apples",
        "tell me the colour of the apples",
        "the apples have which colour?",
        "which color do the apples have?",
        "what colour have the apples got?",
    ]
    one = {"name": "apple", **COLOUR_VERBS["one"]}
    assert [t.format(**one) for t in HELD_OUT_2["colour"]] == [
        "which color does the apple have?",
        "what colour has the apple got?",
    ]


def test_held_out_phrasings_are_not_training_phrasings():
    slots = {"name": "apple", "a_name": "an apple", "plural": "apples", "relation": "to the left of"}
    slots.update(COLOUR_VERBS["one"])
    held_out = [family for name, family in FAMILIES.items() if name != "seen"]
    assert len(held_out) == 2
    for kind in KINDS:
        asked = [{question_prefix(t.format(**slots)) for t in family[kind]} for family in held_out]
        assert all(asked) and not asked[0] & asked[1]
        # no wrapping of any training template is a held-out question
        trained = {
            question_prefix(" ".join(w for w in (prefix, t.format(**slots).rstrip("?"), suffix) if w))
            for t in TRAIN[kind]
            for prefix in PREFIXES
            for suffix in SUFFIXES
        }
        assert not trained & (asked[0] | asked[1]), kind


def test_training_questions_wrap_a_template_and_describing_is_captioning():
    rng = random.Random(0)
    wrapped = {phrase("is there {a_name}?", {"a_name": "a cat"}, rng) for _ in range(200)}
    assert "is there a cat?" in wrapped and len(wrapped) > 10
    assert all("is there a cat" in q and q.endswith("?") for q in wrapped)
    assert phrase("check for {a_name}", {"a_name": "a cat"}, random.Random(1)).endswith("a cat")
    item = describe(PAIR, rng)
    assert item["question"] in DESCRIBE and item["answer"] == "a red apple to the left of a blue car"
    with pytest.raises(ValueError, match="--describe_share must be in"):
        train_vqa.TrainVqaArgs(train_data_dir="x", describe_share=1.0)


def test_a_training_question_too_long_for_the_decoder_is_asked_unwrapped_or_not_at_all(tiny_tokenizer):
    item = {"question": "hey, is there a cat in the scene?", "answer": "yes"}
    item.update(template="is there {a_name}?", slots={"a_name": "a cat"})
    length = lambda q: 2 + len(tiny_tokenizer(q, add_special_tokens=False).input_ids)  # noqa: E731
    wrapped, plain = length("hey, is there a cat in the scene? yes"), length("is there a cat? yes")
    assert plain < wrapped
    assert train_vqa.fitted(item, tiny_tokenizer, wrapped) == item
    assert train_vqa.fitted(item, tiny_tokenizer, wrapped - 1) == {**item, "question": "is there a cat?"}
    assert train_vqa.fitted(item, tiny_tokenizer, plain - 1) is None
    assert train_vqa.fitted(None, tiny_tokenizer, 40) is None


def test_question_set_spreads_kinds_families_and_counts(scene_records):
    items = question_set(scene_records, 300, seed=3)
    assert len(items) == 300 and items == question_set(scene_records, 300, seed=3)
    assert Counter((q["kind"], q["family"]) for q in items) == {(k, f): 20 for k in KINDS for f in FAMILIES}
    counts = Counter(q["answer"] for q in items if q["kind"] == "count")
    assert counts == {"zero": 12, "one": 12, "two": 12, "three": 12, "four": 12}
    for q in items:  # every answer is the one its record's scene gives, in its family's phrasing
        scene = scene_records[q["record"]]["scene"]
        assert q["template"] in FAMILIES[q["family"]][q["kind"]]
        filled = q["template"].format(**q["slots"])
        assert q["question"] == filled if q["family"] != "seen" else filled.rstrip("?") in q["question"]
        if q["answer"] not in ("zero", "no"):  # a negative names an object the scene does not hold (above)
            assert (q["slots"], q["answer"]) in answerable(scene)[q["kind"]], q


def test_question_set_leaves_out_the_kinds_and_counts_no_scene_answers():
    from genvl.world.classic import sample_classic_scene

    rng = random.Random(0)
    records = [{"scene": sample_classic_scene(rng)} for _ in range(300)]
    assert not any("biggest" in answerable(r["scene"]) for r in records)  # the classic world has no size contrast
    kinds = Counter(q["kind"] for q in question_set(records, 80, seed=0))
    assert kinds == {kind: 20 for kind in KINDS if kind != "biggest"}
    singles = [r for r in records if len(r["scene"]["objects"]) == 1]
    items = question_set(singles, 39, seed=0)  # single objects answer colour, count and exists only
    assert Counter(q["kind"] for q in items) == {"colour": 13, "count": 13, "exists": 13}
    counts = Counter(q["answer"] for q in items if q["kind"] == "count")
    assert counts == {"zero": 7, "one": 6}  # in turn: "two" to "four" are held by no scene here


def test_balanced_kinds_are_drawn_evenly_each_from_a_scene_that_answers_it(scene_records):
    scene_kinds = [answered_kinds(r["scene"]) for r in scene_records]
    answering = {kind: [i for i, found in enumerate(scene_kinds) if kind in found] for kind in KINDS}
    assert 0 < len(answering["biggest"]) < len(scene_records) / 5  # few scenes answer "biggest"
    rng = random.Random(0)
    batch = [rng.randrange(len(scene_records)) for _ in range(5000)]
    indices, drawn = train_vqa.balanced(batch, scene_kinds, answering, random.Random(1))
    shares = Counter(drawn)
    assert set(shares) == set(KINDS) and all(900 < n < 1100 for n in shares.values())
    assert all(kind in scene_kinds[i] for i, kind in zip(indices, drawn))
    # a scene that answers its kind stays where it is; count and exists are answered by every scene
    assert all(i == j for i, j, kind in zip(indices, batch, drawn) if kind in scene_kinds[j])
    assert indices != batch and (indices, drawn) == train_vqa.balanced(batch, scene_kinds, answering, random.Random(1))
    for index, kind in zip(indices[:200], drawn):
        item = ask(scene_records[index]["scene"], random.Random(index), kind=kind)
        assert item is not None and item["kind"] == kind


def test_grown_positions_keep_what_the_decoder_read_before(tiny_tokenizer, tmp_path):
    from genvl.models.captioner import grow_positions

    from .conftest import get_dummy_components

    model, processor = get_dummy_components(tiny_tokenizer)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        before = model(pixel_values=pixels, decoder_input_ids=ids).logits
        grow_positions(model.eval(), 48)
        after = model(pixel_values=pixels, decoder_input_ids=ids).logits
        longer = model(pixel_values=pixels, decoder_input_ids=torch.randint(0, 300, (2, 48))).logits
    assert torch.equal(before, after) and longer.shape[1] == 48
    assert model.config.decoder.n_positions == model.decoder.config.n_positions == 48
    CaptionPipeline(model=model, tokenizer=tiny_tokenizer, image_processor=processor).save_pretrained(tmp_path / "p")
    loaded = CaptionPipeline.from_pretrained(tmp_path / "p").model
    assert loaded.decoder.transformer.wpe.weight.shape[0] == 48
    with pytest.raises(ValueError, match="already has 48 positions, more than 40"):
        grow_positions(model, 40)
    with pytest.raises(ValueError, match="--decoder_positions grows a pretrained model"):
        train_vqa.TrainVqaArgs(train_data_dir="x", decoder_positions=64)


@pytest.fixture(scope="module")
def scene_records():
    rng = random.Random(0)
    from genvl.world.scenes import sample_scene

    return [{"file_name": f"{i}.png", "scene": sample_scene(rng)} for i in range(300)]


def test_question_prefix_normalises_and_refuses_empty():
    assert question_prefix("  How many  Apples are there ? ") == "how many apples are there?"
    assert question_prefix("count the apples.") == "count the apples?"
    with pytest.raises(ValueError, match="empty"):
        question_prefix(" ?? ")


def test_pipeline_answers_after_the_question(tiny_pipeline_dir, scene_images):
    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    images = scene_images[:3]
    question = "What colour is the apple"
    answers = pipe(images, question=question, max_new_tokens=4).captions
    prefixed = pipe(images, prefix="what colour is the apple?", max_new_tokens=4).captions
    for answer, caption in zip(answers, prefixed):  # the caption that continues the question, less the question
        assert caption[0].startswith("what colour is the apple?")
        assert answer[0] == caption[0][len("what colour is the apple?") :].strip()
    # one question per image: each image gets its own question's answer, whatever the grouping
    mixed = pipe(images, question=[question, "is there a car", question], max_new_tokens=4).captions
    alone = pipe([images[1]], question="is there a car?", max_new_tokens=4).captions
    assert mixed[0] == answers[0] and mixed[2] == answers[2] and mixed[1] == alone[0]
    with pytest.raises(ValueError, match="2 questions for 3 images"):
        pipe(images, question=[question, question])
    with pytest.raises(ValueError, match="a prefix or a question"):
        pipe(images, question=question, prefix="a")


def test_targets_are_the_answer_after_the_question(tiny_tokenizer):
    from genvl.recipes.train_vqa import question_tokens

    inputs, labels, mask = question_tokens(tiny_tokenizer, ["is there a red apple"], ["yes"], 32, start_id=7)
    asked = tiny_tokenizer("is there a red apple?", add_special_tokens=False).input_ids
    said = tiny_tokenizer(" yes", add_special_tokens=False).input_ids
    length = 1 + len(asked) + len(said)
    assert inputs[0, :length].tolist() == [7, *asked, *said] and mask[0].sum() == length
    # each label is the next input token, from the question's last token on; the last one is EOS
    assert labels[0, : len(asked)].eq(-100).all() and labels[0, length:].eq(-100).all()
    assert labels[0, len(asked) : length].tolist() == [*said, tiny_tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="more than the decoder's 8 positions"):
        question_tokens(tiny_tokenizer, ["is there a red apple"], ["yes"], 8, start_id=7)


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    data = write_imagefolder(root / "world", 48, seed=0, split="train", resolution=32)
    flags = ["--train_data_dir", str(data), "--train_batch_size", "8", "--max_train_steps", "8"]
    flags += ["--checkpointing_steps", "8", "--learning_rate", "3e-3", "--augment", "flip,shift,squash,letterbox,light"]
    (root / "arch.json").write_text(json.dumps({**TINY.to_dict(), "max_positions": 48}))
    flags += ["--architecture", str(root / "arch.json"), "--resolution", "32", "--vocab_size", "600"]
    losses = train_vqa.main([*flags, "--lr_warmup_steps", "1", "--output_dir", str(root / "run")])
    return root, data, losses


def test_recipe_trains_and_the_cli_asks_and_scores(vqa_run, capsys, tmp_path):
    root, data, losses = vqa_run
    assert len(losses) == 8 and losses[-1] < losses[0]
    pipe = CaptionPipeline.from_pretrained(root / "run")
    # as many new tokens as the world's longest answer takes with this tokenizer, and no n-gram rule
    longest = max(len(pipe.tokenizer(" " + a, add_special_tokens=False).input_ids) for a in every_answer())
    assert {"zero", "yes", "strawberry", "purple"} <= set(every_answer())
    assert pipe.model.generation_config.max_new_tokens == 1 + longest == answer_tokens(pipe.tokenizer)
    assert pipe.model.generation_config.no_repeat_ngram_size == 0
    image = data / json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    model = ["--model", str(root / "run")]
    code, out, err = run(["ask", str(image), "How many apples?", *model, "--json", "--quiet"], capsys, tmp_path)
    record = json.loads(out)
    assert code == 0 and record["question"] == "how many apples?"
    assert record["answer"] == pipe([Image.open(image)], question="how many apples?").captions[0][0]
    code, out, err = run(["eval", "vqa", "--data", str(data), "--questions", "40", *model, "--quiet"], capsys, tmp_path)
    report = json.loads(out)
    assert code == 0 and report["questions"] == 40 and set(report["kinds"]) == set(KINDS)
    assert set(report["phrasings"]) == {*FAMILIES, "every_held_out"} and 0 <= report["accuracy"] <= 1
    from genvl.cli.evaluate import vqa_summary

    summary = vqa_summary({**report, "too_long": 3, "kinds_not_asked": ["biggest"]})
    assert report["kinds_not_asked"] == [] and "held_out_2" in summary and "every held-out phrasing" in summary
    assert "3 questions too long" in summary and "not asked (no scene answers them): biggest" in summary
    assert set(report["colour_by_number"]) <= {"one", "several"} and "colour of one object" in summary
    # and per phrasing, each named by its family and template
    templates = {f"{family}: {t}" for family, table in FAMILIES.items() for kind in KINDS for t in table[kind]}
    assert report["templates"] and set(report["templates"]) <= templates and report["too_long"] == 0
    # a question its answer cannot follow within the decoder's positions is scored wrong, not asked
    from genvl.evaluation.vqa import evaluate_vqa

    assert pipe.positions_left("how many apples?") == 48 - 1 - len(pipe.prefix_ids("how many apples?"))
    pipe.model.generation_config.max_new_tokens = 47  # 48 positions: none is left for the question
    crowded = evaluate_vqa(pipe, data, 10)
    assert crowded["too_long"] == 10 and crowded["accuracy"] == 0
    pipe.model.generation_config.max_new_tokens = 1 + longest
    # a question too long for the decoder's positions is a usage error naming it
    long_question = "is there " + " and ".join(["a red apple"] * 12)
    code, out, err = run(["ask", str(image), long_question, *model, "--quiet"], capsys, tmp_path)
    assert code == 2 and "ask a shorter one" in err and out == ""
    with pytest.raises(ValueError, match="every record needs a scene graph"):
        (tmp_path / "plain").mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / "plain" / "a.png")
        (tmp_path / "plain" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
        evaluate_vqa(pipe, tmp_path / "plain", 10)


def test_template_words_drop_and_slot_words_stay():
    drop = train_vqa.drop_template_words
    relation = {"relation": "to the left of", "name": "apple"}
    kept = drop("What is to the left of the apple?", relation, 0.0, random.Random(0))
    assert kept == "what is to the left of the apple?"
    assert drop("How many apples are there?", {"plural": "apples"}, 0.999, random.Random(0)) == "apples?"
    # a question whose every word would go is kept whole
    assert drop("What is the biggest object?", {}, 0.999, random.Random(0)) == "what is the biggest object?"
    halves = {
        drop("is there a red apple in the picture?", {"a_name": "a red apple"}, 0.5, random.Random(i))
        for i in range(40)
    }
    assert len(halves) > 5 and all("a red apple" in q and q.endswith("?") for q in halves)
    assert drop("is there a cat?", {"a_name": "a cat"}, 0.5, random.Random(3)) == drop(
        "is there a cat?", {"a_name": "a cat"}, 0.5, random.Random(3)
    )
    with pytest.raises(ValueError, match="--question_dropout must be in"):
        train_vqa.TrainVqaArgs(train_data_dir="x", question_dropout=1.0)


@pytest.fixture(scope="module")
def judge_eyed_run(tmp_path_factory, vqa_run):
    root, data, _ = vqa_run
    out = tmp_path_factory.mktemp("judge_eyed")
    judge = save_tiny_judge(data, out / "judge")
    flags = ["--train_data_dir", str(data), "--train_batch_size", "8", "--resolution", "32"]
    flags += ["--max_train_steps", "4", "--lr_warmup_steps", "1", "--checkpointing_steps", "4"]
    flags += ["--learning_rate", "3e-3", "--question_dropout", "0.3", "--describe_share", "0.3"]
    flags += ["--pretrained_model_name_or_path", str(root / "run"), "--encoder_from_judge", str(out / "judge")]
    flags += ["--balance_kinds", "--decoder_positions", "56"]  # from the 48 positions of the run it starts from
    losses = train_vqa.main([*flags, "--freeze_encoder", "--output_dir", str(out / "run")])
    return out, data, judge, losses


def test_a_judge_eyed_model_reads_with_the_judges_frozen_body_and_answers(judge_eyed_run, vqa_run):
    from genvl.models.grid_encoder import GridEncoder

    out, data, judge, losses = judge_eyed_run
    assert len(losses) == 4
    pipe = CaptionPipeline.from_pretrained(out / "run")
    assert pipe.model.generation_config.max_new_tokens == CAPTION_TOKENS  # room for a whole caption
    encoder = pipe.model.encoder
    assert isinstance(encoder, GridEncoder) and encoder.config.channels == [8, 8, 16]
    for key, value in judge.body.state_dict().items():  # frozen: the judge's body, as it was
        assert torch.equal(encoder.body.state_dict()[key], value), key
    started = CaptionPipeline.from_pretrained(vqa_run[0] / "run").model.decoder.state_dict()
    assert any(not torch.equal(value, started[key]) for key, value in pipe.model.decoder.state_dict().items())
    assert pipe.model.enc_to_dec_proj.in_features == 16  # the judge's width into the decoder's
    assert pipe.model.config.decoder.n_positions == 56 and pipe.model.decoder.transformer.wpe.num_embeddings == 56
    image = data / json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    answer = pipe([Image.open(image)], question="how many apples?").captions[0][0]
    assert isinstance(answer, str) and "?" not in answer
    states = encoder(pixel_values=torch.zeros(2, 3, 32, 32)).last_hidden_state
    assert states.shape == (2, 16, 16)  # a 4x4 grid of cells, 16 wide
    with pytest.raises(ValueError, match="reads 32x32 images"):
        encoder(pixel_values=torch.zeros(1, 3, 64, 64))


def test_a_run_started_from_a_pipeline_exports_its_checkpoint(judge_eyed_run, tmp_path):
    """The run started from a pipeline folder and put a judge's body under it: its checkpoint is rebuilt from that
    pipeline, with the grid encoder, into the final folder's weights (the EMA of those it trained)."""
    export_captioner = recipe("export_captioner")
    out = judge_eyed_run[0]
    exported = export_captioner.main(["--run", str(out / "run"), "--out", str(tmp_path / "export")])
    final = CaptionPipeline.from_pretrained(out / "run").model.state_dict()
    weights = CaptionPipeline.from_pretrained(exported).model.state_dict()
    assert weights.keys() == final.keys() and all(torch.equal(value, final[key]) for key, value in weights.items())
    # and it answers as the final folder does, not with the captioner's settings it started from
    settings = [CaptionPipeline.from_pretrained(f).model.generation_config for f in (out / "run", exported)]
    assert settings[0].to_dict() == settings[1].to_dict()
    assert settings[1].max_new_tokens == CAPTION_TOKENS and settings[1].no_repeat_ngram_size == 0


def test_a_grid_encoder_folder_describing_more_than_its_weights_is_refused(judge_eyed_run, tmp_path):
    import shutil

    folder = shutil.copytree(judge_eyed_run[0] / "run", tmp_path / "run")
    config = json.loads((folder / "model" / "config.json").read_text())
    config["encoder"]["channels"] = [8, 8, 4096]  # a body of 300M weights, over safetensors of a few thousand
    (folder / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json describes .* weights but the safetensors hold only"):
        CaptionPipeline.from_pretrained(folder)
    config["encoder"]["channels"] = [8, 8]
    (folder / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="could not load the model .*three channel widths"):
        CaptionPipeline.from_pretrained(folder)


def test_a_judge_of_another_size_is_refused(judge_eyed_run, vqa_run, tmp_path):
    from genvl.models.judge import SceneJudge

    out, data, _, _ = judge_eyed_run
    judge = SceneJudge(object_names=["apple"], colour_names=["red"], channels=(8, 8, 16), image_size=64)
    judge.save_pretrained(tmp_path / "judge64")
    flags = ["--train_data_dir", str(data), "--max_train_steps", "1", "--resolution", "32"]
    flags += ["--output_dir", str(tmp_path / "r"), "--pretrained_model_name_or_path", str(vqa_run[0] / "run")]
    flags += ["--encoder_from_judge", str(tmp_path / "judge64")]
    with pytest.raises(ValueError, match="the judge reads 64px images, the model 32px"):
        train_vqa.main(flags)


def test_answers_are_scored_by_exact_match_after_normalising():
    from genvl.evaluation.vqa import normalise_answer

    assert normalise_answer("  Red. ") == "red" and normalise_answer("two  apples") == "two apples"


# ---- attention maps ------------------------------------------------------------------------------------------------


def test_attention_maps_come_with_the_captions_they_explain(tiny_pipeline_dir, scene_images):
    from genvl.attention import attention_backend
    from genvl.pipelines.caption import patch_grid

    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    plain = pipe(scene_images[:2], num_beams=2, num_return_sequences=2)
    out = pipe(scene_images[:2], num_beams=2, num_return_sequences=2, output_attentions=True)
    assert out.captions == plain.captions and out.scores == plain.scores  # decoding untouched
    assert attention_backend(pipe.model.decoder) == "sdpa"  # the eager pass's switch is undone
    side = pipe.image_processor.size["height"] // pipe.model.config.encoder.patch_size
    for captions, maps in zip(out.captions, out.attentions):
        for caption, words in zip(captions, maps):
            assert [word for word, _ in words] == caption.split()
            for _, heat in words:
                assert heat.shape == (side, side) and float(heat.sum()) == pytest.approx(1.0, abs=1e-5)
    # the first word's map, when it is one token, is the cross-attention of the start token's query, averaged
    # over heads and layers, as the whole model's eager forward gives it (class token left out, renormalised)
    ids = pipe.tokenizer(out.captions[0][0]).input_ids
    first = pipe.tokenizer(out.captions[0][0].split()[0]).input_ids
    if len(first) == 1:
        pipe.set_attention_backend("eager")
        pixels = pipe.preprocess(scene_images[:1])
        start = pipe.model.config.decoder_start_token_id
        forward = pipe.model(
            pixel_values=pixels, decoder_input_ids=torch.tensor([[start, *ids]]), output_attentions=True
        )
        pipe.set_attention_backend("sdpa")
        row = torch.stack([layer[0, :, 0] for layer in forward.cross_attentions]).mean((0, 1))[1:]
        assert torch.allclose(out.attentions[0][0][0][1], (row / row.sum()).view(side, side), atol=1e-5)
    assert patch_grid(65) == (1, 8) and patch_grid(49) == (0, 7) and patch_grid(66) == (2, 8)
    with pytest.raises(ValueError, match="square grid"):
        patch_grid(70)


def test_caption_writes_an_attention_figure(tiny_pipeline_dir, scene_images, capsys, tmp_path):
    image = tmp_path / "scene.png"
    scene_images[0].save(image)
    model = ["--model", str(tiny_pipeline_dir), "--quiet"]
    code, out, err = run(["caption", str(image), "--attention-map", "map.png", *model], capsys, tmp_path)
    assert code == 0, err
    words = CaptionPipeline.from_pretrained(tiny_pipeline_dir)([image], output_attentions=True).attentions[0][0]
    content = [word for word, _ in words if word.strip(",.").lower() not in FUNCTION_WORDS]
    assert Image.open(tmp_path / "map.png").size == (128 * (1 + len(content)), 128 + 16)
    code, out, err = run(["caption", str(image), str(image), "--attention-map", "two.png", *model], capsys, tmp_path)
    assert code == 2 and "takes one image file" in err and not (tmp_path / "two.png").exists()
    code, out, err = run(["caption", str(image), "--attention-map", str(image), *model], capsys, tmp_path)
    assert code != 0 and "--attention-map" in err and Image.open(image).size == scene_images[0].size


def test_eval_attention_scores_where_the_named_objects_are(vqa_run, tmp_path, capsys):
    from genvl.evaluation.attention import peak_inside

    heat = torch.zeros(8, 8)
    heat[2, 5] = 1.0  # the cell at x 40-48, y 16-24
    assert peak_inside(heat, [38, 14, 50, 26]) and not peak_inside(heat, [0, 0, 30, 30])
    root, data, _ = vqa_run
    code, out, err = run(
        ["eval", "attention", "--data", str(data), "--model", str(root / "run"), "--quiet"], capsys, tmp_path
    )
    report = json.loads(out)
    assert code == 0 and report["scenes"] > 0 and report["objects"] == 2 * report["scenes"]


# ---- int8 quantization ---------------------------------------------------------------------------------------------


def test_int8_decoder_keeps_the_captions_and_refuses_what_it_cannot_carry(tiny_pipeline_dir, scene_images):
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from genvl.quantize import linear_of_conv1d, quantize_linear_layers

    pipe = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    conv = pipe.model.decoder.transformer.h[0].attn.c_attn
    x = torch.randn(3, conv.weight.shape[0])
    assert torch.allclose(linear_of_conv1d(conv)(x), conv(x), atol=1e-6)
    fp32 = pipe(scene_images, num_beams=2)
    pipe.quantize("int8")
    layers = list(pipe.model.decoder.modules())
    assert not any(type(m).__name__ == "Conv1D" or type(m) is torch.nn.Linear for m in layers)
    # per block: self-attention qkv and out, cross-attention q, kv and out, the MLP's two; and the output layer
    assert sum(type(m) is Int8Linear for m in layers) == 2 * 7 + 1
    assert any(type(m) is torch.nn.Linear for m in pipe.model.encoder.modules())  # the encoder is kept
    int8 = pipe(scene_images, num_beams=2)
    same = sum(a == b for a, b in zip(int8.captions, fp32.captions))
    assert same >= len(scene_images) - 1  # int8 rounding may flip a near-tie of a random model, not most captions
    with pytest.raises(ValueError, match="CPU in float32"):
        quantize_linear_layers(torch.nn.Linear(4, 4).to(torch.bfloat16))
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_linear_layers(torch.nn.Linear(4, 4), "int4")


def test_caption_quantize_flag(tiny_pipeline_dir, scene_images, capsys, tmp_path):
    image = tmp_path / "scene.png"
    scene_images[0].save(image)
    model = ["--model", str(tiny_pipeline_dir), "--quiet"]
    code, out, err = run(["caption", str(image), "--quantize", "int8", "--json", *model], capsys, tmp_path)
    expected = CaptionPipeline.from_pretrained(tiny_pipeline_dir).quantize()([image]).captions[0][0]
    assert code == 0 and json.loads(out)["captions"][0]["text"] == expected
    code, out, err = run(["caption", str(image), "--quantize", "int8", "--dtype", "bf16", *model], capsys, tmp_path)
    assert code == 2 and "--quantize int8 runs on the CPU in fp32" in err
