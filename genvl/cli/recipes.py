"""`genvl train NAME ...` and `genvl export NAME ...`: the recipes of `genvl.recipes`, run in this process with
the rest of the command line as their own flags (`genvl train captioner --help` lists them). Several processes:
`accelerate launch -m genvl.recipes.train_NAME ...`."""

import argparse

TRAIN = {
    "captioner": "train_captioner",
    "clip": "train_clip",
    "text-tower": "train_text_tower",
    "prior": "train_prior",
    "autoencoder": "train_autoencoder",
    "decoder": "train_decoder",
    "judge": "train_judge",
    "vqa": "train_vqa",
    "matching": "train_matching",
}
EXPORT = {
    "captioner": "export_captioner",
    "checkpoint": "export_checkpoint",
    "text-to-image": "export_text_to_image",
    "safety-checker": "export_safety_checker",
}


def add_parsers(commands) -> None:
    """Register `genvl train` and `genvl export` on the `genvl` subparsers."""
    for command, recipes, help_text, example in (
        (
            "train",
            TRAIN,
            "train a model with one of genvl's recipes",
            "genvl train captioner --config configs/train_captioner.json",
        ),
        (
            "export",
            EXPORT,
            "turn training runs into pipeline folders",
            "genvl export checkpoint --stage prior --run runs/prior --output runs/prior_export",
        ),
    ):
        parser = commands.add_parser(
            command,
            help=help_text,
            description=f"{help_text}: genvl.recipes.{{{','.join(recipes.values())}}}, with their own flags",
            epilog=f"example: {example}",
        )
        parser.add_argument("recipe", choices=list(recipes))
        parser.add_argument(
            "arguments", nargs=argparse.REMAINDER, help=f"the recipe's flags (genvl {command} NAME --help)"
        )


def run_recipe(args) -> int:
    import importlib
    import sys

    module = (TRAIN if args.command == "train" else EXPORT)[args.recipe]
    recipe = importlib.import_module(f"genvl.recipes.{module}")
    program, sys.argv[0] = sys.argv[0], f"genvl {args.command} {args.recipe}"  # its usage lines name the command
    try:
        recipe.main(args.arguments)
    finally:
        sys.argv[0] = program
    return 0


RUNS = {"train": run_recipe, "export": run_recipe}
