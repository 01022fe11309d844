"""Assemble a TextToImagePipeline folder from the outputs of the four training scripts.

    python -m genvl.recipes.export_text_to_image --clip runs/clip --prior runs/prior \
        --autoencoder runs/autoencoder/vae --decoder runs/decoder --output pipelines/genvl-unclip-small

`--decoder_text_encoder` (a CLIP, text encoder or pipeline folder) adds the text tower whose token states the
decoder was trained on (`train_decoder.py --text_encoder_model_name_or_path`), when it is not the CLIP's own.
`--reranker` (a CLIP folder) adds the CLIP that picks the best of `num_candidates` images. `--prompt_world classic`
says the text side learnt only the classic world's captions, so that prompts are rewritten into them before
drawing (`TextToImagePipeline.drawn_prompts`).
"""

import argparse
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, PriorTransformer, UNet2DConditionModel
from transformers import CLIPModel

from genvl.io.components import load_pretrained
from genvl.io.outputs import check_export_folder
from genvl.models.clip import load_clip, load_decoder_text_encoder, text_tower_of
from genvl.models.unclip import UnclipConditioner
from genvl.pipelines.text_to_image import PROMPT_WORLDS, TextToImagePipeline
from genvl.training.args import run_script


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="CLIP folder (train_clip.py output or a public CLIP)")
    parser.add_argument("--prior", required=True, help="train_prior.py output folder")
    parser.add_argument("--decoder", required=True, help="train_decoder.py output folder")
    parser.add_argument("--autoencoder", default=None, help="the decoder's AutoencoderKL folder (omit for pixels)")
    parser.add_argument(
        "--decoder_text_encoder", default=None, help="the text tower the decoder reads, when it is not the CLIP's own"
    )
    parser.add_argument(
        "--reranker",
        default=None,
        help="a CLIP folder that scores candidate images against the prompt (num_candidates)",
    )
    parser.add_argument(
        "--prompt_world",
        choices=sorted(PROMPT_WORLDS),
        default=None,
        help="the world whose canonical captions alone the CLIP and decoder learnt: prompts are rewritten into them",
    )
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def assemble(
    clip_dir, prior_dir, decoder_dir, autoencoder_dir=None, text_encoder_dir=None, reranker_dir=None, prompt_world=None
) -> TextToImagePipeline:
    clip, tokenizer, image_processor = load_clip(clip_dir)
    prior_dir, decoder_dir = Path(prior_dir), Path(decoder_dir)
    text_encoder = decoder_tokenizer = None
    if text_encoder_dir:
        text_encoder, decoder_tokenizer = load_decoder_text_encoder(text_encoder_dir)
        if isinstance(text_encoder, CLIPModel):
            text_encoder = text_tower_of(text_encoder)
    reranker, reranker_tokenizer = load_clip(reranker_dir)[:2] if reranker_dir else (None, None)
    return TextToImagePipeline(
        clip=clip,
        tokenizer=tokenizer,
        image_processor=image_processor,
        prior=load_pretrained(PriorTransformer, prior_dir / "prior"),
        prior_scheduler=load_pretrained(DDPMScheduler, prior_dir / "prior_scheduler"),
        conditioner=load_pretrained(UnclipConditioner, decoder_dir / "conditioner"),
        decoder=load_pretrained(UNet2DConditionModel, decoder_dir / "decoder"),
        decoder_scheduler=load_pretrained(DDPMScheduler, decoder_dir / "decoder_scheduler"),
        vae=load_pretrained(AutoencoderKL, autoencoder_dir) if autoencoder_dir else None,
        decoder_text_encoder=text_encoder,
        decoder_tokenizer=decoder_tokenizer,
        reranker=reranker,
        reranker_tokenizer=reranker_tokenizer,
        prompt_world=prompt_world,
    )


def main(argv=None):
    args = parse_args(argv)
    inputs = [args.clip, args.prior, args.decoder, args.autoencoder, args.decoder_text_encoder, args.reranker]
    check_export_folder(args.output, "--output", inputs=inputs, pipeline=TextToImagePipeline.__name__)
    pipeline = assemble(
        args.clip,
        args.prior,
        args.decoder,
        args.autoencoder,
        args.decoder_text_encoder,
        args.reranker,
        args.prompt_world,
    )
    pipeline.save_pretrained(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_script(main)
