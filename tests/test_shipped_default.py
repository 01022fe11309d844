"""The shipped defaults: the captioners on the held-out example images (named after their true captions), and
the text-to-image judge on fresh held-out renders."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genvl.cli.caption import DEFAULT_CAPTION_MODEL
from genvl.cli.image import DEFAULT_JUDGE
from genvl.evaluation.judge import category_accuracy, detection_report, judge_scene
from genvl.generation import generate
from genvl.io.components import load_tokenizer
from genvl.io.imagefolder import read_metadata
from genvl.models.captioner import NO_REPEAT_NGRAM_SIZE
from genvl.models.judge import SceneJudge
from genvl.pipelines.caption import CaptionPipeline
from genvl.pipelines.defaults import shipped_pipeline
from genvl.world import parse_caption, render_scene, scene_captions
from genvl.world.captions import repeated_word_bans, scene_facts
from genvl.world.dataset import generate_scenes, write_imagefolder
from genvl.world.scenes import held_out, mirror_scene

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
# renders of the wide world at 128 px, one per style family (dark, graded, saturated and textured grounds, tiny and
# huge objects), each the first test scene of its family from seeds 2027-2032; the captioners read 64 px
WIDE_EXAMPLES = EXAMPLES.parent / "wide"
SMALL = shipped_pipeline("genvl-caption-small")
WIDE = shipped_pipeline("genvl-caption-wide")


def test_genvl_caption_reads_pictures_of_the_wide_world_by_default(capsys):
    from genvl.cli import main

    assert main(["caption", str(WIDE_EXAMPLES), "--quiet"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    right = [parse_caption(caption) == parse_caption(Path(path).stem.replace("_", " ")) for path, caption in lines]
    assert len(right) >= 6 and sum(right) >= len(right) - 1, lines


@pytest.mark.parametrize(
    "folder, examples",
    [(WIDE, WIDE_EXAMPLES), (SMALL, EXAMPLES), (shipped_pipeline("genvl-caption-tiny"), EXAMPLES)],
    ids=["wide", "small", "tiny"],
)
def test_shipped_captioner_states_the_example_scenes(folder, examples):
    """Each captioner on pictures of its own world; the first world's two read nothing else (see the wide
    captioner's model card)."""
    assert (folder / "model_index.json").is_file(), f"{folder} is missing"
    pipeline = CaptionPipeline.from_pretrained(folder)
    paths = sorted(examples.glob("*.png"))
    assert len(paths) >= 6
    captions = pipeline(paths, num_beams=3).captions
    right = [parse_caption(c[0]) == parse_caption(p.stem.replace("_", " ")) for p, c in zip(paths, captions)]
    assert sum(right) >= len(paths) - 1, list(zip([p.name for p in paths], captions))


def test_the_default_captioner_names_objects_in_wide_and_tall_images():
    """Pictures are not all square: one object pasted on 2:1, 1:2 and 16:9 canvases of three grounds. The shipped
    captioners pad an image to a square (`pad_to_square` in model_index.json) where the image processor alone would
    squash it: squashed, a 2:1 image's object was named 15 times in 40, padded 40 (16:9: 20 and 40)."""
    import random

    from PIL import Image

    from genvl.world.sprites import COLOURS, OBJECTS, sprite

    pipeline = CaptionPipeline.from_pretrained(DEFAULT_CAPTION_MODEL)
    assert pipeline.config.pad_to_square
    rng = random.Random(11)
    images, names = [], []
    for width, height in [(128, 64), (64, 128), (160, 90)] * 10:
        ground = rng.choice([(255, 255, 255), (20, 20, 30), (230, 220, 240)])
        image = Image.new("RGB", (width, height), ground)
        name = rng.choice(sorted(OBJECTS))
        colour = rng.choice([c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], ground)) >= 100])
        drawn = sprite(name, colour, round(min(width, height) * rng.uniform(0.3, 0.6)))
        image.paste(drawn, (rng.randint(0, width - drawn.width), rng.randint(0, height - drawn.height)), drawn)
        images.append(image)
        names.append(name)
    captions = [c[0] for c in pipeline(images, num_beams=3).captions]
    named = [name in c.replace(",", " ").split() or OBJECTS[name][1] in c.split() for name, c in zip(names, captions)]
    assert sum(named) >= 0.85 * len(named), list(zip(names, captions))


