"""Teach the shipped text-to-image stack an object it has never seen: LoRA on the prior and the decoder,
against fine-tuning every weight of both.

    python examples/teach_new_object.py --output runs/teach_robot             # data and a captioner that knows it
    python examples/teach_new_object_generator.py --output runs/teach_robot

Uses the training folder of `teach_new_object.py` (scenes holding the new object, plus ordinary scenes for
prior preservation) and its fully fine-tuned captioner, which reads the new object, for the round trip. The
judge has never seen the new object either, so on its scenes only the round trip (the captioner names every
object of the prompt) can say whether the object was drawn; on ordinary scenes the judge's GenEval-style
scores apply as usual.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from genvl.lora import adapter_share
from genvl.training.measure import run_measured

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "pipelines" / "genvl-unclip-small"
JUDGE = REPO / "pipelines" / "genvl-judge-small"
JUDGED = ("overall", "single_object", "colours", "two_objects")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/teach_robot", help="the output of teach_new_object.py")
    parser.add_argument("--model", default=str(SHIPPED))
    parser.add_argument("--prior-steps", type=int, default=300)
    parser.add_argument("--decoder-steps", type=int, default=600)
    parser.add_argument("--prior-rank", type=int, default=4, help="the prior is small: rank 4 keeps it under 2%%")
    parser.add_argument("--decoder-rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--prompts", type=int, default=60, help="held-out prompts per test set")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    return parser.parse_args(argv)


def train_stage(args, stage: str, data: Path, out: Path, lora: bool) -> dict:
    steps = args.prior_steps if stage == "prior" else args.decoder_steps
    command = [
        sys.executable,
        "-m",
        f"genvl.recipes.train_{stage}",
        "--pretrained_model_name_or_path",
        args.model,
        "--clip_model_name_or_path",
        args.model,
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--max_train_steps",
        str(steps),
        "--lr_warmup_steps",
        "30",
        "--no-use_ema",
        "--checkpointing_steps",
        str(steps),
        "--checkpoints_total_limit",
        "1",
        "--logging_steps",
        "50",
        "--seed",
        "0",
        "--train_batch_size",
        "64" if stage == "prior" else "32",
    ]
    if stage == "decoder":
        command += ["--vae_model_name_or_path", str(Path(args.model) / "vae"), "--snr_gamma", "5"]
    rank = args.prior_rank if stage == "prior" else args.decoder_rank
    command += (
        ["--rank", str(rank), "--learning_rate", str(args.lora_lr)] if lora else ["--learning_rate", str(args.full_lr)]
    )
    result = run_measured(command, out)
    shutil.rmtree(out / f"checkpoint-{steps}", ignore_errors=True)
    weights = out / stage / ("adapter_model.safetensors" if lora else "diffusion_pytorch_model.safetensors")
    result["saved_mib"] = round(weights.stat().st_size / 2**20, 3)
    result["trainable"] = trainable_fraction(args, stage, weights) if lora else 1.0
    return result


def trainable_fraction(args, stage: str, adapter: Path) -> float:
    from diffusers import PriorTransformer, UNet2DConditionModel

    model = (PriorTransformer if stage == "prior" else UNet2DConditionModel).from_pretrained(Path(args.model) / stage)
    return adapter_share(adapter, model)["fraction"]


def full_pipeline(args, runs: dict, out: Path) -> Path:
    """The shipped pipeline folder with the fully fine-tuned prior and decoder swapped in."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(args.model, out)
    for part, run in (("prior", runs["prior"]), ("decoder", runs["decoder"]), ("conditioner", runs["decoder"])):
        shutil.rmtree(out / part)
        shutil.copytree(run / part, out / part)
    return out


def evaluate(args, model: Path, adapter: Path | None, folders: dict, captioner: Path) -> dict:
    from genvl.evaluation.text_to_image import evaluate_text_to_image
    from genvl.models.judge import SceneJudge
    from genvl.pipelines.caption import CaptionPipeline
    from genvl.pipelines.text_to_image import TextToImagePipeline

    pipeline = TextToImagePipeline.from_pretrained(model)
    if adapter is not None:
        pipeline.load_lora_weights(adapter)
    judge, reader = SceneJudge.from_pretrained(JUDGE), CaptionPipeline.from_pretrained(captioner)
    scores = {}
    for split in ("new_test", "old_test"):
        report = evaluate_text_to_image(
            pipeline,
            judge,
            folders[split],
            captioner=reader,
            num_prompts=args.prompts,
            images_per_prompt=args.images_per_prompt,
        )
        generated = report["generated"]
        scores[split] = {
            "round_trip": generated["round_trip"],
            "r_precision": generated["r_precision"],
            **{f"judged_{name}": generated["judge"].get(name) for name in JUDGED},
        }
    return scores


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output)
    folders = {
        "train": out / "data" / "train",
        "new_test": out / "data" / "new" / "test",
        "old_test": out / "data" / "old" / "test",
    }
    captioner = out / "full"
    if not (out / "teach_new_object.json").is_file() or not (captioner / "model_index.json").is_file():
        raise SystemExit(f"{out}: run examples/teach_new_object.py --output {out} first")
    report = {
        "steps": {"prior": args.prior_steps, "decoder": args.decoder_steps},
        "rank": {"prior": args.prior_rank, "decoder": args.decoder_rank},
        "shipped": {"scores": evaluate(args, Path(args.model), None, folders, captioner)},
    }
    for name, lora in (("lora", True), ("full", False)):
        runs = {stage: out / f"t2i_{name}_{stage}" for stage in ("prior", "decoder")}
        report[name] = {stage: train_stage(args, stage, folders["train"], runs[stage], lora) for stage in runs}
        if lora:
            adapter = out / "t2i_lora"
            shutil.rmtree(adapter, ignore_errors=True)
            for stage, run in runs.items():
                shutil.copytree(run / stage, adapter / stage)
            report[name]["scores"] = evaluate(args, Path(args.model), adapter, folders, captioner)
        else:
            report[name]["scores"] = evaluate(
                args, full_pipeline(args, runs, out / "t2i_full"), None, folders, captioner
            )
        print(json.dumps({name: report[name]}), flush=True)
    (out / "report_generator.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
