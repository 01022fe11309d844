"""The benchmark scripts run end to end and report what they measure (network evaluations, image
differences across batch sizes, the encoder's share of captioning time, peak memory)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from genvl.models.judge import SceneJudge
from genvl.pipelines.text_to_image import TextToImagePipeline
from genvl.world.dataset import write_imagefolder

from .conftest import get_dummy_unclip_components

pytestmark = pytest.mark.slow  # the benchmark scripts, run whole

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t2i_speed_reports_every_configuration(tmp_path):
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    SceneJudge(object_names=["apple", "car"], colour_names=["red"], channels=(8, 8, 16)).save_pretrained(
        tmp_path / "judge"
    )
    data = write_imagefolder(tmp_path / "data", 12, seed=0, split="test", resolution=32)
    out = tmp_path / "report.json"
    load_benchmark("t2i_speed").main(
        [
            "--model",
            str(tmp_path / "model"),
            "--judge",
            str(tmp_path / "judge"),
            "--data",
            str(data),
            "--prompts",
            "4",
            "--images-per-prompt",
            "2",
            "--steps",
            "4",
            "--dpm-steps",
            "3",
            "--bf16-prompts",
            "2",
            "--batch-size",
            "4",
            "--runs",
            "1",
            "--dpm-timestep-spacing",
            "trailing",
            "--dpm-algorithm",
            "sde-dpmsolver++",
            "--dpm-solver-order",
            "1",
            "--dpm-prior-steps",
            "1",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["configs"]["ddpm-4"]["network_evaluations"] == {"prior": 4, "decoder": 4}
    assert report["configs"]["ddpm-4"]["timestep_spacing"] == "leading"
    assert report["configs"]["dpm-1+3"]["timestep_spacing"] == "trailing"
    assert report["configs"]["dpm-1+3"]["algorithm_type"] == "sde-dpmsolver++"
    assert report["configs"]["ddpm-4"]["algorithm_type"] is None
    assert report["configs"]["dpm-1+3"]["solver_order"] == 1
    assert report["configs"]["dpm-1+3"]["network_evaluations"] == {"prior": 1, "decoder": 3}
    assert report["configs"]["dpm-1+3"]["steps"] == {"prior": 1, "decoder": 3}
    assert report["evaluation_ratio"] == 2.0
    for config in report["configs"].values():
        times = config["seconds_per_image"]
        assert all(times[stage] > 0 for stage in ("text", "prior", "decoder", "vae"))
        assert 0 <= config["judge"]["overall"] <= 1
    assert report["bf16_speedup"] > 0 and set(report["precision"]) == {"fp32", "bf16"}


def test_batch_sizes_benchmark_compares_splits_with_one_call(t2i_dir, tmp_path):
    out = tmp_path / "report.json"
    load_benchmark("batch_sizes").main(
        [
            "--model",
            str(t2i_dir),
            "--images",
            "3",
            "--splits",
            "3",
            "1,2",
            "--steps",
            "2",
            "--runs",
            "1",
            "--workers",
            "2",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    same, split = report["splits"]
    # the same call again gives the same images bit for bit: only other batch shapes may differ
    assert same == {"sizes": [3], "max_difference": 0.0, "subpixels_off": 0}
    assert split["sizes"] == [1, 2] and 0 <= split["subpixels_off"] <= report["subpixels"] // 100
    assert report["batched_seconds"] > 0 and report["one_per_call_seconds"] > 0
    # the CLI's way gives the same images with one thread and with two
    assert report["one_per_thread_exact"] is True and report["one_per_thread_seconds"] > 0


def test_caption_speed_splits_encoding_from_decoding(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "report.json"
    images = ROOT / "examples" / "images"
    load_benchmark("caption_speed").main(
        [
            "--model",
            str(tiny_pipeline_dir),
            "--images",
            str(images),
            "--batch-size",
            "2",
            "--beams",
            "2",
            "--max-new-tokens",
            "4",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--quantize",
            "int8",
            "--student",
            str(tiny_pipeline_dir),
            "--static-cache",
            "--json",
            str(out),
        ]
    )
    modes = json.loads(out.read_text())["modes"]
    for mode in modes.values():  # transformers with its static cache: a third implementation in the same loop
        assert mode["static_tokens_identical"] and len(mode["transformers_static_ms"]) == 2
        assert mode["static_speedup"] == mode["transformers_static_median_ms"] / mode["genvl_median_ms"]
    for mode in modes.values():  # a model as its own student: the same captions, timed in the same loop
        assert mode["student_same_captions"] == 1.0 and len(mode["student_ms"]) == 2
        assert mode["student_speedup"] == mode["model_median_ms_beside_student"] / mode["student_median_ms"]
    assert set(modes) == {"greedy", "beam 2"}
    for mode in modes.values():  # the int8 row: its own timings against the fp32 ones of the same loop
        assert len(mode["genvl_int8_ms"]) == 2 and 0 <= mode["int8_identical_fraction"] <= 1
        assert mode["int8_speedup"] == mode["genvl_median_ms_beside_int8"] / mode["genvl_int8_median_ms"]
    for mode in modes.values():
        assert mode["tokens_identical"] and mode["encoder_median_ms"] > 0
        assert mode["speedup_bound"] == mode["transformers_median_ms"] / mode["encoder_median_ms"]
        ratios = sorted(theirs / ours for ours, theirs in zip(mode["genvl_ms"], mode["transformers_ms"]))
        assert len(ratios) == 2 and mode["paired_speedup"] == pytest.approx((ratios[0] + ratios[1]) / 2)


@pytest.mark.parametrize(
    "device, message",
    [("tpu", "not a torch device"), ("meta", "must be cpu or cuda"), ("cuda:x", "not a torch device")]
    + ([] if torch.cuda.is_available() else [("cuda", "sees no CUDA device")]),
)
def test_caption_speed_names_a_device_it_cannot_use(device, message):
    with pytest.raises(ValueError, match=message):
        load_benchmark("caption_speed").parse_args(["--device", device])


def test_memory_benchmark_measures_every_configuration(tmp_path, tiny_pipeline_dir):
    TextToImagePipeline(**get_dummy_unclip_components()).save_pretrained(tmp_path / "t2i")
    memory = load_benchmark("memory")
    common = ["--captioner", str(tiny_pipeline_dir), "--t2i", str(tmp_path / "t2i"), "--batch-size", "4"]
    report = memory.main(
        common + ["--networks", "decoder", "--backends", "sdpa", "--json", str(tmp_path / "memory.json")]
    )
    rows = report["rows"]
    assert [(r["mode"], r["gradient_checkpointing"]) for r in rows] == [
        ("inference", False),
        ("train", False),
        ("train", True),
    ]
    assert json.loads((tmp_path / "memory.json").read_text())["rows"] == rows
    assert all(row["peak_mib"] >= 0 for row in rows) and rows[0]["ratio"] == rows[1]["ratio"] == 1.0
    for network in ("captioner", "clip", "prior"):  # the other networks build and train, in this process
        for backend in ("eager", "sdpa"):
            args = memory.parse_args(common + ["--worker", network, backend, "on", "train"])
            assert memory.worker(args)["peak_mib"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["captioner", "prior"])
def test_memory_benchmark_measures_a_run_on_more_data(tmp_path, recipe):
    memory = load_benchmark("memory")
    report = memory.main(["--data-scaling", "20", "--data-recipe", recipe, "--json", str(tmp_path / "scaling.json")])
    assert report["recipe"] == recipe
    rows = report["data_scaling"]
    assert [(r["samples"], r["streaming"]) for r in rows] == [(20, False), (20, True), (200, False), (200, True)]
    assert all(row["peak_mib"] > 0 for row in rows) and set(report["ratios"]) == {"in_memory", "streamed"}
    assert json.loads((tmp_path / "scaling.json").read_text()) == report
