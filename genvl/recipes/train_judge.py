"""Train the text-to-image judge (a grid detector, `genvl.models.judge.SceneJudge`) on real renders only.

    accelerate launch -m genvl.recipes.train_judge --config configs/train_judge.json

It reads whatever imagefolder `--train_data_dir` names, with a scene graph per image: renders of the wide world
(every size, place, background and palette) for the judges of today. It predicts the world's colour words and
"original" (an object in OpenMoji's original colours, colour None). The judge never sees a generated image. So
that it reads generated images, which are softer and noisier than renders, the renders are randomly blurred,
noised and shifted in brightness during training. `--augment` adds the captioner's kinds
(`genvl.training.augment`: flip, shift, light, jpeg), the boxes moved with the pixels.

`--pretrained_model_name_or_path` fine-tunes a saved judge (such as `pipelines/genvl-judge-small`) instead of training a
fresh one: its width, classes and resolution are kept, and must be the world's and the run's.

Ends with the judge saved in `output_dir/judge` and, in `output_dir/real_accuracy.json`, its GenEval-style
accuracy and detection report (`genvl.evaluation.judge.detection_scores`) on the real renders of
`--eval_data_dir`. There its detection threshold is chosen among `THRESHOLDS` and its suppression among
`NMS_DISTANCES`, by detection F1: the highest F1; on a tie the higher threshold, then the suppression by
distance. Without `--eval_data_dir` the judge keeps the defaults: threshold 0.5, 3x3 local maxima.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genvl.evaluation.judge import category_accuracy, detect_images, detection_scores, judge_scene, load_renders
from genvl.io.imagefolder import load_images
from genvl.models.judge import ORIGINAL, SceneJudge
from genvl.training.args import TrainArgs, parse_args, run_script, saving_run
from genvl.training.augment import augment_batch, parse_augmentations, scene_rooms
from genvl.training.data import check_data_source, read_training_data
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.seeds import AUGMENTATION, step_generator
from genvl.training.stream import open_stream, write_stream_summary
from genvl.world.scenes import mirror_scene
from genvl.world.sprites import COLOURS, OBJECTS


@dataclass
class TrainJudgeArgs(TrainArgs):
    """Train the text-to-image judge on real renders."""

    output_dir: str = "runs/judge"
    eval_data_dir: str | None = "data/wide/val"
    train_batch_size: int = 64
    width: int | None = None  # channels of the stages: width, 2x, 4x (default 32, or the saved judge's)
    pretrained_model_name_or_path: str | None = None  # a saved judge folder to fine-tune
    augment: str = ""  # comma-separated kinds of genvl.training.augment: flip, shift, light, jpeg

    def __post_init__(self):
        super().__post_init__()
        for kind in {"squash", "letterbox"} & set(parse_augmentations(self.augment)):
            raise ValueError(f"--augment {kind} is for captioners: the judge's targets would need its boxes moved")
        # the stages normalise their channels in 8 groups
        if self.width is not None and (self.width < 8 or self.width % 8):
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


def moved_scene(scene: dict, flipped: bool, dx: float, dy: float) -> dict:
    """The scene graph of a render that `augment_batch` flipped and moved right by dx and down by dy (64-unit
    pixels), for the judge's targets: its boxes are true, its place words are not rewritten."""
    scene = mirror_scene(scene) if flipped else scene
    objects = []
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        objects.append({**obj, "bbox": [x0 + dx, y0 + dy, x1 + dx, y1 + dy]})
    return {**scene, "objects": objects}


def fresh_judge(args: TrainJudgeArgs) -> SceneJudge:
    """A judge of the world's objects and colours, `--width` wide (default 32), predicting sizes."""
    width = args.width or 32
    channels = (width, 2 * width, 4 * width)
    return SceneJudge(**world_classes(), channels=channels, image_size=args.resolution, predict_size=True)


def world_classes() -> dict:
    return {"object_names": sorted(OBJECTS), "colour_names": sorted(COLOURS) + [ORIGINAL]}


def pretrained_judge(args: TrainJudgeArgs) -> SceneJudge:
    """The saved judge `--pretrained_model_name_or_path` names, checked to predict the world's objects, colours
    and sizes at the run's resolution, and to be as wide as any `--width` given."""
    folder = args.pretrained_model_name_or_path
    judge = SceneJudge.from_pretrained(folder)
    config = judge.config
    for key, value in world_classes().items():
        if list(config[key]) != value:
            raise ValueError(f"{folder}: the judge's {key} are not the world's ({len(config[key])}, not {len(value)})")
    if not config.predict_size:
        raise ValueError(f"{folder}: the judge does not predict sizes; train a fresh one")
    if config.image_size != args.resolution:
        raise ValueError(f"{folder}: the judge reads {config.image_size} px images, --resolution is {args.resolution}")
    width = args.width
    if width is not None and tuple(config.channels) != (width, 2 * width, 4 * width):
        raise ValueError(f"{folder}: the judge's channels are {tuple(config.channels)}, not those of --width {width}")
    return judge


THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)
# None: 3x3 local maxima; 6 px: half the least distance between two objects' centres in the wide world
NMS_DISTANCES = (None, 6.0)


