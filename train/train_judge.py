"""Train the text-to-image judge (a grid detector, `genvl.evaluation.judge.SceneJudge`) on real renders only.

    accelerate launch train/train_judge.py --config configs/train_judge.json

The judge never sees a generated image. So that it reads generated images, which are softer and noisier
than renders, the renders are randomly blurred, noised and shifted in brightness during training. Ends with
the judge saved in `output_dir/judge` and its GenEval-style accuracy on the real images of `--eval_data_dir`,
where its detection threshold is also chosen (the most accurate of a few; the higher one on a tie).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genvl.evaluation.text_to_image import judge_images
from genvl.io.imagefolder import load_images, read_metadata
from genvl.models.judge import SceneJudge
from genvl.training.args import TrainArgs, parse_args, run_script
from genvl.training.data import check_data_source, read_training_data
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.world.sprites import COLOURS, OBJECTS


@dataclass
class TrainJudgeArgs(TrainArgs):
    """Train the text-to-image judge on real renders."""

    output_dir: str = "runs/judge"
    eval_data_dir: str | None = "data/world/val"
    train_batch_size: int = 64
    width: int = 32  # channels of the three stages: width, 2 x width, 4 x width

    def __post_init__(self):
        super().__post_init__()
        if self.width < 8 or self.width % 8:  # the stages normalise their channels in 8 groups
            raise ValueError(f"--width must be a positive multiple of 8, got {self.width}")


def degrade(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (down- and up-sampling), Gaussian noise and brightness shift of images in [-1, 1]."""
    b, _, h, w = pixels.shape
    draw = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    factor = draw(b)
    blurred = F.interpolate(
        F.interpolate(pixels, scale_factor=0.5, mode="bilinear", antialias=True), size=(h, w), mode="bilinear"
    )
    blur = (factor < 0.4).float().view(b, 1, 1, 1)
    pixels = blur * blurred + (1 - blur) * pixels
    pixels = pixels + draw(b, 1, 1, 1) * 0.15 * torch.randn(pixels.shape, generator=generator)
    return (pixels + (draw(b, 1, 1, 1) - 0.5) * 0.2).clamp(-1, 1)


THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


@torch.no_grad()
def judge_real_images(judge: SceneJudge, data_dir, batch_size: int = 256) -> dict[float, dict[str, float]]:
    """The judge's GenEval-style accuracy on the real renders of an imagefolder at each of `THRESHOLDS`."""
    records = read_metadata(data_dir)
    images = load_images(data_dir, records, "file_name", judge.config.image_size)
    scenes = [record["scene"] for record in records]
    rows = list(range(len(records)))
    return {threshold: judge_images(judge, images, scenes, rows, batch_size, threshold) for threshold in THRESHOLDS}


def main(argv=None):
    args = parse_args(TrainJudgeArgs, argv)
    if args.eval_data_dir:  # read only once training is over: a wrong path should not cost the run
        check_data_source(args.eval_data_dir, "--eval_data_dir")
    accelerator = make_accelerator(args, "train_judge")
    data_dir = Path(args.train_data_dir)
    records = read_training_data(accelerator, args)
    images = load_images(data_dir, records, args.image_column, args.resolution)
    width = args.width
    judge = SceneJudge(
        object_names=sorted(OBJECTS),
        colour_names=sorted(COLOURS),
        channels=(width, 2 * width, 4 * width),
        image_size=args.resolution,
    )
    targets = judge.targets([record["scene"] for record in records])
    device = accelerator.device

    def compute_loss(model, batch, step):
        generator = step_generator(args.seed, step, AUGMENTATION)
        pixels = degrade(images[batch].float() / 127.5 - 1, generator).to(device)
        batch_targets = {name: value[batch].to(device) for name, value in targets.items()}
        return judge.loss(model(pixels), batch_targets)

    losses = train_loop(accelerator, args, judge, judge.parameters(), len(records), compute_loss)

    if accelerator.is_main_process:
        judge.eval()
        output_dir = Path(args.output_dir)
        if args.eval_data_dir:
            by_threshold = judge_real_images(judge, args.eval_data_dir)
            best = max(THRESHOLDS, key=lambda t: (by_threshold[t]["overall"], t))
            judge.register_to_config(threshold=best)
            report = {"threshold": best, "accuracy": by_threshold[best], "by_threshold": by_threshold}
            (output_dir / "real_accuracy.json").write_text(json.dumps(report, indent=2))
            accelerator.print(f"threshold {best}; accuracy on real renders: " + json.dumps(by_threshold[best]))
        judge.save_pretrained(output_dir / "judge", safe_serialization=True)
        (output_dir / "train_losses.json").write_text(json.dumps(losses))
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
