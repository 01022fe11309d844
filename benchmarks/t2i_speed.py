"""Text-to-image speed: time per image of each stage, and the judged accuracy of the unCLIP default (DDPM,
25 prior + 25 decoder steps) against DPM-Solver++ with half or fewer network evaluations; bf16 against fp32.

Every configuration runs in this one process on the same weights, prompts and seeds. Stage times are the
median of `--runs` timed runs after a warm-up; network evaluations are counted with forward hooks (one
evaluation = one forward of the prior or the decoder UNet over the whole batch, both CFG halves included).

    python benchmarks/t2i_speed.py --data data/world/test --prompts 250 --json t2i_speed.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DPMSolverMultistepScheduler

from genvl.evaluation.text_to_image import generate_for_prompts, judge_images, select_prompts
from genvl.io.imagefolder import read_metadata
from genvl.models.judge import SceneJudge
from genvl.pipelines.text_to_image import DEFAULT_TEXT_GUIDANCE, TextToImagePipeline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pipelines/genvl-unclip-small", help="a TextToImagePipeline folder")
    parser.add_argument("--judge", default="pipelines/genvl-judge-small", help="a SceneJudge folder")
    parser.add_argument("--data", default="data/world/test", help="held-out imagefolder with scene graphs")
    parser.add_argument("--prompts", type=int, default=250, help="prompts for the judged accuracy")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="DDPM steps of each stage (the unCLIP default)")
    parser.add_argument("--dpm-steps", type=int, default=12, help="DPM-Solver++ steps of the decoder")
    parser.add_argument(
        "--dpm-prior-steps", type=int, default=None, help="DPM-Solver++ steps of the prior (default: --dpm-steps)"
    )
    parser.add_argument(
        "--dpm-algorithm",
        choices=["dpmsolver++", "sde-dpmsolver++"],
        default="dpmsolver++",
        help="DPM-Solver++'s algorithm_type: the ODE solver, or its stochastic variant",
    )
    parser.add_argument(
        "--dpm-solver-order",
        type=int,
        choices=[1, 2, 3],
        default=2,
        help="DPM-Solver++'s solver_order (1: first order, which with the stochastic variant adds "
        "fresh noise at every step as DDPM does)",
    )
    parser.add_argument(
        "--dpm-timestep-spacing",
        choices=["leading", "trailing", "linspace"],
        default=None,
        help="DPM-Solver++'s timestep spacing (default: the model's scheduler config)",
    )
    parser.add_argument(
        "--decoder-text-guidance",
        type=float,
        default=DEFAULT_TEXT_GUIDANCE,
        help="the decoder's guidance towards the prompt's words, in every configuration (default: "
        "the pipeline's; 4 guides them together with the image embedding, as before)",
    )
    parser.add_argument(
        "--bf16-prompts",
        type=int,
        default=25,
        help="prompts for the bf16-vs-fp32 timing and accuracy (bf16 is slow on CPUs without AMX)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per pipeline call")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every measured number to this JSON file")
    args = parser.parse_args(argv)
    if args.dpm_prior_steps is None:
        args.dpm_prior_steps = args.dpm_steps
    for name in (
        "prompts",
        "images_per_prompt",
        "steps",
        "dpm_steps",
        "dpm_prior_steps",
        "bf16_prompts",
        "batch_size",
        "runs",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def with_scheduler(
    pipeline: TextToImagePipeline, kind: str, spacing: str | None = None, algorithm: str = "dpmsolver++", order: int = 2
) -> TextToImagePipeline:
    """A pipeline sharing `pipeline`'s models, with DDPM ("ddpm") or DPM-Solver++ ("dpm") schedulers; `spacing`
    overrides DPM-Solver++'s timestep spacing, `algorithm` is its algorithm_type and `order` its solver_order."""
    other = TextToImagePipeline(**pipeline.components)
    other.set_progress_bar_config(disable=True)
    if kind == "dpm":
        other.set_schedulers(
            DPMSolverMultistepScheduler,
            algorithm_type=algorithm,
            solver_order=order,
            **({"timestep_spacing": spacing} if spacing else {}),
        )
    return other


class EvaluationCounter:
    """Counts forward calls of the prior and the decoder UNet."""

    def __init__(self, pipeline):
        self.counts = {"prior": 0, "decoder": 0}
        for name in self.counts:
            getattr(pipeline, name).register_forward_hook(lambda *_, name=name: self.bump(name))

    def bump(self, name):
        self.counts[name] += 1

    def reset(self):
        self.counts = dict.fromkeys(self.counts, 0)


