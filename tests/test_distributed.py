"""Training runs unchanged as several processes: two CPU processes (gloo, launched by accelerate) follow the
same loss trajectory as one process at the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genvl.world.dataset import write_imagefolder

from .conftest import TINY

pytestmark = pytest.mark.slow  # several processes per test

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_cpu_processes() -> list[str]:
    """The start of a command that runs a script as two processes: accelerate's launcher for several GPUs, which
    with ACCELERATE_USE_CPU runs them on the CPU, joined by gloo (its --cpu launcher starts one process)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def run(command, **env):
    for _ in range(2):
        out = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        )
        # a known, unsolved abort of a two-process CPU run (about one launch in five, in the C++ runtime, not in
        # genvl's code: "terminate called without an active exception"): launched once more, and only for it
        if out.returncode == 0 or "terminate called without an active exception" not in out.stderr:
            break
    assert out.returncode == 0, out.stderr[-3000:]


def test_two_cpu_processes_match_one(tmp_path):
    data = write_imagefolder(tmp_path / "world", 48, seed=0, split="train", resolution=32)
    (tmp_path / "arch.json").write_text(json.dumps(TINY.to_dict()))
    common = [
        "--train_data_dir",
        str(data),
        "--architecture",
        str(tmp_path / "arch.json"),
        "--resolution",
        "32",
        "--vocab_size",
        "300",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--lr_warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--learning_rate",
        "3e-3",
    ]
    run(
        [
            sys.executable,
            "-m",
            "genvl.recipes.train_captioner",
            *common,
            "--train_batch_size",
            "8",
            "--output_dir",
            str(tmp_path / "one"),
        ]
    )
    run(
        [
            *two_cpu_processes(),
            "-m",
            "genvl.recipes.train_captioner",
            *common,
            "--train_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "two"),
        ],
        ACCELERATE_USE_CPU="true",
    )
    one = json.loads((tmp_path / "one" / "train_losses.json").read_text())
    two = json.loads((tmp_path / "two" / "train_losses.json").read_text())
    assert len(one) == len(two) == 4 and one[-1] < one[0]
    assert two == pytest.approx(one, rel=1e-5)
    assert (tmp_path / "two" / "checkpoint-4").is_dir() and (tmp_path / "two" / "model_index.json").is_file()


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")])
def test_example_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == 8
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def test_caption_as_two_processes_writes_one_file_without_gaps(tmp_path, tiny_pipeline_dir, scene_images):
    from genvl.cli import main
    from genvl.io.shards import write_shards

    for i, image in enumerate(scene_images + scene_images[:1]):  # 7 images: the shares are uneven
        image.save(tmp_path / f"img{i}.png")
    # and 5 more as tar shards of 2: a process's share may start inside one shard and end in another
    records = [{"text": "x", "i": i} for i in range(5)]
    write_shards(records, lambda r: scene_images[r["i"]], str(tmp_path / "shards" / "s-%d.tar"), 2)
    args = [
        "caption",
        str(tmp_path),
        f"{tmp_path}/shards/s-{{0..2}}.tar",
        "--model",
        str(tiny_pipeline_dir),
        "--max-new-tokens",
        "6",
        "--beam",
        "2",
        "--quiet",
    ]
    assert main([*args, "--output", str(tmp_path / "one.jsonl")]) == 0
    genvl = Path(sys.executable).parent / "genvl"
    run(
        [
            *two_cpu_processes(),
            str(genvl),
            *args,
            "--output",
            str(tmp_path / "two.jsonl"),
        ],
        ACCELERATE_USE_CPU="true",
    )
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    shard_keys = [f"{tmp_path}/shards/s-{i // 2}.tar#{i:08d}" for i in range(5)]
    assert [r["path"] for r in one] == sorted(str(p) for p in tmp_path.glob("img*.png")) + shard_keys
    # a sample captions the same from a shard as from a file; its score only to rounding, since the two sit in
    # batches of other sizes and a CPU's matmul kernels may sum in another order
    assert [c["text"] for c in one[7]["captions"]] == [c["text"] for c in one[0]["captions"]]
    assert [c["score"] for c in one[7]["captions"]] == pytest.approx([c["score"] for c in one[0]["captions"]], rel=1e-5)
    assert [r["path"] for r in two] == [r["path"] for r in one]
    assert [[c["text"] for c in r["captions"]] for r in two] == [[c["text"] for c in r["captions"]] for r in one]
    assert not list(tmp_path.glob("*.tmp"))
    assert main(["caption", str(tmp_path), "--model", str(tiny_pipeline_dir)]) == 0  # one process: stdout is fine


def test_several_processes_need_an_output_file(tmp_path, tiny_pipeline_dir, scene_images, monkeypatch, capsys):
    from genvl.cli import main

    scene_images[0].save(tmp_path / "img.png")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(tmp_path), "--model", str(tiny_pipeline_dir)])
    assert exit_info.value.code == 2 and "--output" in capsys.readouterr().err