def test_the_default_captioner_says_where_one_object_lies_in_wide_and_tall_pictures():
    """Padded to a square, a wide picture's thirds are not the square's thirds, and on a plain ground the padded
    square is all the pixels say. The shipped captioner's encoder is told where the picture lies in its square
    (`picture_positions`), so it places one object by the picture's own thirds: 3:2, 2:3, 2:1 and 1:2 pictures,
    the object's centre well inside one of the nine cells, on a light or a dark ground. It places all 40; the
    captioner before picture positions placed 29."""
    import random

    from genvl.world.scenes import place_word
    from genvl.world.sprites import COLOURS, OBJECTS, sprite

    pipeline = CaptionPipeline.from_pretrained(DEFAULT_CAPTION_MODEL)
    rng = random.Random(23)
    images, places = [], []
    for width, height in [(150, 100), (100, 150), (120, 60), (60, 120)] * 10:
        ground = rng.choice([(250, 250, 250), (235, 230, 215), (30, 30, 40)])
        image = Image.new("RGB", (width, height), ground)
        colour = rng.choice([c for c in sorted(COLOURS) if np.linalg.norm(np.subtract(COLOURS[c], ground)) >= 120])
        drawn = sprite(rng.choice(sorted(OBJECTS)), colour, round(min(width, height) * 0.3))
        column, row = rng.randrange(3), rng.randrange(3)
        x = (column + 0.5 + rng.uniform(-0.2, 0.2)) * width / 3 - drawn.width / 2
        y = (row + 0.5 + rng.uniform(-0.2, 0.2)) * height / 3 - drawn.height / 2
        x, y = min(max(round(x), 0), width - drawn.width), min(max(round(y), 0), height - drawn.height)
        image.paste(drawn, (x, y), drawn)
        images.append(image)
        places.append(place_word((x + drawn.width / 2) * 64 / width, (y + drawn.height / 2) * 64 / height))
    captions = [c[0] for c in pipeline(images, num_beams=3).captions]
    said = [parse_caption(c) or [] for c in captions]
    right = [len(facts) == 1 and facts[0][4] == place for facts, place in zip(said, places)]
    assert sum(right) >= 0.85 * len(right), list(zip(places, captions))


# questions whose answers the example images' names state
EXAMPLE_QUESTIONS = [
    ("three_green_butterflies", "how many butterflies are there?", "three"),
    ("three_green_butterflies", "is there a frog?", "no"),
    ("a_large_orange_frog_at_the_top", "is there a frog?", "yes"),
    ("a_large_orange_frog_at_the_top", "what colour is the frog?", "orange"),
    ("an_orange_car_to_the_left_of_a_blue_cherry", "what colour is the cherry?", "blue"),
    ("an_orange_car_to_the_left_of_a_blue_cherry", "what is to the left of the cherry?", "car"),
    ("an_orange_rabbit_above_a_red_horse", "what is above the horse?", "rabbit"),
    ("an_orange_rabbit_above_a_red_horse", "how many horses are there?", "one"),
    ("a_large_pink_ball_in_the_centre", "what colour is the ball?", "pink"),
]


def test_shipped_vqa_model_answers_what_the_example_images_show():
    pipeline = CaptionPipeline.from_pretrained(shipped_pipeline("genvl-vqa-small"))
    images = [EXAMPLES / f"{name}.png" for name, _, _ in EXAMPLE_QUESTIONS]
    answers = pipeline(images, question=[question for _, question, _ in EXAMPLE_QUESTIONS]).captions
    said = [(question, found[0], answer) for (_, question, answer), found in zip(EXAMPLE_QUESTIONS, answers)]
    assert sum(found == answer for _, found, answer in said) >= len(said) - 1, said


def test_shipped_vqa_model_answers_about_scenes_saved_as_jpeg(tmp_path):
    """Its third stage trained on pictures saved as JPEG: 2,000 test questions about renders saved at quality 30
    are answered 0.915 (stage two: 0.843). Here 200 questions about 120 fresh scenes saved at quality 30: 0.925,
    stage two 0.825."""
    from genvl.evaluation.vqa import evaluate_vqa

    data = write_imagefolder(tmp_path / "wide", 120, seed=2036, split="test", world="wide")
    for record in read_metadata(data):
        buffer = io.BytesIO()
        Image.open(data / record["file_name"]).convert("RGB").save(buffer, format="JPEG", quality=30)
        Image.open(buffer).convert("RGB").save(data / record["file_name"])
    report = evaluate_vqa(CaptionPipeline.from_pretrained(shipped_pipeline("genvl-vqa-small")), data, 200, seed=0)
    assert report["accuracy"] >= 0.88, report["kinds"]


