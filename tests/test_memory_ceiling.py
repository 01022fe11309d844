"""Memory stays bounded whatever a flag, a config or an input asks for: each case runs `python -m genvl` with its
address space capped (RLIMIT_AS) and must end with a correct result or a one-line error, never a kill or a
MemoryError. Before, these took 5 to 24 GB: `-n 1000000` made every generator up front, `--frames 100000` decoded
every frame at once, `--candidates K` drew all K at once, a decoder config with sample_size 4096 was run, and a
batch of large photos was held at full size.

A normal run of the tiny models here takes about 1.5 GB of address space (torch's libraries included)."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from genvl.pipelines import text_to_image
from genvl.pipelines.text_to_image import TextToImagePipeline

pytestmark = pytest.mark.slow  # subprocesses under a memory cap

LIMIT = int(2.5 * 2**30)


def capped():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    # Ctrl-C must reach the child even when the tests run where SIGINT is ignored (a shell's background job),
    # a disposition every child would otherwise inherit
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "genvl", *argv],
        cwd=cwd,
        preexec_fn=capped,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(argv, cwd, timeout=300):
    process = launch(argv, cwd)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode in (0, 1, 2), (process.returncode, err[-2000:])  # not killed
    assert "MemoryError" not in err and "Traceback" not in err, err[-2000:]
    return process.returncode, out, err


def interrupt_after(argv, cwd, lines: int, timeout=300):
    """Run until `lines` lines are on stdout (still alive, under the cap), then Ctrl-C; returns those lines. Its
    stderr is read all along, so that a full stderr pipe never stalls the process while stdout is awaited."""
    process = launch(argv, cwd)
    errors = []
    drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    drain.start()
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        seen = [process.stdout.readline() for _ in range(lines)]
        alive = all(seen) and process.poll() is None
        if alive:
            process.send_signal(signal.SIGINT)
        process.stdout.read()
        process.wait()
    finally:
        watchdog.cancel()
    drain.join()
    err = "".join(errors)
    assert alive, ("ended early", process.returncode, err[-2000:])
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    return seen


def assert_no_temporaries(folder: Path):
    assert [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name] == []


def test_a_million_images_start_at_once_and_stream(t2i_dir, tmp_path):
    seen = interrupt_after(
        [
            "generate",
            "an apple",
            "-n",
            "1000000",
            "--model",
            str(t2i_dir),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--seed",
            "0",
            "--batch-size",
            "2",
            "--quiet",
        ],
        tmp_path,
        lines=6,
    )
    assert [Path(line.strip()).name for line in seen] == [f"an_apple-{i}-{i}.png" for i in range(6)]
    assert all(Path(line.strip()).is_file() for line in seen)
    assert_no_temporaries(tmp_path / "out")


def test_a_hundred_thousand_frames_are_decoded_a_batch_at_a_time(t2i_dir, tmp_path):
    seen = interrupt_after(
        [
            "interpolate",
            "an apple",
            "a car",
            "--frames",
            "100000",
            "--model",
            str(t2i_dir),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--seed",
            "3",
            "--quiet",
        ],
        tmp_path,
        lines=12,
    )
    assert [Path(line.strip()).name for line in seen] == [f"an_apple_to_a_car-3-{i}.png" for i in range(12)]
    assert_no_temporaries(tmp_path / "out")


def test_many_candidates_are_drawn_a_chunk_at_a_time(t2i_dir, tmp_path):
    code, out, _ = finish(
        [
            "generate",
            "an apple",
            "--candidates",
            "300",
            "--model",
            str(t2i_dir),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--seed",
            "0",
            "--quiet",
        ],
        tmp_path,
    )
    assert code == 0 and len(out.splitlines()) == 1 and Path(out.strip()).is_file()


def test_candidates_in_chunks_keep_the_best_of_all(t2i_dir, monkeypatch):
    """Drawn two at a time, five candidates give the image that scores best of all five, and the decoder never
    sees more than two rows per image (times its guidance rows)."""
    from diffusers import DDIMScheduler

    pipe = TextToImagePipeline.from_pretrained(t2i_dir).set_schedulers(DDIMScheduler)  # no noise in the steps
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    prior_latents = torch.randn(5, pipe.prior.config.embedding_dim, generator=generator)
    latents = torch.randn(5, *pipe.latent_shape(), generator=generator)
    steps = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, output_type="pt")
    every = pipe(["an apple"] * 5, prior_latents=prior_latents, latents=latents, **steps)
    rows, scores = pipe.rerank(every.images * 2 - 1, ["an apple"], 5)
    seen = []
    decode = pipe.run_decoder
    monkeypatch.setattr(
        pipe, "run_decoder", lambda embeds, *a, **k: seen.append(len(embeds)) or decode(embeds, *a, **k)
    )
    monkeypatch.setattr(text_to_image, "CANDIDATE_CHUNK", 2)
    best = pipe("an apple", num_candidates=5, prior_latents=prior_latents, latents=latents, **steps)
    assert seen == [2, 2, 1]
    torch.testing.assert_close(best.images[0], every.images[int(rows[0])], atol=1e-5, rtol=0)


def test_a_decoder_config_with_a_huge_sample_size_is_refused(t2i_dir, tmp_path):
    folder = tmp_path / "t2i"
    shutil.copytree(t2i_dir, folder)
    config = json.loads((folder / "decoder" / "config.json").read_text())
    config["sample_size"] = 4096
    (folder / "decoder" / "config.json").write_text(json.dumps(config))
    code, out, err = finish(
        ["generate", "an apple", "--model", str(folder), "--steps", "1", "--out", str(tmp_path / "out"), "--quiet"],
        tmp_path,
    )
    assert code == 1 and out == "" and "sample_size must be an integer in [1, 256]" in err
    assert len(err.strip().splitlines()) == 1


def test_a_batch_of_large_photos_is_captioned_one_full_size_image_at_a_time(tiny_pipeline_dir, tmp_path):
    """Twelve 81-megapixel images, each under the pixel limit: 2.9 GB at full size together."""
    first = tmp_path / "photos" / "00.png"
    first.parent.mkdir()
    Image.new("RGB", (9000, 9000), (30, 140, 60)).save(first, compress_level=1)
    for i in range(1, 12):
        os.link(first, first.with_name(f"{i:02d}.png"))
    code, out, err = finish(
        [
            "caption",
            str(first.parent),
            "--model",
            str(tiny_pipeline_dir),
            "--batch-size",
            "12",
            "--max-new-tokens",
            "3",
            "--quiet",
        ],
        tmp_path,
        timeout=600,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 12


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_shard_member_over_the_cap_is_refused_unread(suffix, tiny_pipeline_dir, tmp_path):
    shard = tmp_path / f"data{suffix}"
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(40 * 2**20))  # 40 MB claimed as an image
    with tarfile.open(shard, "w:gz" if suffix == ".tar.gz" else "w") as tar:
        tar.add(big, arcname="000000.png")
    code, out, err = finish(
        ["caption", str(shard), "--model", str(tiny_pipeline_dir), "--max-image-pixels", "10000", "--quiet"], tmp_path
    )
    assert code == 1 and out == ""
    assert f"{shard}#000000" in err and len(err.strip().splitlines()) == 1
