"""Starting a run from a saved model: the part of a pipeline or run folder a script trains, and the adapter it
trains on that model instead of every weight."""

from pathlib import Path

from .args import JudgeEncoderArgs, LoraTrainArgs


def pretrained_part(path, subfolder: str) -> Path:
    """`path/subfolder` when `path` is a pipeline or run folder holding that part, else `path` itself."""
    path = Path(path)
    return path / subfolder if (path / subfolder).is_dir() else path


def add_training_adapter(accelerator, model, network: str, args: LoraTrainArgs) -> list:
    """With `args.adapter`, wrap `model`'s target layers with a fresh adapter; returns the parameters to train."""
    if args.adapter is not None:
        from ..lora import adapter_config, add_adapter

        targets = args.lora_target_modules.split(",") if args.lora_target_modules else None
        add_adapter(model, adapter_config(args.adapter, network, args.rank, args.lora_alpha, targets, model))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        accelerator.print(
            f"{args.adapter} adapter on the {network}: {trainable:,} trainable parameters "
            f"({trainable / sum(p.numel() for p in model.parameters()):.2%})"
        )
    return [p for p in model.parameters() if p.requires_grad]


def prepare_encoder(args: JudgeEncoderArgs, model):
    """`model` (a captioner) with the encoder `args` ask for: with `encoder_from_judge`, a grid encoder holding the
    judge's body in place of its own (the decoder, its settings and its generation config stay, and
    `enc_to_dec_proj` maps the judge's width to the decoder's); with `picture_positions`, a grid encoder reading
    its cell positions within the picture (`genvl.models.grid_encoder`); with `freeze_encoder`, the encoder frozen
    except a grid encoder's cell embeddings, which are new."""
    if args.encoder_from_judge:
        from transformers import VisionEncoderDecoderModel

        from ..models.grid_encoder import GridEncoder
        from ..models.judge import SceneJudge

        judge = SceneJudge.from_pretrained(args.encoder_from_judge)
        size = model.config.encoder.image_size
        if judge.config.image_size != size:
            raise ValueError(
                f"{args.encoder_from_judge}: the judge reads {judge.config.image_size}px images, the model {size}px"
            )
        eyed = VisionEncoderDecoderModel(encoder=GridEncoder.from_judge(judge), decoder=model.decoder)
        for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "tie_word_embeddings"):
            setattr(eyed.config, key, getattr(model.config, key))
        eyed.generation_config = model.generation_config
        model = eyed
    if args.picture_positions:
        from ..models.grid_encoder import MODEL_TYPE

        kind = model.config.encoder.model_type
        if kind != MODEL_TYPE:
            raise ValueError(f"picture positions need a grid encoder (--encoder_from_judge), this one is {kind!r}")
        model.config.encoder.picture_positions = model.encoder.config.picture_positions = True
    if args.freeze_encoder:
        model.encoder.requires_grad_(False)
        if hasattr(model.encoder, "position"):
            model.encoder.position.requires_grad_(True)
    return model
