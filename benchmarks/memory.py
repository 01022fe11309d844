"""Peak memory of a training step and of inference, per network, per attention backend, with and without
gradient checkpointing.

Each measurement runs in a fresh process so that one configuration's allocations cannot hide another's. On a
GPU it reads torch's peak allocated bytes; on the CPU the growth of the process's peak resident set over its
size just before the step (after the model and inputs are built). Ratios are against SDPA without
checkpointing, measured in the same run.

    python benchmarks/memory.py --batch-size 32 --json memory.json

With `--data-scaling N` it measures instead how a training run's peak resident memory grows with its data:
shards of N and of 10 N world scenes, each trained on for a few steps in a fresh process with the samples decoded
into memory first and with `--streaming`; the ratio is the 10 N run's peak over the N run's. `--data-recipe` picks
the run: the captioner (images held in memory), or the prior on the `--t2i` pipeline's CLIP (frozen features of
every image and phrasing held in memory).

    python benchmarks/memory.py --data-scaling 400 --data-recipe prior
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

NETWORKS = ("captioner", "clip", "prior", "decoder")
DATA_RECIPES = ("captioner", "prior")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captioner", default="pipelines/genvl-caption-small", help="a CaptionPipeline folder")
    parser.add_argument("--t2i", default="pipelines/genvl-unclip-small", help="a TextToImagePipeline folder")
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated, from {NETWORKS}")
    parser.add_argument(
        "--backends",
        default="sdpa,eager,xformers",
        help="comma-separated attention backends (xformers is skipped when not installed)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write every measured number to this JSON file")
    parser.add_argument(
        "--data-scaling",
        type=int,
        metavar="N",
        help="measure a training run's peak memory on N and 10 N samples, in memory and streamed, instead",
    )
    parser.add_argument("--data-recipe", choices=DATA_RECIPES, default="captioner", help="the run of --data-scaling")
    parser.add_argument(
        "--worker", nargs=4, metavar=("NETWORK", "BACKEND", "CHECKPOINTING", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.networks.split(",")) - set(NETWORKS))
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; expected some of {NETWORKS}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build(network: str, args):
    """(model, inputs(), loss(model, inputs)) of one network, on random inputs of its real shapes."""
    import torch
    import torch.nn.functional as F

    b = args.batch_size
    g = torch.Generator().manual_seed(0)
    if network == "captioner":
        from genvl.pipelines.caption import CaptionPipeline

        model = CaptionPipeline.from_pretrained(args.captioner).model
        size, vocab = model.config.encoder.image_size, model.config.decoder.vocab_size
        inputs = dict(
            pixel_values=torch.randn(b, 3, size, size, generator=g),
            decoder_input_ids=torch.randint(0, vocab, (b, 24), generator=g),
        )
        return model, inputs, lambda m, x: m(**x).logits.float().logsumexp(-1).mean()
    from genvl.pipelines.text_to_image import TextToImagePipeline

    pipe = TextToImagePipeline.from_pretrained(args.t2i)
    if network == "clip":
        clip = pipe.clip
        size, length = clip.config.vision_config.image_size, clip.config.text_config.max_position_embeddings
        inputs = dict(
            pixel_values=torch.randn(b, 3, size, size, generator=g),
            input_ids=torch.randint(0, clip.config.text_config.vocab_size, (b, length), generator=g),
        )
        return clip, inputs, lambda m, x: F.cross_entropy(m(**x).logits_per_image, torch.arange(b))
    if network == "prior":
        prior, dim = pipe.prior, pipe.prior.config.embedding_dim
        tokens = pipe.prior.config.num_embeddings
        inputs = dict(
            hidden_states=torch.randn(b, dim, generator=g),
            timestep=torch.randint(0, 1000, (b,)),
            proj_embedding=torch.randn(b, dim, generator=g),
            encoder_hidden_states=torch.randn(b, tokens, dim, generator=g),
        )
        return prior, inputs, lambda m, x: m(**x).predicted_image_embedding.square().mean()
    unet, conditioner = pipe.decoder, pipe.conditioner
    config = unet.config
    dim = conditioner.config.embedding_dim
    context = torch.randn(b, conditioner.config.image_tokens + 8, config.cross_attention_dim, generator=g)
    inputs = dict(
        sample=torch.randn(b, config.in_channels, config.sample_size, config.sample_size, generator=g),
        timestep=torch.randint(0, 1000, (b,)),
        encoder_hidden_states=context,
        class_labels=torch.randn(b, dim, generator=g),
    )
    return unet, inputs, lambda m, x: m(**x).sample.square().mean()


def worker(args) -> dict:
    import torch

    from genvl.attention import enable_gradient_checkpointing, set_attention_backend

    network, backend, checkpointing, mode = args.worker
    model, inputs, loss_fn = build(network, args)
    set_attention_backend(model, backend)
    model.to(args.device)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    if checkpointing == "on":
        model.train()
        enable_gradient_checkpointing(model)
    else:
        model.train(mode == "train")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    if mode == "train":
        loss_fn(model, inputs).backward()
    else:
        with torch.no_grad():
            loss_fn(model, inputs)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"peak_mib": max(peak, 0) / 2**20}


DATA_STEPS, DATA_BATCH, DATA_RESOLUTION = 4, 16, 64


def data_worker(recipe: str, argv: list[str]) -> dict:
    """Train `recipe` (one of DATA_RECIPES) with `argv` in this process; its peak resident memory."""
    import importlib

    importlib.import_module(f"genvl.recipes.train_{recipe}").main(argv)
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def data_scaling(args) -> dict:
    """Peak memory of short runs of `--data-recipe` on N and 10 N samples, in memory and streamed."""
    import tempfile

    from PIL import Image

    from genvl.io.imagefolder import read_metadata
    from genvl.io.shards import write_shards
    from genvl.world.dataset import write_imagefolder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in (args.data_scaling, 10 * args.data_scaling):
            folder = write_imagefolder(root / f"world{size}", size, seed=0, split="train", resolution=DATA_RESOLUTION)
            records = read_metadata(folder)
            shards = write_shards(
                records, lambda r: Image.open(folder / r["file_name"]), str(root / f"s{size}-%04d.tar"), 200
            )
            spec = f"{root}/s{size}-{{0000..{len(shards) - 1:04d}}}.tar"
            for streaming in (False, True):
                out = root / f"run{size}{'s' if streaming else ''}"
                argv = ["--train_data_dir", spec, "--output_dir", str(out), "--resolution", str(DATA_RESOLUTION)]
                argv += ["--train_batch_size", str(DATA_BATCH), "--max_train_steps", str(DATA_STEPS)]
                argv += ["--checkpointing_steps", str(DATA_STEPS), "--lr_warmup_steps", "1", "--no-use_ema"]
                argv += ["--streaming"] if streaming else []
                if args.data_recipe == "prior":
                    argv += ["--clip_model_name_or_path", args.t2i]
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--data-worker", args.data_recipe, *argv],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{size} samples: {done.stderr.strip().splitlines()[-1]}")
                peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
                rows.append({"samples": size, "streaming": streaming, "peak_mib": peak})
    run = f"{args.data_recipe} runs of {DATA_STEPS} steps at batch {DATA_BATCH}, {DATA_RESOLUTION} px"
    print(f"{run}; peak resident memory")
    print(f"{'samples':>8} {'in memory MiB':>14} {'streamed MiB':>13}")
    for size in (args.data_scaling, 10 * args.data_scaling):
        peaks = {r["streaming"]: r["peak_mib"] for r in rows if r["samples"] == size}
        print(f"{size:8d} {peaks[False]:14.1f} {peaks[True]:13.1f}")
    ratios = {}
    for streaming in (False, True):
        small, large = (r["peak_mib"] for r in rows if r["streaming"] == streaming)
        ratios["streamed" if streaming else "in_memory"] = large / small
    print(f"10x the data: peak x{ratios['in_memory']:.2f} in memory, x{ratios['streamed']:.2f} streamed")
    return {"recipe": args.data_recipe, "data_scaling": rows, "ratios": ratios}


def configurations(networks, backends):
    for network in networks:
        for backend in backends:
            yield network, backend, "off", "inference"
            yield network, backend, "off", "train"
            yield network, backend, "on", "train"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--data-worker"]:  # a training run of data_scaling: its recipe, then the recipe's flags
        print(json.dumps(data_worker(argv[1], argv[2:])))
        return None
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return None
    if args.data_scaling:
        report = data_scaling(args)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return report
    backends = args.backends.split(",")
    if "xformers" in backends:
        try:
            import xformers  # noqa: F401
        except ImportError:
            print("xformers is not installed: its rows are skipped", file=sys.stderr)
            backends.remove("xformers")
    if "sdpa" not in backends:
        raise ValueError("--backends must include sdpa, the baseline of the ratios")
    common = [
        "--captioner",
        args.captioner,
        "--t2i",
        args.t2i,
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
    ]
    rows = []
    for network, backend, checkpointing, mode in configurations(args.networks.split(","), backends):
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *common, "--worker", network, backend, checkpointing, mode],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{network} {backend} {mode}: {out.stderr.strip().splitlines()[-1]}")
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
        rows.append(
            {
                "network": network,
                "backend": backend,
                "gradient_checkpointing": checkpointing == "on",
                "mode": mode,
                "peak_mib": peak,
            }
        )
    baseline = {
        (r["network"], r["mode"]): r["peak_mib"]
        for r in rows
        if r["backend"] == "sdpa" and not r["gradient_checkpointing"]
    }
    print(f"batch {args.batch_size}, {args.device}; ratio = peak / peak of sdpa without checkpointing")
    print(f"{'network':10} {'mode':9} {'backend':9} {'checkpointing':13} {'peak MiB':>9} {'ratio':>6}")
    for row in rows:
        row["ratio"] = row["peak_mib"] / max(baseline[(row["network"], row["mode"])], 1e-9)
        print(
            f"{row['network']:10} {row['mode']:9} {row['backend']:9} {str(row['gradient_checkpointing']):13} "
            f"{row['peak_mib']:9.1f} {row['ratio']:6.2f}"
        )
    report = {"batch_size": args.batch_size, "device": args.device, "backends": backends, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
