"""Smoke test: each text-to-image training script trains a tiny model for a few steps on fresh renders, and
the assembled pipeline generates images."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genvl.io.imagefolder import read_metadata
from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.training.autoencoder import reconstruction_loss
from genvl.training.contrastive import contrastive_loss, swapped_phrasings
from genvl.training.data import phrasing_table, with_prompts
from genvl.training.diffusion import decoder_scheduler, min_snr_weight
from genvl.training.features import cached_features, frozen_text_states
from genvl.world.captions import swapped_caption
from genvl.world.dataset import write_imagefolder

from .conftest import TINY_CLIP
from .scripts import recipe
from .test_output_safety import snapshot

export_checkpoint = recipe("export_checkpoint")
export_text_to_image = recipe("export_text_to_image")
train_autoencoder = recipe("train_autoencoder")
train_clip = recipe("train_clip")
train_decoder = recipe("train_decoder")
train_prior = recipe("train_prior")

TINY_UNCLIP = dict(
    prior_layers=1,
    prior_heads=2,
    prior_head_dim=8,
    decoder_channels=[16, 32],
    decoder_attention=[False, True],
    decoder_head_dim=8,
    decoder_cross_dim=16,
    image_tokens=2,
    latent_channels=4,
    autoencoder_channels=[16, 16, 16],
)


def common(data, out, steps=3, batch=8):
    return [
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--train_batch_size",
        str(batch),
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    data = write_imagefolder(root / "world", 40, seed=0, split="train", resolution=32)
    (root / "clip.json").write_text(json.dumps(TINY_CLIP))
    (root / "unclip.json").write_text(json.dumps(TINY_UNCLIP))
    losses = {
        "clip": train_clip.main(
            common(data, root / "clip", steps=6) + ["--architecture", str(root / "clip.json"), "--vocab_size", "300"]
        ),
        "prior": train_prior.main(
            common(data, root / "prior")
            + ["--clip_model_name_or_path", str(root / "clip"), "--architecture", str(root / "unclip.json")]
        ),
        "autoencoder": train_autoencoder.main(
            common(data, root / "ae") + ["--architecture", str(root / "unclip.json")]
        ),
        "decoder": train_decoder.main(
            common(data, root / "decoder")
            + [
                "--clip_model_name_or_path",
                str(root / "clip"),
                "--vae_model_name_or_path",
                str(root / "ae" / "vae"),
                "--architecture",
                str(root / "unclip.json"),
            ]
        ),
    }
    return root, data, losses


def test_each_stage_trains_and_saves(trained):
    root, _, losses = trained
    assert losses["clip"][-1] < losses["clip"][0]
    for stage in ("prior", "autoencoder", "decoder"):
        assert len(losses[stage]) == 3 and all(np.isfinite(losses[stage]))
    assert (root / "clip" / "model.safetensors").is_file() and (root / "clip" / "tokenizer.json").is_file()
    prior = json.loads((root / "prior" / "prior" / "config.json").read_text())
    assert prior["embedding_dim"] == TINY_CLIP["projection_dim"]
    assert json.loads((root / "ae" / "vae" / "config.json").read_text())["scaling_factor"] != 0.18215
    # every stage's weights and checkpoints are readable as the configs beside them are (safetensors writes 0600)
    weights = sorted(root.rglob("*.safetensors"))
    assert {w.relative_to(root).parts[0] for w in weights} >= {"clip", "prior", "ae", "decoder"}
    assert {oct(w.stat().st_mode & 0o777) for w in weights} == {
        oct((root / "clip" / "config.json").stat().st_mode & 0o777)
    }


class _OneProcess:
    num_processes = 1

    @staticmethod
    def gather(x):
        return x


def test_swapped_captions_are_extra_negatives_of_the_image_side():
    torch.manual_seed(0)
    images, texts, negatives = (torch.nn.functional.normalize(torch.randn(3, 4), dim=-1) for _ in range(3))
    caption_ids = torch.tensor([0, 1, 2])
    negative_ids = torch.tensor([5, -1, 0])  # row 1 has no twin; row 2's twin is row 0's own caption
    loss = contrastive_loss(images, texts, 10.0, caption_ids, _OneProcess(), negatives, negative_ids)

    image_logits = 10.0 * images @ torch.cat([texts, negatives[[0, 2]]]).T  # row 1's negative is left out
    targets = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    image_loss = -(targets / targets.sum(1, keepdim=True) * image_logits.log_softmax(1)).sum(1)
    text_loss = torch.nn.functional.cross_entropy(10.0 * texts @ images.T, caption_ids, reduction="none")
    assert loss.item() == pytest.approx(((image_loss.mean() + text_loss.mean()) / 2).item(), rel=1e-5)
    no_twins = contrastive_loss(images, texts, 10.0, caption_ids, _OneProcess(), negatives, torch.full((3,), -1))
    plain = contrastive_loss(images, texts, 10.0, caption_ids, _OneProcess())
    assert no_twins.item() == pytest.approx(plain.item(), rel=1e-6) and loss.item() != pytest.approx(plain.item())


def test_mirrored_images_are_extra_negatives_of_the_text_side():
    torch.manual_seed(0)
    images, texts, mirrored = (torch.nn.functional.normalize(torch.randn(3, 4), dim=-1) for _ in range(3))
    caption_ids = torch.tensor([0, 1, 2])
    mirror_ids = torch.tensor([-1, 2, 7])  # row 0 has no mirror; row 1's mirror shows row 2's caption
    loss = contrastive_loss(
        images, texts, 10.0, caption_ids, _OneProcess(), mirror_embeds=mirrored, mirror_ids=mirror_ids
    )

    text_logits = 10.0 * texts @ torch.cat([images, mirrored[[1, 2]]]).T
    targets = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]])
    text_loss = -(targets / targets.sum(1, keepdim=True) * text_logits.log_softmax(1)).sum(1)
    image_loss = torch.nn.functional.cross_entropy(10.0 * images @ texts.T, caption_ids, reduction="none")
    assert loss.item() == pytest.approx(((image_loss.mean() + text_loss.mean()) / 2).item(), rel=1e-5)


def test_swap_negatives_fine_tune(trained, tmp_path):
    root, data, _ = trained
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    texts, phrasings = phrasing_table(records, "text")
    canonical = {r["text"]: i for i, r in enumerate(records)}
    swapped, ids = swapped_phrasings(records, texts, phrasings, lambda text: canonical.setdefault(text, len(canonical)))
    row = next(
        i
        for i, r in enumerate(records)
        if r["scene"]["layout"] == "pair_v" and r["scene"]["objects"][0]["name"] != r["scene"]["objects"][1]["name"]
    )
    first, second = (f"{o['colour']} {o['name']}" for o in records[row]["scene"]["objects"])
    assert texts[swapped[row, 0]].endswith(f"{second} above a {first}") or texts[swapped[row, 0]].endswith(
        f"{second} above an {first}"
    )
    for column in range(phrasings.shape[1]):  # each twin has the same words as its phrasing, in another order
        own, twin = texts[phrasings[row, column]], texts[swapped[row, column]]
        assert sorted(own.split()) == sorted(twin.split()) and own != twin
    assert (ids >= 0).sum() == sum(swapped_caption(r["scene"]) is not None for r in records)
    assert all(swapped[i, 0] == -1 for i, r in enumerate(records) if r["scene"]["layout"] == "single")

    losses = train_clip.main(
        common(data, tmp_path / "clip_swap", steps=2)
        + ["--pretrained_model_name_or_path", str(root / "clip"), "--swap_negatives", "--mirror_negatives"]
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    singles = tmp_path / "singles"
    singles.mkdir()
    single_records = [r for r in records if r["scene"]["layout"] == "single"]
    (singles / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single_records))
    for r in single_records:
        shutil.copy(data / r["file_name"], singles / r["file_name"])
    with pytest.raises(ValueError, match="--mirror_negatives: no record .* has a two-object scene graph"):
        train_clip.main(
            common(singles, tmp_path / "clip_none", steps=2)
            + ["--pretrained_model_name_or_path", str(root / "clip"), "--mirror_negatives"]
        )


def test_min_snr_weighting(trained, tmp_path):
    scheduler = decoder_scheduler()
    t = torch.tensor([0, 500, 999])
    weight = min_snr_weight(scheduler, t, 5.0)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    assert weight[0] == pytest.approx(5.0 / snr[0].item(), rel=1e-4) and weight[0] < 0.01
    assert weight[2] == 1.0  # at the noisiest step SNR < gamma: unweighted
    root, data, losses = trained
    weighted = train_decoder.main(
        common(data, tmp_path / "decoder")
        + [
            "--clip_model_name_or_path",
            str(root / "clip"),
            "--vae_model_name_or_path",
            str(root / "ae" / "vae"),
            "--architecture",
            str(root / "unclip.json"),
            "--snr_gamma",
            "5",
        ]
    )
    # same seed, so the same batch, noise and timesteps: each weight is at most 1 and some are below
    assert weighted[0] < losses["decoder"][0]


def test_assembled_pipeline_generates(trained):
    root, _, _ = trained
    out = root / "pipeline"
    export_text_to_image.main(
        [
            "--clip",
            str(root / "clip"),
            "--prior",
            str(root / "prior"),
            "--decoder",
            str(root / "decoder"),
            "--autoencoder",
            str(root / "ae" / "vae"),
            "--output",
            str(out),
        ]
    )
    pipe = TextToImagePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a red apple",
        num_images_per_prompt=2,
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert pipe.reranker is None

    # a reranker: any CLIP folder, here the same CLIP again
    export_text_to_image.main(
        [
            "--clip",
            str(root / "clip"),
            "--prior",
            str(root / "prior"),
            "--decoder",
            str(root / "decoder"),
            "--autoencoder",
            str(root / "ae" / "vae"),
            "--reranker",
            str(root / "clip"),
            "--output",
            str(root / "reranked"),
        ]
    )
    reranked = TextToImagePipeline.from_pretrained(root / "reranked")
    reranked.set_progress_bar_config(disable=True)
    assert type(reranked.reranker).__name__ == "CLIPModel"
    torch.testing.assert_close(reranked.reranker.logit_scale, pipe.clip.logit_scale)
    best = reranked(
        "a red apple",
        num_candidates=2,
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert any(np.abs(best[0] - image).max() < 1e-5 for image in images)  # the same two candidates as above

    # written again over its own pipeline folder; refused, untouched, over anything else or an input it reads
    parts = ["--clip", str(root / "clip"), "--prior", str(root / "prior"), "--decoder", str(root / "decoder")]
    export_text_to_image.main([*parts, "--output", str(root / "reranked")])
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    captioner = root / "captioner"
    captioner.mkdir()
    (captioner / "model_index.json").write_text('{"_class_name": "CaptionPipeline"}')
    for folder, message in (
        (mine, "holds files and is not a TextToImagePipeline folder"),
        (captioner, "holds files and is not a TextToImagePipeline folder"),
        (root / "decoder", "is or holds the input"),
        (root, "is or holds the input"),
    ):
        before = snapshot(folder)
        with pytest.raises((FileExistsError, ValueError), match=message):
            export_text_to_image.main([*parts, "--output", str(folder)])
        assert snapshot(folder) == before


def test_prior_resume_retraces_the_straight_run(trained, tmp_path):
    root, data, losses = trained
    cut = tmp_path / "prior"
    cut.mkdir()
    shutil.copytree(root / "prior" / "checkpoint-2", cut / "checkpoint-2")
    resumed = train_prior.main(
        common(data, cut)
        + [
            "--clip_model_name_or_path",
            str(root / "clip"),
            "--architecture",
            str(root / "unclip.json"),
            "--resume_from_checkpoint",
            "latest",
        ]
    )
    assert resumed[:2] == losses["prior"][:2] and resumed == pytest.approx(losses["prior"], rel=1e-4)


def test_autoencoder_decoder_only_fine_tune_keeps_the_latents(trained, tmp_path):
    from diffusers import AutoencoderKL

    root, data, _ = trained
    train_autoencoder.main(
        common(data, tmp_path / "ft", steps=2)
        + ["--pretrained_model_name_or_path", str(root / "ae" / "vae"), "--train_decoder_only"]
    )
    before = AutoencoderKL.from_pretrained(root / "ae" / "vae")
    after = AutoencoderKL.from_pretrained(tmp_path / "ft" / "vae")
    for name, value in before.state_dict().items():
        same = torch.equal(value, after.state_dict()[name])
        assert same == (name.startswith(("encoder.", "quant_conv."))), name
    assert after.config.scaling_factor == before.config.scaling_factor
    with pytest.raises(SystemExit):
        train_autoencoder.main(common(data, tmp_path / "bad") + ["--train_decoder_only"])


def test_foreground_weight_counts_saturated_pixels_more():
    import torch.nn.functional as F

    pixels = torch.full((1, 3, 2, 2), 0.8)  # pale grey background
    pixels[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])  # one saturated red pixel
    off = torch.zeros_like(pixels)
    on_object, on_background = off.clone(), off.clone()
    on_object[0, 1, 0, 0] = 0.5
    on_background[0, 1, 1, 1] = 0.5
    loss = reconstruction_loss
    plain = loss(pixels + on_object, pixels)
    assert plain == pytest.approx(float(F.l1_loss(pixels + on_object, pixels) + F.mse_loss(pixels + on_object, pixels)))
    assert loss(pixels + on_background, pixels) == pytest.approx(float(plain))
    weighted_object, weighted_background = (loss(pixels + e, pixels, 4.0) for e in (on_object, on_background))
    assert weighted_object > plain > weighted_background
    assert float(weighted_object) == pytest.approx(0.75 / 12 * 5 / 2)  # (0.5 + 0.25) * 5 / (3 * (5 + 3))
    uniform = torch.full_like(pixels, 0.1)
    assert loss(pixels + uniform, pixels, 4.0) == pytest.approx(float(loss(pixels + uniform, pixels)))
    with pytest.raises(ValueError, match="foreground_weight"):
        train_autoencoder.TrainAutoencoderArgs(foreground_weight=-1)


def test_features_are_cached_for_resumed_runs(trained, tmp_path):
    root, _, _ = trained
    assert (root / "prior" / "clip_features.safetensors").is_file()
    assert (root / "decoder" / "latents.safetensors").is_file()
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).view(2, 3)}

    first = cached_features(tmp_path / "f.safetensors", {"data": 1}, compute)
    again = cached_features(tmp_path / "f.safetensors", {"data": 1}, compute)
    assert len(calls) == 1 and torch.equal(first["x"], again["x"])
    cached_features(tmp_path / "f.safetensors", {"data": 2}, compute)  # another key: computed afresh
    assert len(calls) == 2 and not list(tmp_path.glob("*.tmp"))


def test_checkpoint_export_gives_the_final_ema_weights(trained, tmp_path):
    from diffusers import PriorTransformer, UNet2DConditionModel

    root, _, _ = trained
    for stage, cls, folder in (("decoder", UNet2DConditionModel, "decoder"), ("prior", PriorTransformer, "prior")):
        export_checkpoint.main(["--stage", stage, "--run", str(root / stage), "--output", str(tmp_path / stage)])
        final = cls.from_pretrained(root / stage / folder).state_dict()
        exported = cls.from_pretrained(tmp_path / stage / folder).state_dict()
        assert (tmp_path / stage / folder / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777 == 0o644
        assert all(torch.equal(final[name], exported[name]) for name in final), stage
        early = tmp_path / f"{stage}-early"
        export_checkpoint.main(
            [
                "--stage",
                stage,
                "--run",
                str(root / stage),
                "--checkpoint",
                str(root / stage / "checkpoint-2"),
                "--output",
                str(early),
            ]
        )
        weights = cls.from_pretrained(early / folder).state_dict()
        assert any(not torch.equal(final[name], weights[name]) for name in final), stage


def test_checkpoint_export_builds_the_architecture_the_run_saved(trained, tmp_path):
    """The export reads the architecture from the run's train_config.json, not from the file the run was given,
    which may have changed or gone since; a run saved before runs kept it is built from that file."""
    from diffusers import AutoencoderKL, PriorTransformer, UNet2DConditionModel

    from genvl.models.unclip import UnclipArchitecture

    root, _, _ = trained
    for stage, run_dir, cls, folder in (
        ("prior", "prior", PriorTransformer, "prior"),
        ("decoder", "decoder", UNet2DConditionModel, "decoder"),
        ("autoencoder", "ae", AutoencoderKL, "vae"),
    ):
        run = tmp_path / run_dir
        shutil.copytree(root / run_dir, run, ignore=shutil.ignore_patterns("*features*", "latents*"))
        config = json.loads((run / "train_config.json").read_text())
        saved = UnclipArchitecture.from_dict(config["architecture_config"])
        assert saved == UnclipArchitecture.from_json(root / "unclip.json"), stage
        config["architecture"] = str(tmp_path / "gone.json")
        (run / "train_config.json").write_text(json.dumps(config))
        export_checkpoint.main(["--stage", stage, "--run", str(run), "--output", str(tmp_path / f"{stage}-export")])
        final = cls.from_pretrained(root / run_dir / folder).state_dict()
        exported = cls.from_pretrained(tmp_path / f"{stage}-export" / folder).state_dict()
        assert all(torch.equal(final[name], exported[name]) for name in final), stage
        del config["architecture_config"]
        (run / "train_config.json").write_text(json.dumps(config))
        with pytest.raises(FileNotFoundError, match="gone.json"):
            export_checkpoint.main(["--stage", stage, "--run", str(run), "--output", str(tmp_path / "old")])


def test_autoencoder_checkpoint_export_matches_the_runs_own_folder(trained, tmp_path):
    from diffusers import AutoencoderKL

    root, data, _ = trained
    train_autoencoder.main(
        common(data, tmp_path / "ft", steps=3)
        + [
            "--pretrained_model_name_or_path",
            str(root / "ae" / "vae"),
            "--train_decoder_only",
            "--foreground_weight",
            "2",
        ]
    )
    for run in (root / "ae", tmp_path / "ft"):  # from scratch (scaling factor measured again) and fine-tuned
        out = tmp_path / f"{run.name}-export"
        export_checkpoint.main(["--stage", "autoencoder", "--run", str(run), "--output", str(out)])
        final, exported = (AutoencoderKL.from_pretrained(folder / "vae") for folder in (run, out))
        assert exported.config.scaling_factor == pytest.approx(final.config.scaling_factor, rel=1e-5)
        assert all(torch.equal(value, exported.state_dict()[name]) for name, value in final.state_dict().items())
        early = tmp_path / f"{run.name}-early"
        export_checkpoint.main(
            [
                "--stage",
                "autoencoder",
                "--run",
                str(run),
                "--checkpoint",
                str(run / "checkpoint-2"),
                "--output",
                str(early),
            ]
        )
        weights = AutoencoderKL.from_pretrained(early / "vae").state_dict()
        assert any(not torch.equal(value, weights[name]) for name, value in final.state_dict().items())


def test_decoder_run_on_a_pipeline_folders_clip_exports(trained, tmp_path):
    """A decoder trained on the CLIP inside a text-to-image pipeline folder (its `clip/`, `tokenizer/` and
    `image_processor/`) exports from its checkpoint like one trained on a CLIP folder."""
    from diffusers import UNet2DConditionModel

    root, data, _ = trained
    pipeline = tmp_path / "pipeline"
    export_text_to_image.main(
        [
            "--clip",
            str(root / "clip"),
            "--prior",
            str(root / "prior"),
            "--decoder",
            str(root / "decoder"),
            "--autoencoder",
            str(root / "ae" / "vae"),
            "--output",
            str(pipeline),
        ]
    )
    run = tmp_path / "decoder"
    train_decoder.main(
        common(data, run, steps=2)
        + [
            "--clip_model_name_or_path",
            str(pipeline),
            "--vae_model_name_or_path",
            str(root / "ae" / "vae"),
            "--architecture",
            str(root / "unclip.json"),
        ]
    )
    export_checkpoint.main(["--stage", "decoder", "--run", str(run), "--output", str(tmp_path / "export")])
    final = UNet2DConditionModel.from_pretrained(run / "decoder").state_dict()
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "export" / "decoder").state_dict()
    assert all(torch.equal(final[name], exported[name]) for name in final)


def test_lora_fine_tunes_of_clip_prior_and_decoder_load_into_the_pipeline(trained, tmp_path):
    root, data, _ = trained
    out = tmp_path / "pipeline"
    export_text_to_image.main(
        [
            "--clip",
            str(root / "clip"),
            "--prior",
            str(root / "prior"),
            "--decoder",
            str(root / "decoder"),
            "--autoencoder",
            str(root / "ae" / "vae"),
            "--output",
            str(out),
        ]
    )
    lora = ["--rank", "2", "--lora_alpha", "4", "--pretrained_model_name_or_path", str(out), "--learning_rate", "5e-2"]
    train_clip.main(common(data, tmp_path / "clip_lora", steps=2) + lora)
    train_prior.main(common(data, tmp_path / "prior_lora", steps=2) + lora + ["--clip_model_name_or_path", str(out)])
    train_decoder.main(
        common(data, tmp_path / "decoder_lora", steps=2)
        + [  # IA³ for the UNet
            "--adapter",
            "ia3",
            "--pretrained_model_name_or_path",
            str(out),
            "--learning_rate",
            "5e-2",
            "--clip_model_name_or_path",
            str(out),
            "--vae_model_name_or_path",
            str(out / "vae"),
        ]
    )
    for run, part, kind in (
        ("clip_lora", "clip", "LORA"),
        ("prior_lora", "prior", "LORA"),
        ("decoder_lora", "decoder", "IA3"),
    ):
        config = json.loads((tmp_path / run / part / "adapter_config.json").read_text())
        assert config["peft_type"] == kind and (tmp_path / run / part / "adapter_model.safetensors").is_file()
        assert not (tmp_path / run / part / "config.json").exists()  # an adapter, not a full copy

    pipe = TextToImagePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe(
            "a red apple",
            prior_num_inference_steps=2,
            decoder_num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    plain = draw()
    for run in ("clip_lora", "prior_lora", "decoder_lora"):
        pipe.load_lora_weights(tmp_path / run, adapter_name=run)
    assert np.abs(draw() - plain).max() > 1e-4
    pipe.unload_lora_weights()
    np.testing.assert_allclose(draw(), plain, atol=1e-5)


def test_gradient_checkpointing_flag_trains_the_same(trained, tmp_path):
    root, data, losses = trained
    args = [
        "--clip_model_name_or_path",
        str(root / "clip"),
        "--vae_model_name_or_path",
        str(root / "ae" / "vae"),
        "--architecture",
        str(root / "unclip.json"),
    ]
    checkpointed = train_decoder.main(common(data, tmp_path / "decoder") + args + ["--gradient_checkpointing"])
    assert checkpointed == pytest.approx(losses["decoder"], rel=1e-4)
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs xformers"):
            train_decoder.main(common(data, tmp_path / "x") + args + ["--enable_xformers_memory_efficient_attention"])


def test_decoder_on_another_text_tower_exports_and_generates(trained, tmp_path):
    """A decoder trained on a public CLIP's text tower (its own tokenizer, 77 positions) and the tiny CLIP's image
    embeddings goes into a pipeline as its `decoder_text_encoder`; a run from that pipeline reads the same tower."""
    from .conftest import write_public_clip_folder

    root, data, _ = trained
    public = write_public_clip_folder(tmp_path / "public_clip")
    args = [
        "--clip_model_name_or_path",
        str(root / "clip"),
        "--vae_model_name_or_path",
        str(root / "ae" / "vae"),
        "--architecture",
        str(root / "unclip.json"),
    ]
    losses = train_decoder.main(
        common(data, tmp_path / "decoder", steps=2) + args + ["--text_encoder_model_name_or_path", str(public)]
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    states = frozen_text_states(public, data, [{"text": "a red apple"}], "text")[0]
    assert states.shape[1:] == (77, 32)
    export_checkpoint.main(
        ["--stage", "decoder", "--run", str(tmp_path / "decoder"), "--output", str(tmp_path / "export")]
    )
    out = tmp_path / "pipeline"
    export_text_to_image.main(
        [
            "--clip",
            str(root / "clip"),
            "--prior",
            str(root / "prior"),
            "--decoder",
            str(tmp_path / "export"),
            "--autoencoder",
            str(root / "ae" / "vae"),
            "--decoder_text_encoder",
            str(public),
            "--output",
            str(out),
        ]
    )
    pipe = TextToImagePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.encode_decoder_prompt(["", "a red apple"]).states.shape == (2, 77, 32)
    images = pipe(
        "a red apple",
        prior_num_inference_steps=2,
        decoder_num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    # a decoder run on this pipeline takes the token states of its decoder_text_encoder, not of its CLIP
    again = train_decoder.main(
        common(data, tmp_path / "again", steps=2)
        + [
            "--clip_model_name_or_path",
            str(out),
            "--vae_model_name_or_path",
            str(out / "vae"),
            "--pretrained_model_name_or_path",
            str(out),
            "--architecture",
            str(root / "unclip.json"),
        ]
    )
    assert all(np.isfinite(again)) and (tmp_path / "again" / "text_states.safetensors").is_file()


def test_reset_image_embedding_starts_from_the_image_dropped_decoder(trained, tmp_path):
    from diffusers import UNet2DConditionModel

    from genvl.models.unclip import UnclipConditioner

    root, data, _ = trained
    args = [
        "--clip_model_name_or_path",
        str(root / "clip"),
        "--vae_model_name_or_path",
        str(root / "ae" / "vae"),
        "--architecture",
        str(root / "unclip.json"),
        "--pretrained_model_name_or_path",
        str(root / "decoder"),
        "--learning_rate",
        "0",
    ]
    for reset in (False, True):
        out = tmp_path / f"reset_{reset}"
        train_decoder.main(common(data, out, steps=1) + args + (["--reset_image_embedding"] if reset else []))
        reader = UnclipConditioner.from_pretrained(out / "conditioner").image_to_tokens.weight
        unet = UNet2DConditionModel.from_pretrained(out / "decoder")
        before = UNet2DConditionModel.from_pretrained(root / "decoder" / "decoder")
        assert bool((reader == 0).all()) == reset
        assert bool((unet.class_embedding.linear_1.weight == 0).all()) == reset
        torch.testing.assert_close(unet.conv_in.weight, before.conv_in.weight)  # the rest is kept
    with pytest.raises(SystemExit):  # nothing to reset
        train_decoder.main(common(data, tmp_path / "bad") + args[:6] + ["--reset_image_embedding"])


def test_prior_and_decoder_train_on_prompts_people_type(trained, tmp_path):
    root, data, _ = trained
    extra = ["--prompts_per_scene", "2", "--clip_model_name_or_path", str(root / "clip")]
    extra += ["--architecture", str(root / "unclip.json")]
    prior = train_prior.main(common(data, tmp_path / "prior", steps=2) + extra)
    decoder = train_decoder.main(
        common(data, tmp_path / "decoder", steps=2) + extra + ["--vae_model_name_or_path", str(root / "ae" / "vae")]
    )
    assert len(prior) == len(decoder) == 2 and all(math.isfinite(x) for x in prior + decoder)
    # five phrasings a scene: its three captions and two prompts, the features computed for each
    features = load_file(tmp_path / "prior" / "clip_features.safetensors")
    records = read_metadata(data)
    assert (
        len(features["text_embeds"]) == len({c for r in with_prompts(records, 2, 0, "text") for c in r["captions"]}) + 1
    )


def test_clip_prior_and_decoder_stream_shards(trained, tmp_path):
    """Streamed, each batch's frozen features are those the in-memory run computes for the same samples; CLIP
    (with both kinds of negatives and a fresh tokenizer), the prior and the decoder (on another text tower)
    train from shards, and a streamed prior stopped and resumed retraces the straight run."""

    from genvl.models.clip import load_clip
    from genvl.training.features import batch_clip_features, frozen_clip_features
    from genvl.training.stream import ShardStream, decoded_sample

    from .conftest import write_public_clip_folder
    from .test_shards import pack

    root, data, _ = trained
    records = read_metadata(data)
    pack(data, str(tmp_path / "train-%02d.tar"), 16)  # the 40 samples in 3 shards, keyed by their row
    shards = f"{tmp_path}/train-{{00..02}}.tar"

    def decode(record):
        return {**decoded_sample(record, 32, "text"), "row": int(record["file_name"].split("#")[1])}

    samples = ShardStream(shards, decode, "text", "file_name", seed=0).take(12)
    clip, tokenizer, image_processor = load_clip(root / "clip")
    streamed = batch_clip_features(clip, tokenizer, image_processor, samples)
    in_memory = frozen_clip_features(root / "clip", data, records, "file_name", "text")
    rows = [sample["row"] for sample in samples]
    assert torch.allclose(streamed.image_embeds, in_memory.image_embeds[rows], atol=1e-5)
    for column in range(in_memory.phrasings.shape[1]):  # each phrasing's text features, wherever its row is
        ours, theirs = streamed.phrasings[:, column], in_memory.phrasings[rows, column]
        assert torch.allclose(streamed.text_embeds[ours], in_memory.text_embeds[theirs], atol=1e-5)
        assert torch.equal(streamed.masks[ours], in_memory.masks[theirs])
        assert torch.allclose(streamed.states[ours].float(), in_memory.states[theirs].float(), atol=1e-2)

    def run(script, out, steps, *extra):
        return script.main(["--streaming", *common(shards, tmp_path / out, steps=steps, batch=8), *extra])

    clip_losses = run(
        train_clip,
        "clip",
        4,
        "--architecture",
        str(root / "clip.json"),
        "--vocab_size",
        "300",
        "--swap_negatives",
        "--mirror_negatives",
    )
    assert len(clip_losses) == 4 and all(np.isfinite(clip_losses))
    assert (tmp_path / "clip" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "clip" / "data_summary.json").read_text())["samples_taken"] == 32

    prior_args = ["--clip_model_name_or_path", str(root / "clip"), "--architecture", str(root / "unclip.json")]
    straight = run(train_prior, "prior", 4, *prior_args)
    assert len(straight) == 4 and all(np.isfinite(straight))
    # a new prior is standardised on the stream's first epoch: all 40 embeddings, each once
    config = json.loads((tmp_path / "prior" / "prior" / "config.json").read_text())
    mean = load_file(tmp_path / "prior" / "prior" / "diffusion_pytorch_model.safetensors")["clip_mean"]
    assert config["embedding_dim"] == 16
    assert torch.allclose(mean, in_memory.image_embeds.mean(0, keepdim=True), atol=1e-5)
    shutil.copytree(tmp_path / "prior" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run(train_prior, "resumed", 4, *prior_args, "--resume_from_checkpoint", "latest")
    assert resumed == pytest.approx(straight, rel=1e-4)

    public = write_public_clip_folder(tmp_path / "public_clip")
    decoder_args = [*prior_args, "--vae_model_name_or_path", str(root / "ae" / "vae")]
    losses = run(train_decoder, "decoder", 2, *decoder_args, "--text_encoder_model_name_or_path", str(public))
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not (tmp_path / "decoder" / "latents.safetensors").exists()  # nothing computed for the whole data
    with pytest.raises(SystemExit) as exit_info:  # a usage error, before anything is read
        run(train_decoder, "x", 1, *decoder_args, "--prompts_per_scene", "2")
    assert exit_info.value.code == 2