def test_shipped_captioner_samples_the_same_captions_whatever_the_batch_size():
    """Each image samples with its own generator seeded S + i: the texts do not depend on the batch (the scores
    may, by float rounding: the batch changes the matrix kernels' shapes)."""
    pipeline = CaptionPipeline.from_pretrained(DEFAULT_CAPTION_MODEL)
    paths = sorted(EXAMPLES.glob("*.png"))

    def sample(sizes):
        texts, start = [], 0
        for size in sizes:
            generators = [torch.Generator().manual_seed(seed) for seed in range(start, start + size)]
            out = pipeline(
                paths[start : start + size],
                do_sample=True,
                temperature=1.5,
                num_return_sequences=2,
                generator=generators,
            )
            texts += out.captions
            start += size
        return texts

    whole = sample([len(paths)])
    assert len({tuple(t) for t in whole}) > 1  # hot sampling: the images get different captions
    for sizes in ([1] * len(paths), [4, len(paths) - 4]):
        assert sample(sizes) == whole


@pytest.mark.parametrize(
    "case",
    [
        dict(num_beams=1),
        dict(num_beams=5),
        dict(num_beams=4, early_stopping=True, length_penalty=0.6),
        dict(num_beams=3, early_stopping="never", num_return_sequences=2),
    ],
)
@pytest.mark.parametrize("folder", [SMALL, WIDE], ids=["small", "wide"])
# a ViT encoder, and the grid encoder (a genvl class, registered with transformers)
def test_shipped_captioner_drops_finished_images_and_matches_transformers(case, folder, monkeypatch):
    """Captions of different lengths end (greedy) or settle (beam search) at different steps; those images leave
    the decoder, and the rest must still decode exactly as transformers' generate() does."""
    from genvl.generation.decoder import CachedDecoder
    from genvl.io.images import load_image

    pipeline = CaptionPipeline.from_pretrained(folder)
    paths = sorted(EXAMPLES.glob("*.png"))
    pixel_values = pipeline.preprocess([load_image(p) for p in paths])
    drops, keep = [], CachedDecoder.keep

    def counted_keep(self, rows, images):
        drops.append(len(images))
        return keep(self, rows, images)

    monkeypatch.setattr(CachedDecoder, "keep", counted_keep)
    settings = pipeline.settings(**case)
    ours = generate(pipeline.model, pixel_values, settings)
    assert drops and min(drops) < len(paths)
    eos = settings.eos_token_id
    with torch.no_grad():
        theirs = pipeline.model.generate(
            pixel_values=pixel_values,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **case,
        )
    expected = [row[1:].tolist() for row in theirs.sequences]
    expected = [row[: row.index(eos)] if eos in row else row for row in expected]
    assert [seq for seqs in ours.sequences for seq in seqs] == expected
    assert len({len(seq) for seq in expected}) > 1  # the images end at different steps
    scores = torch.tensor([s for row in ours.scores for s in row])
    if settings.num_beams > 1:
        torch.testing.assert_close(scores, theirs.sequences_scores, rtol=1e-4, atol=1e-4)
    else:  # greedy scores are genvl's own (sums of log-probabilities): each must equal the image's score alone
        alone = [generate(pipeline.model, pixel_values[i : i + 1], settings).scores[0][0] for i in range(len(paths))]
        torch.testing.assert_close(scores, torch.tensor(alone), rtol=1e-5, atol=1e-5)


def longest_repeated_run(ids: list[int]) -> int:
    """The length of the longest run of tokens that occurs twice in `ids` (0 if none does)."""
    return max(
        (
            n
            for n in range(1, len(ids))
            if len({tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}) < len(ids) - n + 1
        ),
        default=0,
    )


def test_default_decoding_never_bars_a_true_caption():
    """The shipped captioner's default `no_repeat_ngram_size` bans a run of tokens from coming twice: no caption the
    world writes, in any phrasing or mirrored, repeats such a run, so the ban only stops one word repeated to the
    token limit. A run one shorter does repeat (rows: ", a red ... , a red"), so a smaller ban would bar true ones.
    Its `bad_words_ids` ban a word of the world twice in a row, which no caption of the world writes either."""
    pipeline = CaptionPipeline.from_pretrained(DEFAULT_CAPTION_MODEL)
    assert pipeline.settings().no_repeat_ngram_size == NO_REPEAT_NGRAM_SIZE
    tokenizer = load_tokenizer(DEFAULT_CAPTION_MODEL / "tokenizer")
    bans = pipeline.settings().bad_words_ids
    assert bans == tuple(tuple(ban) for ban in repeated_word_bans(tokenizer))
    assert {tokenizer.decode(ban) for ban in bans} >= {" gift gift", " frog frog", " red red", " two two"}
    lengths = {len(ban) for ban in bans}

    def barred_in(caption: str) -> bool:
        ids = tokenizer(caption).input_ids
        return bool({tuple(ids[i : i + n]) for n in lengths for i in range(len(ids) - n + 1)} & set(bans))

    assert barred_in("a brown umbrella, an elephant, a yellow trophy and a gift gift gift")
    longest, barred = 0, []
    for world in ("wide", "classic"):
        for split in ("train", "test"):
            for scene in generate_scenes(1500, seed=3, split=split, world=world):
                for caption in scene_captions(scene) + scene_captions(mirror_scene(scene)):
                    longest = max(longest, longest_repeated_run(tokenizer(caption).input_ids))
                    barred += [caption] if barred_in(caption) else []
    assert longest == NO_REPEAT_NGRAM_SIZE - 1
    assert not barred, barred[:3]


