"""Teach the default captioner an object it has never seen, with LoRA, and compare with full fine-tuning.

    python examples/teach_new_object.py --object robot --output runs/teach_robot

1. Renders a few hundred training scenes that each hold the new object (a held-out category of the world:
   `genvl.world.sprites.HELD_OUT_OBJECTS`), and held-out test scenes with it.
2. Mixes in four times as many ordinary scenes captioned by the captioner itself (prior preservation, as
   DreamBooth does for images): without them, fine-tuning on the new object alone teaches the model to see
   it everywhere.
3. Trains a LoRA adapter (`genvl/recipes/train_captioner.py --rank ...`) and, for comparison, every weight, each in
   its own process, timing it and reading its peak resident memory.
4. Scores the shipped model, the adapter and the fully fine-tuned model with `genvl eval caption`'s
   evaluator on the new object's test scenes and on ordinary test scenes, and writes `report.json`.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from genvl.lora import adapter_share
from genvl.pipelines.defaults import DEFAULT_CAPTIONER, shipped_pipeline
from genvl.training.measure import run_measured

SHIPPED = shipped_pipeline(DEFAULT_CAPTIONER)
SCORES = ("scene_exact_match", "names", "colours", "counts", "positions", "CIDEr-D")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", default="robot", help="a held-out object of the world")
    parser.add_argument("--output", default="runs/teach_robot")
    parser.add_argument("--model", default=str(SHIPPED), help="captioner pipeline folder to adapt")
    parser.add_argument("--train-images", type=int, default=400, help="scenes holding the new object")
    parser.add_argument(
        "--ordinary-images",
        type=int,
        default=1600,
        help="ordinary scenes captioned by the model itself, mixed in for prior preservation",
    )
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--old-test-images", type=int, default=1000, help="ordinary test scenes")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", type=int, default=3)
    parser.add_argument(
        "--targets",
        default="q_proj,v_proj,c_attn,q_attn,c_proj,c_fc",
        help="LoRA target modules: the ViT's queries and values, all of GPT-2's projections, and a grid encoder's "
        "convolutions (genvl.lora.convolutional_encoder_targets)",
    )
    parser.add_argument(
        "--lora-lr",
        type=float,
        default=5e-3,
        help="the adapter's learning rate, chosen on held-out validation scenes (docs/adapters.md): at 2e-3 the "
        "default captioner placed the robot but spelt it 'rot' or 'robobo'",
    )
    parser.add_argument("--full-lr", type=float, default=3e-4)
    return parser.parse_args(argv)


def make_data(args, out: Path) -> dict:
    """Imagefolders: `train` (new-object scenes + self-captioned ordinary ones), `new_test`, `old_test`."""
    from genvl.io.imagefolder import read_metadata
    from genvl.pipelines.caption import CaptionPipeline
    from genvl.world.dataset import write_imagefolder

    # a rerun replaces the splits an earlier run wrote (and nothing else: see write_imagefolder)
    new = write_imagefolder(out / "new", args.train_images, seed=0, split="train", require=args.object, overwrite=True)
    new_test = write_imagefolder(
        out / "new", args.test_images, seed=0, split="test", require=args.object, overwrite=True
    )
    old_test = write_imagefolder(out / "old", args.old_test_images, seed=0, split="test", overwrite=True)
    ordinary = write_imagefolder(out / "ordinary", args.ordinary_images, seed=1, split="train", overwrite=True)

    pipeline = CaptionPipeline.from_pretrained(args.model)
    ordinary_records = read_metadata(ordinary)
    paths = [ordinary / r["file_name"] for r in ordinary_records]
    own = [c for start in range(0, len(paths), 64) for c in pipeline(paths[start : start + 64]).captions]
    train = out / "train"
    shutil.rmtree(train, ignore_errors=True)
    train.mkdir()
    with open(train / "metadata.jsonl", "w") as meta:
        for folder, records, captions in ((new, read_metadata(new), None), (ordinary, ordinary_records, own)):
            for i, record in enumerate(records):
                name = f"{folder.parent.name}_{record['file_name']}"
                shutil.copy(folder / record["file_name"], train / name)
                text = captions[i][0] if captions else record["text"]
                meta.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return {"train": train, "new_test": new_test, "old_test": old_test}


def train(args, data: Path, out: Path, lora: bool, targets: list[str]) -> dict:
    """Run genvl/recipes/train_captioner.py in its own process; returns wall time, peak RSS and trainable weights."""
    command = [
        sys.executable,
        "-m",
        "genvl.recipes.train_captioner",
        "--pretrained_model_name_or_path",
        args.model,
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--train_batch_size",
        str(args.batch_size),
        "--max_train_steps",
        str(args.steps),
        "--lr_warmup_steps",
        "30",
        "--no-use_ema",
        "--checkpointing_steps",
        str(args.steps),
        "--checkpoints_total_limit",
        "1",
        "--logging_steps",
        "50",
        "--seed",
        "0",
    ]
    if lora:
        command += ["--rank", str(args.rank), "--learning_rate", str(args.lora_lr)]
        command += ["--lora_target_modules", ",".join(targets)]
    else:
        command += ["--learning_rate", str(args.full_lr)]
    result = run_measured(command, out)
    shutil.rmtree(out / f"checkpoint-{args.steps}", ignore_errors=True)
    weights = out / ("adapter_model.safetensors" if lora else "model/model.safetensors")
    return {
        **result,
        "saved_mib": round(weights.stat().st_size / 2**20, 3),
        "trainable": trainable_weights(args, out, lora),
    }


def lora_targets(args) -> list[str]:
    """`--targets`, and the convolutions of a grid encoder (which has none of the attention projections)."""
    from genvl.lora import convolutional_encoder_targets
    from genvl.pipelines.caption import CaptionPipeline

    model = CaptionPipeline.from_pretrained(args.model).model
    return [*args.targets.split(","), *convolutional_encoder_targets(model, "captioner")]


def trainable_weights(args, out: Path, lora: bool) -> dict:
    from genvl.pipelines.caption import CaptionPipeline

    model = CaptionPipeline.from_pretrained(args.model).model
    if not lora:
        return {"count": sum(p.numel() for p in model.parameters()), "fraction": 1.0}
    return adapter_share(out / "adapter_model.safetensors", model)


def evaluate(args, folders: dict, model: str, lora: str | None = None) -> dict:
    from genvl.evaluation.captioning import evaluate_captioner
    from genvl.pipelines.caption import CaptionPipeline

    pipeline = CaptionPipeline.from_pretrained(model)
    if lora:
        pipeline.load_lora_weights(lora)
    scores = {}
    for split in ("new_test", "old_test"):
        report = evaluate_captioner(pipeline, folders[split], batch_size=64)
        scores[split] = {name: round(report[name], 4) for name in SCORES}
    return scores


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output)
    # a rerun replaces the subfolders an earlier run made: never those of a folder this example did not make
    marker = out / "teach_new_object.json"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise SystemExit(f"{out}: exists and was not made by this example; choose a new --output")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"object": args.object}) + "\n")
    folders = make_data(args, out / "data")
    report = {
        "object": args.object,
        "train_images": args.train_images,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "targets": lora_targets(args),  # read from the model once
        "shipped": {"scores": evaluate(args, folders, args.model)},
    }
    for name, lora in (("lora", True), ("full", False)):
        run = out / name
        report[name] = train(args, folders["train"], run, lora, report["targets"])
        model, adapter = (args.model, str(run)) if lora else (str(run), None)
        report[name]["scores"] = evaluate(args, folders, model, adapter)
        print(json.dumps({name: report[name]}), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict):
    rows = [
        ("new object: exact match", "new_test", "scene_exact_match"),
        ("new object: names", "new_test", "names"),
        ("old objects: exact match", "old_test", "scene_exact_match"),
        ("old objects: names", "old_test", "names"),
    ]
    print(f"| | shipped | LoRA (rank {report['rank']}) | full fine-tuning |")
    print("| --- | --- | --- | --- |")
    for label, split, score in rows:
        values = [report[k]["scores"][split][score] for k in ("shipped", "lora", "full")]
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    for label, key in (
        ("trainable weights", "trainable"),
        ("saved file (MiB)", "saved_mib"),
        ("peak RSS (MiB)", "peak_rss_mib"),
        ("training time (s)", "seconds"),
    ):
        values = [report[k][key] for k in ("lora", "full")]
        if key == "trainable":
            values = [f"{v['count']:,} ({v['fraction']:.2%})" for v in values]
        print(f"| {label} | | {values[0]} | {values[1]} |")


if __name__ == "__main__":
    main()
