"""Starting a run from a saved model: the part of a pipeline or run folder a script trains, and the adapter it
trains on that model instead of every weight."""

from pathlib import Path

from .args import LoraTrainArgs


def pretrained_part(path, subfolder: str) -> Path:
    """`path/subfolder` when `path` is a pipeline or run folder holding that part, else `path` itself."""
    path = Path(path)
    return path / subfolder if (path / subfolder).is_dir() else path


def add_training_adapter(accelerator, model, network: str, args: LoraTrainArgs) -> list:
    """With `args.adapter`, wrap `model`'s target layers with a fresh adapter; returns the parameters to train."""
    if args.adapter is not None:
        from ..lora import adapter_config, add_adapter

        targets = args.lora_target_modules.split(",") if args.lora_target_modules else None
        add_adapter(model, adapter_config(args.adapter, network, args.rank, args.lora_alpha, targets))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        accelerator.print(
            f"{args.adapter} adapter on the {network}: {trainable:,} trainable parameters "
            f"({trainable / sum(p.numel() for p in model.parameters()):.2%})"
        )
    return [p for p in model.parameters() if p.requires_grad]
