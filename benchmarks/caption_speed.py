"""Caption decoding speed: genvl's engine against transformers' `generate()` on the same weights.

Both implementations decode the same pixel values with the same settings in one process; each mode (greedy,
beam search) is warmed up, then timed `--runs` times with the two implementations alternating, and the
median is reported together with whether the generated tokens are identical. The speed-up is the ratio of
the medians; the paired speed-up is the median of each run's own ratio, which drifts less when the machine's
speed changes during the measurement.

    python benchmarks/caption_speed.py --model pipelines/genvl-caption-small
    python benchmarks/caption_speed.py --random-vit-b16-gpt2 --max-new-tokens 20 --dtype bf16 --json out.json

`--quantize int8` also times genvl with the decoder's linear layers quantized to int8 (`genvl.quantize`) against
its own fp32 run, alternating in the same loop, and counts the captions that stay token for token the same.
`--student DIR` times genvl on another captioner of the same images (a distilled student of `--model`, say) against
`--model` the same way, with its size and how many of its captions are the same as the model's.
`--static-cache` adds transformers' `generate()` with its static (preallocated) key/value cache as a third
implementation in the same loop; on a GPU, transformers also compiles the decoder's step for it, which the
untimed `--warmup` runs absorb. `--device cuda` runs everything on the GPU.

    python benchmarks/caption_speed.py --model pipelines/genvl-caption-small --student runs/caption_tiny_distilled
    python benchmarks/caption_speed.py --random-vit-b16-gpt2 --device cuda --batch-size 1 --static-cache --warmup 2
"""

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import diffusers
import torch
import transformers

from genvl.generation import GenerationSettings, generate
from genvl.generation.decoder import encode_images
from genvl.io.images import IMAGE_SUFFIXES, load_image
from genvl.pipelines.caption import CaptionPipeline
from genvl.world import render_scene, sample_scene

GPT2_EOS = 50256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pipelines/genvl-caption-small", help="a CaptionPipeline folder")
    parser.add_argument(
        "--random-vit-b16-gpt2",
        action="store_true",
        help="benchmark a random-weight ViT-B/16 (224 px) + GPT-2 small model instead of --model",
    )
    parser.add_argument(
        "--images", default="examples/images", help="folder of images; rendered scenes are used when it holds none"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beams", type=int, default=5, help="num_beams of the beam-search mode")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: the model's generation_config.max_new_tokens, else 20",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per implementation and mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per implementation and mode")
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: also time genvl with the model cast to bfloat16, against its fp32 run",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8: also time genvl with the decoder quantized to int8, against its fp32 run",
    )
    parser.add_argument(
        "--student", default=None, help="a CaptionPipeline folder: also time genvl on it against --model"
    )
    parser.add_argument(
        "--static-cache",
        action="store_true",
        help="also time transformers' generate() with cache_implementation='static' in the same loop",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for a GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every measured number to this JSON file")
    args = parser.parse_args(argv)
    if args.beams < 2:
        raise ValueError(f"--beams must be >= 2 (greedy is always measured), got {args.beams}")
    for name in ("batch_size", "runs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.student is not None and args.random_vit_b16_gpt2:
        raise ValueError("--student is timed against --model: drop --random-vit-b16-gpt2")
    try:
        args.device = device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch sees no CUDA device here")
    if device.type == "cuda" and args.quantize == "int8":
        raise ValueError("--quantize int8 is dynamic int8 for CPUs: drop it with --device cuda")
    return args


def build_random_vit_b16_gpt2(seed: int):
    """A random-weight ViT-B/16 encoder (224 px) with a GPT-2 small decoder, shaped like public captioners.

    The LM head is untied from the input embedding and scaled up: a random tied model mostly repeats its
    input token, while untied, peaked logits give varied tokens and well-separated argmaxes, like a trained model.
    """
    from transformers import (
        GenerationConfig,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    torch.manual_seed(seed)
    encoder = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    )
    decoder = GPT2Config(
        vocab_size=GPT2_EOS + 1,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=GPT2_EOS,
        eos_token_id=GPT2_EOS,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = GPT2_EOS
    model = VisionEncoderDecoderModel(config=config).eval()
    model.decoder.config.tie_word_embeddings = False
    model.decoder.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.decoder.lm_head.weight) * 0.5)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=GPT2_EOS, bos_token_id=GPT2_EOS, eos_token_id=GPT2_EOS, pad_token_id=GPT2_EOS
    )
    return model