@pytest.mark.parametrize("folder", [SMALL, WIDE], ids=["small", "wide"])
def test_shipped_folder_is_safetensors_only(folder):
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    assert "model.safetensors" in files and "README.md" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]


def test_shipped_judge_reads_held_out_renders():
    judge = SceneJudge.from_pretrained(DEFAULT_JUDGE).eval()
    scenes = list(generate_scenes(200, seed=123, split="test", world="classic"))
    images = torch.stack([torch.from_numpy(np.asarray(render_scene(scene, 64))).permute(2, 0, 1) for scene in scenes])
    detections = judge.detect(images.float() / 127.5 - 1)
    report = category_accuracy([judge_scene(scene, found) for scene, found in zip(scenes, detections)])
    assert report["overall"] >= 0.97, report
    # a plain background holds nothing
    assert judge.detect(torch.full((1, 3, 64, 64), 0.9)) == [[]]


@pytest.mark.parametrize(
    "style",
    [{"background": "gradient"}, {"size": "mid"}, {"background": "dark"}, {"palette": "original"}],
    ids=["gradient", "mid", "dark", "original"],
)
def test_shipped_judge_reads_the_wide_world_held_out_families_included(style):
    judge = SceneJudge.from_pretrained(DEFAULT_JUDGE).eval()
    scenes = list(generate_scenes(100, seed=321, split="test", style=style))
    images = torch.stack([torch.from_numpy(np.asarray(render_scene(scene, 64))).permute(2, 0, 1) for scene in scenes])
    report = detection_report(judge, images, scenes)["overall"]
    assert report["f1"] >= 0.93 and report["colour_accuracy"] >= 0.97, report


def test_shipped_text_to_image_pipeline():
    from genvl.cli.image import DEFAULT_T2I_MODEL
    from genvl.pipelines.text_to_image import TextToImagePipeline

    files = [p.name for p in DEFAULT_T2I_MODEL.rglob("*") if p.is_file()]
    assert "README.md" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    pipe = TextToImagePipeline.from_pretrained(DEFAULT_T2I_MODEL)
    pipe.set_progress_bar_config(disable=True)
    prompts = [
        "a large red apple at the top",
        "three blue cars",
        "a green cat to the left of a yellow star",
        "a pink heart, a gray key and a brown dog",
    ]
    # the prior's image embedding of each prompt is closest to that prompt's text embedding
    with torch.no_grad():
        text = pipe.encode_prompt([""] * len(prompts) + prompts)
        embeds = pipe.run_prior(text, 25, 4.0, [torch.Generator().manual_seed(i) for i in range(len(prompts))])
    similarity = embeds @ text.prompts().embeds.T
    assert (similarity.argmax(dim=1) == torch.arange(len(prompts))).all(), similarity
    images = pipe(
        prompts[:1],
        num_images_per_prompt=2,
        prior_num_inference_steps=4,
        decoder_num_inference_steps=4,
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        output_type="np",
    ).images
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0.01