@torch.no_grad()
def judge_real_images(judge: SceneJudge, data_dir, batch_size: int = 256) -> list[dict]:
    """The judge on the real renders of an imagefolder, one row per suppression of `NMS_DISTANCES` and threshold
    of `THRESHOLDS`: {"nms_distance", "threshold", "accuracy" (GenEval-style), "detection" (report)}. Leaves the
    judge's `nms_distance` at the last one tried."""
    images, scenes = load_renders(data_dir, judge.config.image_size)
    rows = []
    for distance in NMS_DISTANCES:
        judge.register_to_config(nms_distance=distance)
        found = detect_images(judge, images, batch_size, min(THRESHOLDS))
        for threshold in THRESHOLDS:  # the detections at a threshold: those at a lower one that score above it
            kept = [[d for d in detections if d.score > threshold] for detections in found]
            accuracy = category_accuracy([judge_scene(scene, d) for scene, d in zip(scenes, kept)])
            detection = detection_scores(scenes, kept)
            rows.append(
                {"nms_distance": distance, "threshold": threshold, "accuracy": accuracy, "detection": detection}
            )
    return rows


def best_row(rows: list[dict]) -> dict:
    """The row of the highest detection F1; on a tie the higher threshold, then the suppression by distance."""
    return max(rows, key=lambda r: (r["detection"]["overall"]["f1"] or 0.0, r["threshold"], r["nms_distance"] or 0))


def accuracy_report(rows: list[dict]) -> dict:
    """What `real_accuracy.json` holds: the chosen threshold and suppression, the accuracy and detection report
    there, the accuracy at each threshold with that suppression, and the F1 of every row."""
    best = best_row(rows)
    chosen = [row for row in rows if row["nms_distance"] == best["nms_distance"]]
    return {
        "threshold": best["threshold"],
        "nms_distance": best["nms_distance"],
        "accuracy": best["accuracy"],
        "detection": best["detection"],
        "by_threshold": {row["threshold"]: row["accuracy"] for row in chosen},
        "detection_f1": [
            {
                "nms_distance": row["nms_distance"],
                "threshold": row["threshold"],
                "f1": row["detection"]["overall"]["f1"],
            }
            for row in rows
        ],
    }


def main(argv=None):
    args = parse_args(TrainJudgeArgs, argv)
    if args.eval_data_dir:  # read only once training is over: a wrong path should not cost the run
        check_data_source(args.eval_data_dir, "--eval_data_dir")
    pretrained = pretrained_judge(args) if args.pretrained_model_name_or_path else None  # checked before the run
    accelerator = make_accelerator(args, "train_judge")
    judge = fresh_judge(args) if pretrained is None else pretrained  # a fresh one drawn after the seed is set
    kinds = parse_augmentations(args.augment)
    device = accelerator.device
    if args.streaming:  # each batch decoded, and its targets made, as it comes
        data = open_stream(accelerator, args, need_scene=True)

        def batch_of(batch):
            scenes = [sample["scene"] for sample in batch]
            return torch.stack([sample["pixels"] for sample in batch]), scenes, judge.targets(scenes)

    else:
        records = read_training_data(accelerator, args)
        images = load_images(Path(args.train_data_dir), records, args.image_column, args.resolution)
        all_scenes = [record["scene"] for record in records]
        targets = judge.targets(all_scenes)
        data = len(records)

        def batch_of(batch):
            scenes = [all_scenes[int(i)] for i in batch]
            return images[batch], scenes, {name: value[batch] for name, value in targets.items()}

    def compute_loss(model, batch, step):
        generator = step_generator(args.seed, step, AUGMENTATION)
        batch_images, scenes, batch_targets = batch_of(batch)
        pixels = batch_images.float() / 127.5 - 1
        if kinds:
            pixels, flipped, shifts = augment_batch(pixels, scene_rooms(scenes, kinds), kinds, generator)
            if flipped.any() or shifts.any():  # the targets of the flipped and moved renders
                units = (shifts.float() * 64 / args.resolution).tolist()
                moved = [moved_scene(scene, bool(f), *d) for scene, f, d in zip(scenes, flipped, units)]
                batch_targets = judge.targets(moved)
        pixels = degrade(pixels, generator).to(device)
        batch_targets = {name: value.to(device) for name, value in batch_targets.items()}
        return judge.loss(model(pixels), batch_targets)

    losses = train_loop(accelerator, args, judge, judge.parameters(), data, compute_loss)
    if args.streaming:
        write_stream_summary(accelerator, args, data)

    if accelerator.is_main_process:
        judge.eval()
        output_dir = Path(args.output_dir)
        if args.eval_data_dir:
            report = {"data": str(args.eval_data_dir), **accuracy_report(judge_real_images(judge, args.eval_data_dir))}
            judge.register_to_config(threshold=report["threshold"], nms_distance=report["nms_distance"])
            (output_dir / "real_accuracy.json").write_text(json.dumps(report, indent=2))
            overall = report["detection"]["overall"]
            rates = {key: overall[key] for key in ("precision", "recall", "f1", "colour_accuracy")}
            accelerator.print(f"threshold {report['threshold']}, nms_distance {report['nms_distance']}")
            accelerator.print("accuracy on real renders: " + json.dumps(report["accuracy"]))
            accelerator.print("detection on real renders: " + json.dumps(rates))
        with saving_run(output_dir, losses):
            judge.save_pretrained(output_dir / "judge", safe_serialization=True)
    accelerator.end_training()
    return losses


if __name__ == "__main__":
    run_script(main)