def load_pixel_values(pipeline, folder: str, batch_size: int, seed: int) -> torch.Tensor:
    """`batch_size` images from `folder` (repeated if fewer), or rendered scenes if it holds no images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: no such folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if paths:
        images = [load_image(p) for p in (paths * batch_size)[:batch_size]]
    else:
        size = pipeline.model.config.encoder.image_size
        rng = random.Random(seed)
        images = [render_scene(sample_scene(rng), size) for _ in range(batch_size)]
        print(f"{folder} holds no images: using {batch_size} rendered scenes at {size} px")
    return pipeline.preprocess(images)


def transformers_tokens(model, pixel_values, settings, cache_implementation=None) -> list[list[int]]:
    """transformers' generate() with the same settings; rows trimmed after the prompt and at the first EOS."""
    options = dict(
        num_beams=settings.num_beams,
        min_new_tokens=settings.min_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
    )
    if settings.num_beams > 1:
        options.update(length_penalty=settings.length_penalty, early_stopping=settings.early_stopping)
    if cache_implementation is not None:
        options.update(cache_implementation=cache_implementation)
    prompt = torch.full((pixel_values.shape[0], 1), settings.decoder_start_token_id, device=pixel_values.device)
    sequences = model.generate(
        pixel_values=pixel_values,
        decoder_input_ids=prompt,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        num_return_sequences=1,
        eos_token_id=settings.eos_token_id,
        pad_token_id=settings.pad_token_id,
        **options,
    )
    rows = [row[1:].tolist() for row in sequences]  # drop the start token, the whole prompt here
    return [row[: row.index(settings.eos_token_id)] if settings.eos_token_id in row else row for row in rows]


def transformers_static_tokens(model, pixel_values, settings) -> list[list[int]]:
    return transformers_tokens(model, pixel_values, settings, cache_implementation="static")


def genvl_tokens(model, pixel_values, settings) -> list[list[int]]:
    return [seq for seqs in generate(model, pixel_values, settings).sequences for seq in seqs]


def time_alternating(implementations, model, pixel_values, settings, runs, warmup):
    """Warm up, then time the implementations alternately; returns {name: (times in ms, last tokens)}."""
    results = {name: ([], None) for name in implementations}
    synchronize = torch.cuda.synchronize if pixel_values.is_cuda else lambda: None
    for run in range(warmup + runs):
        for name, fn in implementations.items():
            synchronize()
            start = time.perf_counter()
            tokens = fn(model, pixel_values, settings)
            synchronize()
            ms = (time.perf_counter() - start) * 1000.0
            times = results[name][0] + ([ms] if run >= warmup else [])
            results[name] = (times, tokens)
    return results


