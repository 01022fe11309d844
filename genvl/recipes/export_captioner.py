"""Export a training checkpoint of `train_captioner.py` as a CaptionPipeline folder (EMA weights by default).

    python -m genvl.recipes.export_captioner --run runs/captioner --checkpoint latest \
        --out pipelines/genvl-caption-small

Useful to evaluate a run while it trains, or to ship a checkpoint without waiting for the run to end. A run with
`--encoder_from_judge` is rebuilt with its grid encoder, and one that started from a pipeline
(`--pretrained_model_name_or_path`, as `train_vqa.py` can) from that pipeline, its positions grown as the run grew
them (the folders its config names must still be there). Works for `train_vqa.py` runs too, whose exports decode
answers as the recipe's own final folder does (`genvl.training.answers.answer_settings`).
"""

import argparse
from pathlib import Path

from safetensors.torch import load_file

from genvl.io.components import load_tokenizer
from genvl.io.outputs import check_export_folder
from genvl.models.captioner import CaptionerArchitecture, build_captioner, build_image_processor, grow_positions
from genvl.pipelines.caption import CaptionPipeline
from genvl.training.answers import answer_settings
from genvl.training.args import JudgeEncoderArgs, read_run_config, run_architecture, run_script
from genvl.training.augment import pad_fill_of, parse_augmentations
from genvl.training.checkpoints import checkpoint_step, copy_ema_weights, resolve_resume
from genvl.training.pretrained import prepare_encoder


def export(run_dir, checkpoint="latest", out=None, use_ema=True) -> Path:
    run_dir = Path(run_dir)
    path = resolve_resume(run_dir, checkpoint, flag="--checkpoint")
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to export")
    config = read_run_config(run_dir)
    out = Path(out or run_dir / f"export-{checkpoint_step(path)}")
    starts = [config.get(key) for key in ("pretrained_model_name_or_path", "encoder_from_judge")]
    check_export_folder(out, "--out", inputs=[run_dir, *starts], pipeline=CaptionPipeline.__name__)
    encoder = JudgeEncoderArgs(
        config.get("encoder_from_judge"), config.get("freeze_encoder", False), config.get("picture_positions", False)
    )
    started = bool(config.get("pretrained_model_name_or_path"))
    if started:  # a run that started from a pipeline: its model and tokenizer
        start = CaptionPipeline.from_pretrained(config["pretrained_model_name_or_path"])
        model, tokenizer, image_processor = start.model, start.tokenizer, start.image_processor
        if config.get("decoder_positions"):  # the run grew the decoder's positions
            grow_positions(model, config["decoder_positions"])
    else:
        arch = run_architecture(config, CaptionerArchitecture)
        arch.image_size = config["resolution"]  # the run's images; older runs' configs hold it only here
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        model, image_processor = build_captioner(arch, tokenizer), build_image_processor(arch)
    model = prepare_encoder(encoder, model)  # a grid encoder, if the run had one
    missing, unexpected = model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    if unexpected or any(key != "decoder.lm_head.weight" for key in missing):  # lm_head is tied to wte
        raise ValueError(
            f"{path}: weights do not match the run's architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    if use_ema:
        try:
            copy_ema_weights([p for p in model.parameters() if p.requires_grad], path)  # those the run trained
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}; pass --no-ema to export raw weights") from None
    model.tie_weights()
    answers = "describe_share" in config  # a train_vqa.py run: answers to the world's questions, not captions
    if answers:
        answer_settings(model, tokenizer, config["describe_share"])
    pipeline = CaptionPipeline(
        model=model.eval(),
        tokenizer=tokenizer,
        image_processor=image_processor,
        question_world="genvl" if answers else None,
        pad_to_square=True,
        pad_fill=pad_fill_of(
            parse_augmentations(config.get("augment", "")),
            start.config if started else None,
            config.get("pad_fill"),
            config.get("letterbox_fill", "contrast"),
        ),
    )
    pipeline.save_pretrained(out)
    print(f"exported {path} ({'EMA' if use_ema else 'raw'} weights) to {out}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the training run's output_dir")
    parser.add_argument("--checkpoint", default="latest", help="a checkpoint folder, or 'latest'")
    parser.add_argument("--out", default=None, help="pipeline folder to write (default: RUN/export-STEP)")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="export the raw weights")
    args = parser.parse_args(argv)
    return export(args.run, args.checkpoint, args.out, args.use_ema)


if __name__ == "__main__":
    run_script(main)