def test_shipped_text_to_image_pipeline_draws_a_prompt_as_people_type_it():
    """ "a red bicycle" is one red bicycle and nothing else: the shipped pipeline rewrites the prompt into the
    caption of a classic scene that it asks for (0.93-0.96 strict single object on the free suite's held-out
    prompts), where drawn as typed it drew three bicycles or three moons. 6 images of 8 leaves room for chance."""
    from genvl.cli.image import DEFAULT_T2I_MODEL
    from genvl.evaluation.free_prompts import evaluate_prompts
    from genvl.pipelines.text_to_image import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(DEFAULT_T2I_MODEL, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.prompt_world == "classic"
    judge = SceneJudge.from_pretrained(DEFAULT_JUDGE).eval()
    report = evaluate_prompts(pipe, judge, ["a red bicycle"], images_per_prompt=8, batch_size=8, seed=100)
    assert report["prompts"][0]["strict"] >= 0.75, report


def test_shipped_reranker_reads_which_object_is_where():
    """The shipped pipeline's reranker prefers a fresh two-object render's caption to the caption with the two
    objects exchanged, which its CLIP cannot (it reads captions as bags of words)."""
    from genvl.cli.image import DEFAULT_T2I_MODEL
    from genvl.evaluation.retrieval import order_accuracy
    from genvl.models.clip import embed_images
    from genvl.pipelines.text_to_image import TextToImagePipeline
    from genvl.world.captions import scene_captions

    pipe = TextToImagePipeline.from_pretrained(DEFAULT_T2I_MODEL)
    scenes = generate_scenes(400, seed=321, split="test", world="classic")
    scenes = [s for s in scenes if s["layout"] in ("pair_h", "pair_v")]
    records = [{"scene": scene, "text": scene_captions(scene)[0]} for scene in scenes]
    images = torch.stack([torch.from_numpy(np.asarray(render_scene(scene, 64))).permute(2, 0, 1) for scene in scenes])
    accuracy = {}
    for name, model, tokenizer in (
        ("reranker", pipe.reranker, pipe.reranker_tokenizer),
        ("clip", pipe.clip, pipe.tokenizer),
    ):
        embeds = embed_images(model, pipe.image_processor, images)
        accuracy[name] = order_accuracy(model, tokenizer, records, embeds, 32, 256)
    assert accuracy["reranker"]["order_images"] >= 100, accuracy
    assert accuracy["reranker"]["order_accuracy"] >= 0.95 and accuracy["clip"]["order_accuracy"] <= 0.65, accuracy


def test_shipped_wide_captioner_states_fresh_scenes_of_every_style_family(tmp_path):
    """genvl-caption-wide on scenes no run saw (another seed than data/wide's), the held-out style families
    among them: 0.951 exact on 2,000 test scenes (0.904 on held-out families), so 0.85 of 60 leaves room for
    chance and none for a model that reads only some families."""
    data = write_imagefolder(tmp_path / "wide", 60, seed=2026, split="test", world="wide")
    records = read_metadata(data)
    pipeline = CaptionPipeline.from_pretrained(WIDE)
    captions = pipeline([data / r["file_name"] for r in records]).captions
    right = [parse_caption(c[0]) == scene_facts(r["scene"]) for r, c in zip(records, captions)]
    unseen = [ok for r, ok in zip(records, right) if held_out(r["scene"])]
    assert sum(right) >= 0.85 * len(right), [c[0] for c in captions]
    assert len(unseen) >= 10 and sum(unseen) >= 0.75 * len(unseen)


def test_the_default_captioner_reads_scenes_on_graded_grounds_no_run_trained_on(tmp_path):
    """Graded grounds are a style family training holds out. Stage three (`--augment letterbox`) raised the default
    captioner's exact match on the test scenes drawn on them from 0.860 to 0.937 (271 scenes). Here 60 fresh ones
    (another seed than data/wide's): it states 58, the weights before it 48 (seed 2038: 58 and 52)."""
    data = write_imagefolder(
        tmp_path / "wide", 60, seed=2037, split="test", world="wide", style={"background": "gradient"}
    )
    records = read_metadata(data)
    captions = CaptionPipeline.from_pretrained(WIDE)([data / r["file_name"] for r in records]).captions
    right = [parse_caption(c[0]) == scene_facts(r["scene"]) for r, c in zip(records, captions)]
    assert sum(right) >= 0.9 * len(right), [c[0] for c in captions]


def test_the_default_captioner_reads_scenes_saved_as_jpeg(tmp_path):
    """People save pictures as JPEG, whose 8x8 blocks are the size of a small object at 64 px. Fine-tuned with
    `--augment jpeg`, the default states 0.883 of 1,000 test scenes saved at quality 50 (the weights before it:
    0.783; `examples/saved_images.py`). Here 60 fresh scenes, held-out families among them, saved at quality 50:
    it states 57 (59 as PNG), the weights before it 46."""
    data = write_imagefolder(tmp_path / "wide", 60, seed=2033, split="test", world="wide")
    records = read_metadata(data)
    images = []
    for record in records:
        buffer = io.BytesIO()
        Image.open(data / record["file_name"]).convert("RGB").save(buffer, format="JPEG", quality=50)
        images.append(Image.open(buffer))
    captions = CaptionPipeline.from_pretrained(WIDE)(images).captions
    right = [parse_caption(c[0]) == scene_facts(r["scene"]) for r, c in zip(records, captions)]
    assert sum(right) >= 0.85 * len(right), [c[0] for c in captions]