def print_table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def load_model_and_inputs(args):
    """The model, pixel values (B, 3, H, W), a description, and the decoding settings of each mode."""
    if args.random_vit_b16_gpt2:
        model = build_random_vit_b16_gpt2(args.seed)
        pixel_values = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))
        source, pipeline = "random ViT-B/16 (224 px) + GPT-2 small", None
    else:
        if not Path(args.model).is_dir():
            raise FileNotFoundError(f"--model {args.model}: no such pipeline folder")
        pipeline = CaptionPipeline.from_pretrained(args.model)
        model = pipeline.model.eval()
        pixel_values = load_pixel_values(pipeline, args.images, args.batch_size, args.seed)
        source = args.model
    model, pixel_values = model.to(args.device), pixel_values.to(args.device)
    max_new_tokens = args.max_new_tokens or getattr(model.generation_config, "max_new_tokens", None) or 20
    settings = {}
    for mode, beams in {"greedy": 1, f"beam {args.beams}": args.beams}.items():
        overrides = dict(num_beams=beams, max_new_tokens=max_new_tokens, do_sample=False, num_return_sequences=1)
        if pipeline is None:
            # a random model may end captions at any step: force a fixed length so both decode the same work
            settings[mode] = GenerationSettings(
                eos_token_id=GPT2_EOS,
                decoder_start_token_id=GPT2_EOS,
                pad_token_id=GPT2_EOS,
                min_new_tokens=max_new_tokens,
                **overrides,
            )
        else:
            settings[mode] = pipeline.settings(**overrides)
    return model, pixel_values, source, settings


def compare_fp32(model, pixel_values, settings, args) -> dict:
    """genvl against transformers per mode; prints the table and returns the measured numbers."""
    results, rows, static_rows = {}, [], []
    implementations = {"genvl": genvl_tokens, "transformers": transformers_tokens}
    if args.static_cache:
        implementations["transformers_static"] = transformers_static_tokens
    for mode, mode_settings in settings.items():
        timings = time_alternating(implementations, model, pixel_values, mode_settings, args.runs, args.warmup)
        (ours_ms, ours), (theirs_ms, theirs) = timings["genvl"], timings["transformers"]
        ours_median, theirs_median = statistics.median(ours_ms), statistics.median(theirs_ms)
        # each run times the two back to back: the median of the runs' own ratios is steadier than the ratio of
        # the medians when the shared machine speeds up or slows down during the measurement
        paired = statistics.median(their_ms / our_ms for our_ms, their_ms in zip(ours_ms, theirs_ms))
        mean_length = sum(map(len, ours)) / len(ours)
        results[mode] = dict(
            genvl_ms=ours_ms,
            transformers_ms=theirs_ms,
            genvl_median_ms=ours_median,
            transformers_median_ms=theirs_median,
            speedup=theirs_median / ours_median,
            paired_speedup=paired,
            tokens_identical=ours == theirs,
            mean_length=mean_length,
            genvl_tokens=ours,
        )
        if ours != theirs:
            results[mode]["transformers_tokens"] = theirs
        if args.static_cache:
            static_ms, static = timings["transformers_static"]
            static_median = statistics.median(static_ms)
            results[mode].update(
                transformers_static_ms=static_ms,
                transformers_static_median_ms=static_median,
                static_speedup=static_median / ours_median,
                static_paired_speedup=statistics.median(s / o for o, s in zip(ours_ms, static_ms)),
                static_tokens_identical=ours == static,
            )
            static_rows.append(
                [
                    mode,
                    f"{ours_median:.1f}",
                    f"{static_median:.1f}",
                    f"{static_median / ours_median:.2f}x",
                    f"{results[mode]['static_paired_speedup']:.2f}x",
                    "yes" if ours == static else "NO",
                ]
            )
        rows.append(
            [
                mode,
                f"{ours_median:.1f}",
                f"{theirs_median:.1f}",
                f"{theirs_median / ours_median:.2f}x",
                f"{paired:.2f}x",
                "yes" if ours == theirs else "NO",
                f"{mean_length:.1f}",
            ]
        )
    print()
    print_table(
        ["mode", "genvl ms", "transformers ms", "speed-up", "paired speed-up", "tokens identical", "mean tokens"], rows
    )
    if static_rows:
        print()
        header = ["mode", "genvl ms", "transformers static-cache ms", "speed-up", "paired", "tokens identical"]
        print_table(header, static_rows)
    return results


