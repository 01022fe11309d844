"""Assemble a TextToImagePipeline folder from the outputs of the four training scripts.

    python train/export_text_to_image.py --clip runs/clip --prior runs/prior --autoencoder runs/autoencoder/vae \
        --decoder runs/decoder --output pipelines/genvl-unclip-small
"""

import argparse
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, PriorTransformer, UNet2DConditionModel

from genvl.models.clip import load_clip
from genvl.models.unclip import UnclipConditioner
from genvl.pipelines.text_to_image import TextToImagePipeline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="CLIP folder (train_clip.py output or a public CLIP)")
    parser.add_argument("--prior", required=True, help="train_prior.py output folder")
    parser.add_argument("--decoder", required=True, help="train_decoder.py output folder")
    parser.add_argument("--autoencoder", default=None, help="the decoder's AutoencoderKL folder (omit for pixels)")
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def assemble(clip_dir, prior_dir, decoder_dir, autoencoder_dir=None) -> TextToImagePipeline:
    clip, tokenizer, image_processor = load_clip(clip_dir)
    prior_dir, decoder_dir = Path(prior_dir), Path(decoder_dir)
    return TextToImagePipeline(
        clip=clip, tokenizer=tokenizer, image_processor=image_processor,
        prior=PriorTransformer.from_pretrained(prior_dir / "prior"),
        prior_scheduler=DDPMScheduler.from_pretrained(prior_dir / "prior_scheduler"),
        conditioner=UnclipConditioner.from_pretrained(decoder_dir / "conditioner"),
        decoder=UNet2DConditionModel.from_pretrained(decoder_dir / "decoder"),
        decoder_scheduler=DDPMScheduler.from_pretrained(decoder_dir / "decoder_scheduler"),
        vae=AutoencoderKL.from_pretrained(autoencoder_dir) if autoencoder_dir else None,
    )


def main(argv=None):
    args = parse_args(argv)
    pipeline = assemble(args.clip, args.prior, args.decoder, args.autoencoder)
    pipeline.save_pretrained(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
