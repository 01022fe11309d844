"""Smoke test: the training script trains a tiny captioner on fresh renders, checkpoints, resumes and saves."""

import json
import shutil
from pathlib import Path

import pytest

from genvl.models.captioner import CaptionerArchitecture
from genvl.pipelines.caption import CaptionPipeline
from genvl.world.dataset import write_imagefolder

from .conftest import TINY, save_tiny_judge
from .scripts import recipe
from .test_output_safety import snapshot

export_captioner = recipe("export_captioner")
train_captioner = recipe("train_captioner")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return write_imagefolder(root, 48, seed=0, split="train", resolution=32)


def train_args(data, out, steps, arch_file, **extra):
    args = [
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--architecture",
        str(arch_file),
        "--resolution",
        "32",
        "--vocab_size",
        "300",
        "--train_batch_size",
        "8",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "2",
        "--lr_warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--learning_rate",
        "3e-3",
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def test_train_save_load_and_resume(tiny_data, tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    losses = train_captioner.main(train_args(tiny_data, tmp_path / "run", 6, arch_file))
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["max_train_steps"] == 6
    pipeline = CaptionPipeline.from_pretrained(tmp_path / "run")
    out = pipeline([tiny_data / "000000.png"], max_new_tokens=5)
    assert isinstance(out.captions[0][0], str)
    # the weights, the checkpoints' included, are as readable as the configs beside them
    weights = sorted((tmp_path / "run").rglob("*.safetensors"))
    assert {w.relative_to(tmp_path / "run").parts[0] for w in weights} >= {"model", "checkpoint-4", "checkpoint-6"}
    assert {oct(w.stat().st_mode & 0o777) for w in weights} == {
        oct((tmp_path / "run" / "train_config.json").stat().st_mode & 0o777)
    }

    # a run cut off after its step-4 checkpoint and resumed retraces the straight run's last steps
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-4", cut / "checkpoint-4")
    shutil.copytree(tmp_path / "run" / "tokenizer", cut / "tokenizer")
    (cut / ".checkpoint-6.tmp").mkdir()  # a half-written checkpoint is ignored
    resumed = train_captioner.main(train_args(tiny_data, cut, 6, arch_file, resume_from_checkpoint="latest"))
    # the losses of steps 1-4 come from the checkpoint, so the run reports its whole history
    assert resumed[:4] == losses[:4] and resumed == pytest.approx(losses, rel=1e-4)


def test_export_builds_the_architecture_the_run_saved(tiny_data, tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    run = tmp_path / "run"
    train_captioner.main(train_args(tiny_data, run, 2, arch_file))
    config = json.loads((run / "train_config.json").read_text())
    saved = CaptionerArchitecture.from_dict(config["architecture_config"])
    assert saved == CaptionerArchitecture(**{**TINY.to_dict(), "image_size": 32})  # --resolution 32 applied
    # the file it was read from changes or goes away: the export still builds what the run trained
    arch_file.write_text(json.dumps({**TINY.to_dict(), "decoder_layers": TINY.decoder_layers + 1}))
    out = export_captioner.main(["--run", str(run), "--out", str(tmp_path / "export")])
    assert CaptionPipeline.from_pretrained(out).model.config.decoder.n_layer == TINY.decoder_layers
    # a run saved before runs kept their architecture is built from the file its config names
    del config["architecture_config"]
    (run / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights do not match the run's architecture"):
        export_captioner.main(["--run", str(run), "--out", str(tmp_path / "old")])


def test_augmented_run_trains_and_resumes_to_the_same_losses(tiny_data, tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    plain = train_captioner.main(train_args(tiny_data, tmp_path / "plain", 4, arch_file))
    args = dict(augment="flip,shift,squash,letterbox,light")
    losses = train_captioner.main(train_args(tiny_data, tmp_path / "run", 4, arch_file, **args))
    assert len(losses) == 4 and losses != plain  # the images (and, flipped, the captions) differ
    settings = [json.loads((tmp_path / name / "model_index.json").read_text()) for name in ("plain", "run")]
    assert [(s["pad_to_square"], s["pad_fill"]) for s in settings] == [(True, "border"), (True, "contrast")]
    exported = export_captioner.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "e"), "--no-ema"])
    assert json.loads((exported / "model_index.json").read_text())["pad_fill"] == "contrast"  # as the run saved it
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoint-2", cut / "checkpoint-2")
    shutil.copytree(tmp_path / "run" / "tokenizer", cut / "tokenizer")
    resumed = train_captioner.main(train_args(tiny_data, cut, 4, arch_file, resume_from_checkpoint="latest", **args))
    assert resumed == pytest.approx(losses, rel=1e-4)  # the same draws after a resume


def test_augmentations_that_read_scenes_need_them(tmp_path):
    data = tmp_path / "plain"
    data.mkdir()
    shutil.copy(Path(__file__).parent.parent / "examples" / "images" / "three_green_butterflies.png", data / "a.png")
    records = [{"file_name": "a.png", "text": "three green butterflies"}] * 1
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = train_args(data, tmp_path / "run", 1, "configs/captioner_small.json", augment="flip", train_batch_size=1)
    with pytest.raises(ValueError, match="flip, shift, squash and letterbox need each training image"):
        train_captioner.main(args)
    with pytest.raises(SystemExit):
        train_captioner.main(train_args(data, tmp_path / "run2", 1, "configs/captioner_small.json", augment="zoom"))
    with pytest.raises(ValueError, match="--pad_fill must be one of border, contrast, got 'black'"):
        train_captioner.TrainCaptionerArgs(train_data_dir=str(data), pad_fill="black")


def test_unknown_caption_column_is_named(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="column 'caption' not found; available columns"):
        train_captioner.main(
            train_args(tiny_data, tmp_path / "run", 2, "configs/captioner_small.json", caption_column="caption")
        )


def test_lora_fine_tune_saves_an_adapter(tiny_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    train_captioner.main(train_args(tiny_data, tmp_path / "base", 2, arch_file))
    base_weights = load_file(tmp_path / "base" / "model" / "model.safetensors")
    losses = train_captioner.main(
        train_args(
            tiny_data,
            tmp_path / "lora",
            6,
            arch_file,
            rank=2,
            lora_alpha=4,
            pretrained_model_name_or_path=tmp_path / "base",
            learning_rate=1e-2,
        )
        + ["--no-use_ema"]
    )
    assert len(losses) == 6 and all(loss == loss for loss in losses)
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 4
    assert not (tmp_path / "lora" / "model_index.json").exists()
    pipeline = CaptionPipeline.from_pretrained(tmp_path / "base")
    pixels = torch.zeros(1, 3, 32, 32)
    ids = torch.tensor([[0, 3, 4]])
    before = pipeline.model(pixel_values=pixels, decoder_input_ids=ids).logits
    pipeline.load_lora_weights(tmp_path / "lora")
    assert (pipeline.model(pixel_values=pixels, decoder_input_ids=ids).logits - before).abs().max() > 1e-4
    # only the adapter trained: the base folder is untouched
    assert all(
        torch.equal(base_weights[k], v) for k, v in load_file(tmp_path / "base" / "model" / "model.safetensors").items()
    )
    # the target modules can be chosen: GPT-2's MLP as well
    train_captioner.main(
        train_args(
            tiny_data,
            tmp_path / "mlp",
            1,
            arch_file,
            rank=2,
            lora_target_modules="c_attn,c_fc",
            pretrained_model_name_or_path=tmp_path / "base",
        )
    )
    assert sorted(json.loads((tmp_path / "mlp" / "adapter_config.json").read_text())["target_modules"]) == [
        "c_attn",
        "c_fc",
    ]
    for bad in (
        dict(rank=2),
        dict(adapter="ia3", rank=2, pretrained_model_name_or_path=tmp_path / "base"),
        dict(adapter="ia3", lora_target_modules="c_fc", pretrained_model_name_or_path=tmp_path / "base"),
        dict(adapter="prefix", pretrained_model_name_or_path=tmp_path / "base"),
    ):
        with pytest.raises(SystemExit):
            train_captioner.main(train_args(tiny_data, tmp_path / "bad", 2, arch_file, **bad))


def test_distillation_loss_is_the_caption_loss_at_alpha_0_and_the_soft_targets_pull_towards_the_teacher(
    tiny_tokenizer,
):
    import torch

    from genvl.models.captioner import tokenize_captions
    from genvl.training.loop import caption_loss, distillation_loss

    from .conftest import get_dummy_components

    student, _ = get_dummy_components(tiny_tokenizer, seed=1)
    teacher, _ = get_dummy_components(tiny_tokenizer, seed=2)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    inputs, labels = tokenize_captions(tiny_tokenizer, ["a red apple", "two blue cars"], 32)
    inputs, labels = inputs[:, :8], labels[:, :8]
    tokens = (labels != -100).sum()
    plain = caption_loss(student, pixels, inputs, labels, tokens)
    torch.testing.assert_close(distillation_loss(student, teacher, pixels, inputs, labels, tokens, 0.0, 2.0), plain)
    # a student that is its own teacher has nothing to learn from the soft targets
    halved = distillation_loss(student, student, pixels, inputs, labels, tokens, 0.5, 2.0)
    torch.testing.assert_close(halved, plain / 2, rtol=1e-4, atol=1e-5)
    # against another teacher the soft term is positive, and its gradient reaches the student
    soft = distillation_loss(student, teacher, pixels, inputs, labels, tokens, 1.0, 2.0)
    assert float(soft.detach()) > 0
    soft.backward()
    assert student.decoder.lm_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_student_is_distilled_with_the_teachers_tokenizer(tiny_data, tiny_pipeline_dir, tmp_path, monkeypatch):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps({**TINY.to_dict(), "encoder_layers": 1, "decoder_layers": 1}))
    teacher = CaptionPipeline.from_pretrained(tiny_pipeline_dir)
    run = tmp_path / "student"
    build, saved_before_training = train_captioner.build_captioner, []

    def spy(*args):  # the tokenizer must be on disk before the first step: a checkpoint exports mid-run
        saved_before_training.append((run / "tokenizer" / "tokenizer.json").is_file())
        return build(*args)

    monkeypatch.setattr(train_captioner, "build_captioner", spy)
    losses = train_captioner.main(
        train_args(tiny_data, run, 3, arch_file, teacher_model_name_or_path=tiny_pipeline_dir)
    )
    assert len(losses) == 3 and saved_before_training == [True]
    student = CaptionPipeline.from_pretrained(run)
    assert student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    assert student.model.config.decoder.n_layer == 1
    exported = CaptionPipeline.from_pretrained(export_captioner.main(["--run", str(run), "--out", str(tmp_path / "e")]))
    assert exported.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    with pytest.raises(SystemExit):  # a usage error, exit code 2
        train_captioner.main(
            train_args(
                tiny_data,
                tmp_path / "bad",
                1,
                arch_file,
                teacher_model_name_or_path=tiny_pipeline_dir,
                pretrained_model_name_or_path=tiny_pipeline_dir,
            )
        )


def test_a_fresh_captioner_reads_with_a_judges_frozen_body(tiny_data, tmp_path, capsys):
    import torch

    from genvl.models.grid_encoder import GridEncoder

    judge = save_tiny_judge(tiny_data, tmp_path / "judge")
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    flags = train_args(tiny_data, tmp_path / "run", 4, arch_file, encoder_from_judge=tmp_path / "judge", augment="flip")
    losses = train_captioner.main([*flags, "--freeze_encoder"])
    assert len(losses) == 4 and losses[-1] < losses[0]
    pipeline = CaptionPipeline.from_pretrained(tmp_path / "run")
    encoder = pipeline.model.encoder
    assert isinstance(encoder, GridEncoder) and pipeline.model.enc_to_dec_proj.in_features == 16
    for key, value in judge.body.state_dict().items():  # frozen: the judge's body, as it was
        assert torch.equal(encoder.body.state_dict()[key], value), key
    assert isinstance(pipeline([tiny_data / "000000.png"], max_new_tokens=5).captions[0][0], str)
    # its last checkpoint exports with the grid encoder and the EMA of the weights it trained: the final folder's
    exported = CaptionPipeline.from_pretrained(export_captioner.main(["--run", str(tmp_path / "run")]))
    final = pipeline.model.state_dict()
    assert all(torch.equal(value, final[key]) for key, value in exported.model.state_dict().items())

    # an adapter trains on a saved model as it is: a new encoder under it is refused
    bad = train_args(tiny_data, tmp_path / "bad", 1, arch_file, rank=2, pretrained_model_name_or_path=tmp_path / "run")
    with pytest.raises(SystemExit):
        train_captioner.main([*bad, "--freeze_encoder"])
    assert "--adapter lora trains the adapter alone" in capsys.readouterr().err


def test_picture_positions_train_on_letterboxes_padded_as_the_saved_pipeline_pads(tiny_data, tmp_path, capsys):
    """--picture_positions: the grid encoder reads its cells' positions within the picture, trained on bands
    padded with --letterbox_fill, which the saved pipeline then pads with; its export keeps both. A ViT
    captioner has no cell positions to read so, and is refused."""
    save_tiny_judge(tiny_data, tmp_path / "judge")
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    extra = {"encoder_from_judge": tmp_path / "judge", "augment": "letterbox", "letterbox_fill": "border"}
    flags = train_args(tiny_data, tmp_path / "run", 2, arch_file, **extra)
    assert len(train_captioner.main([*flags, "--picture_positions"])) == 2
    for folder in (tmp_path / "run", export_captioner.main(["--run", str(tmp_path / "run")])):
        pipeline = CaptionPipeline.from_pretrained(folder)
        assert pipeline.model.encoder.config.picture_positions and pipeline.config.pad_fill == "border"
        assert pipeline.preprocess([tiny_data / "000000.png"]).shape == (1, 4, 32, 32)
    # without --letterbox_fill, the bands are padded, and the pipeline pads, with the contrast fill as before
    flags = train_args(tiny_data, tmp_path / "contrast", 1, arch_file, encoder_from_judge=tmp_path / "judge")
    train_captioner.main([*flags, "--augment", "letterbox"])
    pipeline = CaptionPipeline.from_pretrained(tmp_path / "contrast")
    assert pipeline.config.pad_fill == "contrast" and not pipeline.model.encoder.config.picture_positions

    # a fresh ViT captioner is refused before anything is written; a saved one once it is loaded
    with pytest.raises(SystemExit):
        train_captioner.main([*train_args(tiny_data, tmp_path / "vit", 1, arch_file), "--picture_positions"])
    assert "--picture_positions needs a grid encoder" in capsys.readouterr().err and not (tmp_path / "vit").exists()
    train_captioner.main(train_args(tiny_data, tmp_path / "vit", 1, arch_file))
    flags = train_args(tiny_data, tmp_path / "vit-on", 1, arch_file, pretrained_model_name_or_path=tmp_path / "vit")
    with pytest.raises(ValueError, match="picture positions need a grid encoder .* this one is 'vit'"):
        train_captioner.main([*flags, "--picture_positions"])
    with pytest.raises(SystemExit):
        train_captioner.main([*train_args(tiny_data, tmp_path / "bad", 1, arch_file, letterbox_fill="black")])
    assert "--letterbox_fill must be one of border, contrast, got 'black'" in capsys.readouterr().err


def test_an_output_dir_that_is_not_a_run_or_is_an_input_is_refused_untouched(tiny_data, tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    run = tmp_path / "run"
    train_captioner.main(train_args(tiny_data, run, 2, arch_file))
    mine = tmp_path / "mine"
    (mine / "tokenizer").mkdir(parents=True)
    (mine / "tokenizer" / "vocab.json").write_text("{}")
    (mine / "notes.txt").write_text("mine")
    inside_data = tiny_data / "run"
    cases = [
        (mine, {}, "holds files and is not a training run's folder"),
        (arch_file, {}, "exists and is not a folder"),
        (run, {"pretrained_model_name_or_path": run}, "would write into --pretrained_model_name_or_path"),
        (inside_data, {}, "would write into --train_data_dir"),
        (mine, {"teacher_model_name_or_path": run}, "holds files and is not a training run's folder"),
    ]
    for out, extra, message in cases:
        before = snapshot(tmp_path), snapshot(tiny_data)
        with pytest.raises((FileExistsError, ValueError), match=message):
            train_captioner.main(train_args(tiny_data, out, 2, arch_file, **extra))
        assert (snapshot(tmp_path), snapshot(tiny_data)) == before
    # inside a run's folder, a tokenizer folder genvl did not save is not replaced either
    (run / "tokenizer").rename(run / "saved")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="tokenizer: exists and is not a saved tokenizer"):
        train_captioner.main(train_args(tiny_data, run, 2, arch_file))
    assert (run / "tokenizer" / "notes.txt").read_text() == "mine"
    # an export, too, writes over its own earlier export and a caption pipeline's folder only
    shutil.rmtree(run / "tokenizer")
    (run / "saved").rename(run / "tokenizer")
    first = export_captioner.main(["--run", str(run)])
    assert export_captioner.main(["--run", str(run)]) == first == run / "export-2"
    for folder, message in ((mine, "holds files and is not a CaptionPipeline folder"), (tmp_path, "is or holds")):
        before = snapshot(tmp_path)
        with pytest.raises((FileExistsError, ValueError), match=message):
            export_captioner.main(["--run", str(run), "--out", str(folder)])
        assert snapshot(tmp_path) == before
    # a new, an empty and a run's own folder are written
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        train_captioner.main(train_args(tiny_data, out, 2, arch_file))
        assert (out / "model" / "config.json").is_file()


def test_a_checkpoint_of_another_run_is_not_resumed(tiny_data, tmp_path):
    # its weights were paired with the new run's freshly trained tokenizer, silently
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(TINY.to_dict()))
    train_captioner.main(train_args(tiny_data, tmp_path / "a", 2, arch_file))
    other = train_args(tiny_data, tmp_path / "b", 4, arch_file, resume_from_checkpoint=tmp_path / "a" / "checkpoint-2")
    with pytest.raises(ValueError, match="checkpoint-2: a checkpoint of another run than .*b; resume that run in"):
        train_captioner.main(other)
    with pytest.raises(ValueError, match="a checkpoint of another run"):
        export_captioner.main(["--run", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "a" / "checkpoint-2")])