def stage_times(
    pipeline, prompts: list[str], steps: tuple[int, int], runs: int, seed: int, text_guidance: float
) -> dict:
    """Median seconds per image of each stage (text encoder, prior, decoder UNet loop, autoencoder decode) with
    `steps` = (prior steps, decoder steps)."""
    generators = lambda: [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]  # noqa: E731
    samples = {"text": [], "prior": [], "decoder": [], "vae": []}
    for run in range(runs + 1):  # the first run warms up
        with torch.no_grad():
            start = time.perf_counter()
            text = pipeline.encode_prompt([""] * len(prompts) + prompts)
            decoder_text = pipeline.encode_decoder_prompt([""] * len(prompts) + prompts, text)
            after_text = time.perf_counter()
            embeds = pipeline.run_prior(text, steps[0], 4.0, generators())
            after_prior = time.perf_counter()
            if pipeline.vae is None:
                raise ValueError("stage timing expects a latent decoder with an autoencoder")
            decode, vae_seconds = pipeline.vae.decode, []

            def timed_decode(*args, **kwargs):
                began = time.perf_counter()
                out = decode(*args, **kwargs)
                vae_seconds.append(time.perf_counter() - began)
                return out

            pipeline.vae.decode = timed_decode
            try:
                pipeline.run_decoder(
                    embeds, decoder_text, steps[1], 4.0, generators(), text_guidance_scale=text_guidance
                )
            finally:
                del pipeline.vae.decode
            end = time.perf_counter()
        if run:
            vae = sum(vae_seconds)
            for name, seconds in (
                ("text", after_text - start),
                ("prior", after_prior - after_text),
                ("decoder", end - after_prior - vae),
                ("vae", vae),
            ):
                samples[name].append(seconds / len(prompts))
    times = {name: statistics.median(values) for name, values in samples.items()}
    times["total"] = sum(times.values())
    return times


def judged(
    pipeline, judge, records, images_per_prompt, batch_size, seed, steps: tuple[int, int], text_guidance: float
) -> dict:
    prompts, scenes = [r["text"] for r in records], [r["scene"] for r in records]
    images = generate_for_prompts(
        pipeline,
        prompts,
        images_per_prompt,
        batch_size,
        seed,
        prior_num_inference_steps=steps[0],
        decoder_num_inference_steps=steps[1],
        decoder_text_guidance_scale=text_guidance,
    )
    rows = [p for p in range(len(prompts)) for _ in range(images_per_prompt)]
    return judge_images(judge, images, scenes, rows)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    base = TextToImagePipeline.from_pretrained(args.model)
    judge = SceneJudge.from_pretrained(args.judge).eval()
    records = select_prompts(read_metadata(Path(args.data)), args.prompts)
    timing_prompts = [r["text"] for r in records[: args.batch_size]]
    text_guidance = args.decoder_text_guidance
    report = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "timing_batch": len(timing_prompts),
        "prompts": len(records),
        "images_per_prompt": args.images_per_prompt,
        "guidance": {"prior": 4.0, "decoder": 4.0, "decoder_text": text_guidance},
        "configs": {},
    }

    # (scheduler, (prior steps, decoder steps)); a config is named by its steps, "dpm-12" or "dpm-8+17"
    ddpm_steps = (args.steps, args.steps)
    configs = [("ddpm", ddpm_steps), ("dpm", (args.dpm_prior_steps, args.dpm_steps))]
    names = [f"{kind}-{p}" if p == d else f"{kind}-{p}+{d}" for kind, (p, d) in configs]
    for name, (kind, steps) in zip(names, configs):
        pipeline = with_scheduler(base, kind, args.dpm_timestep_spacing, args.dpm_algorithm, args.dpm_solver_order)
        counter = EvaluationCounter(pipeline)
        pipeline(
            timing_prompts[:1],
            prior_num_inference_steps=steps[0],
            decoder_num_inference_steps=steps[1],
            decoder_text_guidance_scale=text_guidance,
        )
        evaluations = dict(counter.counts)
        accuracy = judged(
            pipeline, judge, records, args.images_per_prompt, args.batch_size, args.seed, steps, text_guidance
        )
        report["configs"][name] = {
            "scheduler": kind,
            "steps": {"prior": steps[0], "decoder": steps[1]},
            "network_evaluations": evaluations,
            "timestep_spacing": pipeline.decoder_scheduler.config.timestep_spacing,
            "algorithm_type": pipeline.decoder_scheduler.config.get("algorithm_type"),
            "solver_order": pipeline.decoder_scheduler.config.get("solver_order"),
            "seconds_per_image": stage_times(pipeline, timing_prompts, steps, args.runs, args.seed, text_guidance),
            "judge": accuracy,
        }
        print(
            f"{kind} {steps[0]}+{steps[1]}: evaluations {evaluations}, judged overall {accuracy['overall']:.4f}",
            flush=True,
        )
    default, fast = (report["configs"][name] for name in names)
    evaluations = [sum(config["network_evaluations"].values()) for config in (default, fast)]
    report["evaluation_ratio"] = evaluations[0] / evaluations[1]
    report["accuracy_points_lost"] = 100 * (default["judge"]["overall"] - fast["judge"]["overall"])

    subset = records[: args.bf16_prompts]
    precision = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        pipeline = with_scheduler(base, "ddpm").to(dtype=dtype)
        precision[name] = {
            "seconds_per_image": stage_times(
                pipeline, [r["text"] for r in subset], ddpm_steps, max(1, args.runs // 2), args.seed, text_guidance
            ),
            "judge": judged(
                pipeline, judge, subset, args.images_per_prompt, args.batch_size, args.seed, ddpm_steps, text_guidance
            ),
        }
        print(
            f"{name}: {precision[name]['seconds_per_image']['total']:.4f} s/image, judged overall "
            f"{precision[name]['judge']['overall']:.4f} on {len(subset)} prompts",
            flush=True,
        )
    report["precision"] = precision
    fp32, bf16 = (precision[name]["seconds_per_image"]["total"] for name in ("fp32", "bf16"))
    report["bf16_speedup"] = fp32 / bf16
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
