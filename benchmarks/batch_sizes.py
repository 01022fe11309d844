"""Text-to-image across batch sizes: how far images made in batches are from the same seeds made one call at a
time, how much faster batching is, and what the CLI's exact way (each image alone on one thread, several at
once) costs.

Image i always has its own generator seeded S + i, so the only differences left are the float kernels, which
round some rows differently for other batch shapes and thread splits. Each split of the images into pipeline
calls is compared, subpixel by subpixel, with one call of the whole batch; the CLI's way is run with 1 and with
`--workers` threads and must give the same images bit for bit. Times are medians of `--runs`.

    python benchmarks/batch_sizes.py --images 5 --splits 1,1,1,1,1 2,2,1 3,2 --workers 2
"""

import argparse
import json
import statistics
import time

import torch

from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.pipelines.threads import one_image_each


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pipelines/genvl-unclip-small", help="a TextToImagePipeline folder")
    parser.add_argument("--prompt", default="a red apple")
    parser.add_argument("--images", type=int, default=5, help="images, seeds 0 .. N-1")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["1,1,1,1,1", "2,2,1", "3,2"],
        help="batch sizes of the calls, summing to --images, e.g. 2,2,1",
    )
    parser.add_argument("--steps", type=int, default=25, help="steps of each stage")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each way")
    parser.add_argument(
        "--workers", type=int, default=torch.get_num_threads(), help="threads of the CLI's way (default: one per core)"
    )
    parser.add_argument("--json", default=None, help="write the measured numbers to this JSON file")
    args = parser.parse_args(argv)
    args.splits = [[int(size) for size in split.split(",")] for split in args.splits]
    for split in args.splits:
        if sum(split) != args.images or min(split) < 1:
            raise ValueError(f"--splits: {split} must be positive sizes summing to --images {args.images}")
    return args


def in_calls(pipeline, args, sizes):
    """Images (N, 3, H, W) in [0, 1] of seeds 0 .. N-1, made in pipeline calls of `sizes` images, each image
    with its own generator."""
    images, start = [], 0
    for size in sizes:
        generators = [torch.Generator().manual_seed(seed) for seed in range(start, start + size)]
        images.append(
            pipeline(
                args.prompt,
                num_images_per_prompt=size,
                generator=generators,
                output_type="pt",
                prior_num_inference_steps=args.steps,
                decoder_num_inference_steps=args.steps,
            ).images
        )
        start += size
    return torch.cat(images)


def one_per_thread(pipeline, args, workers):
    """The images of `genvl generate --batch-size WORKERS`: each alone on one thread, WORKERS at once."""

    def make(pipe, generators):
        steps = dict(prior_num_inference_steps=args.steps, decoder_num_inference_steps=args.steps)
        return pipe(args.prompt, generator=generators, output_type="pt", **steps).images

    images = one_image_each(pipeline, make, args.images, base_seed=0, batch_size=workers, quiet=True)
    return torch.stack([image for _, _, image in images])


def median_seconds(function, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    pipeline = TextToImagePipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    whole = in_calls(pipeline, args, [args.images])
    levels = (whole * 255).round()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.images} images of "
        f"{tuple(whole.shape[1:])}, {args.steps} + {args.steps} steps"
    )
    print(f"{'calls':>16}  {'max difference':>14}  subpixels one level or more off (of {levels.numel()})")
    report = {"images": args.images, "subpixels": levels.numel(), "threads": torch.get_num_threads(), "splits": []}
    for sizes in args.splits:
        images = in_calls(pipeline, args, sizes)
        off = int(((images * 255).round() != levels).sum())
        difference = float((images - whole).abs().max())
        print(f"{','.join(map(str, sizes)):>16}  {difference:14.2e}  {off}")
        report["splits"].append({"sizes": sizes, "max_difference": difference, "subpixels_off": off})
    batched = median_seconds(lambda: in_calls(pipeline, args, [args.images]), args.runs)
    alone = median_seconds(lambda: in_calls(pipeline, args, [1] * args.images), args.runs)
    print(f"one call: {batched:.2f} s, one image per call: {alone:.2f} s, batching is {alone / batched:.2f}x faster")
    exact = torch.equal(one_per_thread(pipeline, args, 1), one_per_thread(pipeline, args, args.workers))
    threaded = median_seconds(lambda: one_per_thread(pipeline, args, args.workers), args.runs)
    print(
        f"the CLI's way, {args.workers} threads of one image each: {threaded:.2f} s ({threaded / batched:.2f}x "
        f"one call's time), the same bits as with 1 thread: {'yes' if exact else 'NO'}"
    )
    report.update(
        batched_seconds=batched,
        one_per_call_seconds=alone,
        one_per_thread_seconds=threaded,
        workers=args.workers,
        one_per_thread_exact=exact,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