def encoder_share(model, pixel_values, args, results: dict):
    """Time the vision encoder alone (the same transformers module in both implementations) and split each
    mode's medians into encoding and decoding; the encoder bounds the speed-up any decoder can reach."""
    encode = {"encoder": lambda model, pixel_values, settings: encode_images(model, pixel_values)}
    encoder_ms = statistics.median(
        time_alternating(encode, model, pixel_values, None, args.runs, args.warmup)["encoder"][0]
    )
    rows = []
    for mode, result in results.items():
        ours, theirs = result["genvl_median_ms"] - encoder_ms, result["transformers_median_ms"] - encoder_ms
        bound = result["transformers_median_ms"] / encoder_ms
        result.update(encoder_median_ms=encoder_ms, speedup_bound=bound)
        rows.append(
            [mode, f"{encoder_ms:.1f}", f"{ours:.1f}", f"{theirs:.1f}", f"{theirs / ours:.2f}x", f"{bound:.2f}x"]
        )
    print()
    print_table(
        [
            "mode",
            "encoder ms",
            "genvl decoding ms",
            "transformers decoding ms",
            "decoding speed-up",
            "bound with free decoding",
        ],
        rows,
    )


def compare_int8(model, pixel_values, settings, args, results: dict):
    """genvl with a copy of the model whose decoder is quantized to int8, against the fp32 model, alternating;
    adds the numbers to `results` and prints them."""
    import copy

    from genvl.quantize import quantize_linear_layers

    quantized = copy.deepcopy(model)
    quantize_linear_layers(quantized.decoder, "int8")
    runs = {
        "fp32": lambda _, pixels, mode_settings: genvl_tokens(model, pixels, mode_settings),
        "int8": lambda _, pixels, mode_settings: genvl_tokens(quantized, pixels, mode_settings),
    }
    rows = []
    for mode, mode_settings in settings.items():
        timings = time_alternating(runs, None, pixel_values, mode_settings, args.runs, args.warmup)
        (fp32_ms, fp32), (int8_ms, int8) = timings["fp32"], timings["int8"]
        identical = sum(a == b for a, b in zip(int8, fp32)) / len(fp32)
        paired = statistics.median(ours / theirs for ours, theirs in zip(fp32_ms, int8_ms))
        fp32_median, int8_median = statistics.median(fp32_ms), statistics.median(int8_ms)
        results[mode].update(
            genvl_median_ms_beside_int8=fp32_median,
            genvl_int8_ms=int8_ms,
            genvl_int8_median_ms=int8_median,
            int8_speedup=fp32_median / int8_median,
            int8_paired_speedup=paired,
            int8_identical_fraction=identical,
        )
        rows.append(
            [
                mode,
                f"{fp32_median:.1f}",
                f"{int8_median:.1f}",
                f"{fp32_median / int8_median:.2f}x",
                f"{paired:.2f}x",
                f"{identical:.0%}",
            ]
        )
    print()
    print_table(["mode", "genvl fp32 ms", "genvl int8 ms", "int8 speed-up", "paired", "same tokens as fp32"], rows)


def compare_student(model, pixel_values, settings, args, results: dict):
    """genvl on the `--student` pipeline against genvl on the model, alternating on the same pixel values; adds
    the numbers to `results` and prints them."""
    if not Path(args.student).is_dir():
        raise FileNotFoundError(f"--student {args.student}: no such pipeline folder")
    student = CaptionPipeline.from_pretrained(args.student)
    student.model.to(args.device)
    if student.model.config.encoder.image_size != model.config.encoder.image_size:
        raise ValueError(f"--student {args.student} reads images at another size than --model")
    params = sum(p.numel() for p in student.model.parameters()) / 1e6
    print(f"\nstudent: {args.student} ({params:.2f}M parameters)")
    rows = []
    for mode, mode_settings in settings.items():
        student_settings = student.settings(
            num_beams=mode_settings.num_beams, max_new_tokens=mode_settings.max_new_tokens, do_sample=False
        )
        runs = {
            "model": lambda _, pixels, _settings: genvl_tokens(model, pixels, mode_settings),
            "student": lambda _, pixels, _settings: genvl_tokens(student.model.eval(), pixels, student_settings),
        }
        timings = time_alternating(runs, None, pixel_values, None, args.runs, args.warmup)
        (model_ms, ours), (student_ms, theirs) = timings["model"], timings["student"]
        same = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
        paired = statistics.median(m / s for m, s in zip(model_ms, student_ms))
        model_median, student_median = statistics.median(model_ms), statistics.median(student_ms)
        results[mode].update(
            student=args.student,
            student_parameters_m=params,
            student_ms=student_ms,
            student_median_ms=student_median,
            model_median_ms_beside_student=model_median,
            student_speedup=model_median / student_median,
            student_paired_speedup=paired,
            student_same_captions=same,
        )
        rows.append(
            [
                mode,
                f"{model_median:.1f}",
                f"{student_median:.1f}",
                f"{model_median / student_median:.2f}x",
                f"{paired:.2f}x",
                f"{same:.0%}",
            ]
        )
    print_table(["mode", "model ms", "student ms", "student speed-up", "paired", "same captions as the model"], rows)