def losses_of_one_and_two_processes(module, args, batch, tmp_path):
    """Train losses of the recipe `module` as one process at batch `batch` and as two CPU processes at
    `batch // 2`."""
    args = list(args)
    del args[args.index("--output_dir") : args.index("--output_dir") + 2]
    args[args.index("--train_batch_size") + 1] = str(batch)
    run([sys.executable, "-m", module, *args, "--output_dir", str(tmp_path / "one")])
    args[args.index("--train_batch_size") + 1] = str(batch // 2)
    run(
        [
            *two_cpu_processes(),
            "-m",
            module,
            *args,
            "--output_dir",
            str(tmp_path / "two"),
        ],
        ACCELERATE_USE_CPU="true",
    )
    return [json.loads((tmp_path / name / "train_losses.json").read_text()) for name in ("one", "two")]


def test_clip_prior_and_decoder_as_two_processes_match_one(tmp_path):
    from .conftest import TINY_CLIP
    from .test_train_text_to_image import TINY_UNCLIP, common

    data = write_imagefolder(tmp_path / "world", 32, seed=0, split="train", resolution=32)
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    (tmp_path / "unclip.json").write_text(json.dumps(TINY_UNCLIP))
    # CLIP: the contrastive loss of each process's rows runs over the gathered embeddings of both, the
    # object-swapped negative captions included
    clip_args = common(data, tmp_path / "x", steps=4) + [
        "--architecture",
        str(tmp_path / "clip.json"),
        "--vocab_size",
        "300",
        "--swap_negatives",
    ]
    one, two = losses_of_one_and_two_processes("genvl.recipes.train_clip", clip_args, 8, tmp_path / "clip_runs")
    assert len(two) == 4 and two == pytest.approx(one, rel=1e-4)
    assert one[-1] != pytest.approx(one[0], rel=1e-3)  # it trained

    prior_args = common(data, tmp_path / "x", steps=4) + [
        "--clip_model_name_or_path",
        str(tmp_path / "clip_runs" / "one"),
        "--architecture",
        str(tmp_path / "unclip.json"),
    ]
    one, two = losses_of_one_and_two_processes("genvl.recipes.train_prior", prior_args, 8, tmp_path / "prior_runs")
    assert len(two) == 4 and two == pytest.approx(one, rel=1e-4)

    # the decoder, in pixel space (no autoencoder) with Min-SNR weighting
    decoder_args = prior_args + ["--vae_model_name_or_path", "", "--snr_gamma", "5"]
    one, two = losses_of_one_and_two_processes(
        "genvl.recipes.train_decoder", decoder_args, 8, tmp_path / "decoder_runs"
    )
    assert len(two) == 4 and two == pytest.approx(one, rel=1e-4)


def test_a_streamed_run_splits_the_shards_between_two_processes(tmp_path):
    from .test_shards import pack

    pack(
        write_imagefolder(tmp_path / "world", 40, seed=0, split="train", resolution=32),
        str(tmp_path / "s-%02d.tar"),
        10,
    )
    (tmp_path / "arch.json").write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "two"
    run(
        [
            *two_cpu_processes(),
            "-m",
            "genvl.recipes.train_captioner",
            "--train_data_dir",
            f"{tmp_path}/s-{{00..03}}.tar",
            "--streaming",
            "--architecture",
            str(tmp_path / "arch.json"),
            "--resolution",
            "32",
            "--vocab_size",
            "300",
            "--train_batch_size",
            "5",
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "2",
            "--lr_warmup_steps",
            "1",
            "--output_dir",
            str(out),
        ],
        ACCELERATE_USE_CPU="true",
    )
    # each process took its own 5 samples a step, from its own half of every epoch's stream
    marker = json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert marker["data"] == [{"epoch": 0, "consumed": 10}, {"epoch": 0, "consumed": 10}]
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["samples_taken"] == 3 * 5 * 2 and summary["skipped"] == 0
    assert (out / "model_index.json").is_file()


def test_streamed_clip_and_prior_runs_agree_across_two_processes(tmp_path):
    """Two processes streaming their halves of the shards: CLIP's matches (caption digests) and swap negatives
    are gathered across them, and a new prior's standardisation is the same first epoch in both."""
    import torch
    from safetensors.torch import load_file

    from genvl.io.imagefolder import read_metadata
    from genvl.training.features import frozen_clip_features

    from .conftest import TINY_CLIP
    from .test_shards import pack
    from .test_train_text_to_image import TINY_UNCLIP

    data = write_imagefolder(tmp_path / "world", 40, seed=0, split="train", resolution=32)
    pack(data, str(tmp_path / "s-%02d.tar"), 10)
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    (tmp_path / "unclip.json").write_text(json.dumps(TINY_UNCLIP))
    flags = ["--train_data_dir", f"{tmp_path}/s-{{00..03}}.tar", "--streaming", "--resolution", "32"]
    flags += ["--train_batch_size", "4", "--max_train_steps", "3", "--lr_warmup_steps", "1"]

    def launch(module, out, *extra):
        run([*two_cpu_processes(), "-m", module, *flags, "--output_dir", str(out), *extra], ACCELERATE_USE_CPU="true")
        summary = json.loads((out / "data_summary.json").read_text())
        assert summary["samples_taken"] == 3 * 4 * 2 and summary["skipped"] == 0
        return json.loads((out / "train_losses.json").read_text())

    clip_flags = ["--architecture", str(tmp_path / "clip.json"), "--vocab_size", "300", "--swap_negatives"]
    losses = launch("genvl.recipes.train_clip", tmp_path / "clip", *clip_flags)
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    prior_flags = ["--clip_model_name_or_path", str(tmp_path / "clip"), "--architecture", str(tmp_path / "unclip.json")]
    losses = launch("genvl.recipes.train_prior", tmp_path / "prior", *prior_flags)
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    embeds = frozen_clip_features(tmp_path / "clip", data, read_metadata(data), "file_name", "text").image_embeds
    mean = load_file(tmp_path / "prior" / "prior" / "diffusion_pytorch_model.safetensors")["clip_mean"]
    assert torch.allclose(mean, embeds.mean(0, keepdim=True), atol=1e-5)