def compare_bf16(model, pixel_values, settings, args, results: dict):
    """genvl with the model in bfloat16 against its fp32 run; adds the numbers to `results` and prints them.

    The model is cast in place: the fp32 weights are not needed afterwards, and a copy would double the memory.
    """
    model.to(torch.bfloat16)
    pixel_values = pixel_values.to(torch.bfloat16)
    rows = []
    for mode, mode_settings in settings.items():
        timings = time_alternating({"genvl": genvl_tokens}, model, pixel_values, mode_settings, args.runs, args.warmup)
        bf16_ms, bf16 = timings["genvl"]
        fp32 = results[mode]["genvl_tokens"]
        identical = sum(a == b for a, b in zip(bf16, fp32)) / len(fp32)
        fp32_median, bf16_median = results[mode]["genvl_median_ms"], statistics.median(bf16_ms)
        results[mode].update(
            genvl_bf16_ms=bf16_ms,
            genvl_bf16_median_ms=bf16_median,
            bf16_speedup=fp32_median / bf16_median,
            bf16_identical_fraction=identical,
        )
        rows.append(
            [mode, f"{fp32_median:.1f}", f"{bf16_median:.1f}", f"{fp32_median / bf16_median:.2f}x", f"{identical:.0%}"]
        )
    print()
    print_table(["mode", "genvl fp32 ms", "genvl bf16 ms", "bf16 speed-up", "same tokens as fp32"], rows)


def main(argv=None):
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), device {args.device}"
    )

    # 1. model and inputs
    model, pixel_values, source, settings = load_model_and_inputs(args)
    max_new_tokens = next(iter(settings.values())).max_new_tokens
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model: {source} ({params:.1f}M parameters), batch {args.batch_size}, "
        f"pixels {tuple(pixel_values.shape[1:])}, max_new_tokens {max_new_tokens}"
    )
    report = dict(
        device=torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        model=source,
        batch_size=args.batch_size,
        max_new_tokens=max_new_tokens,
        runs=args.runs,
        warmup=args.warmup,
    )

    with torch.inference_mode():
        # 2. genvl against transformers, fp32
        report["modes"] = compare_fp32(model, pixel_values, settings, args)
        greedy, beam = (result["genvl_median_ms"] for result in report["modes"].values())
        report["genvl_beam_over_greedy"] = beam / greedy
        print(f"beam/greedy cost (genvl): {beam / greedy:.2f}x")
        encoder_share(model, pixel_values, args, report["modes"])
        # 3. genvl with an int8 decoder against its own fp32 run
        if args.quantize == "int8":
            compare_int8(model, pixel_values, settings, args, report["modes"])
        # 4. genvl on a student captioner against the model
        if args.student is not None:
            compare_student(model, pixel_values, settings, args, report["modes"])
        # 5. genvl in bfloat16 against its own fp32 run
        if args.dtype == "bf16":
            compare_bf16(model, pixel_values, settings, args, report["modes"])

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
