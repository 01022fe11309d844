"""Crash-safe training: a run killed with SIGKILL and resumed with `--resume_from_checkpoint latest` ends with
the weights of a run that was never stopped; half-written checkpoints are skipped; rotation keeps the newest
complete ones.

The runs train a tiny autoencoder (`genvl/recipes/train_autoencoder.py`, the quickest script to start): its loss draws a
posterior sample from a generator seeded by the step, so a resume that lost the step's randomness, the data order,
the optimizer state, the LR schedule or the EMA would show in the weights."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from genvl.training.checkpoints import COMPLETE_MARKER, complete_checkpoints, resolve_resume, save_checkpoint
from genvl.world.dataset import write_imagefolder

pytestmark = pytest.mark.slow  # subprocess training runs killed with SIGKILL

ROOT = Path(__file__).resolve().parent.parent
MAX_STEPS, EVERY = 24, 4  # 48 samples in batches of 8: four epochs, a checkpoint every 4 steps


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_safe")
    (root / "arch.json").write_text(json.dumps({"autoencoder_channels": [8, 8], "autoencoder_norm_groups": 4}))
    return write_imagefolder(root / "world", 48, seed=0, split="train", resolution=32), root / "arch.json"


def launch(inputs, out, *extra, stdout=subprocess.PIPE):
    data, arch = inputs
    args = [
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--architecture",
        str(arch),
        "--resolution",
        "32",
        "--train_batch_size",
        "8",
        "--max_train_steps",
        str(MAX_STEPS),
        "--checkpointing_steps",
        str(EVERY),
        "--checkpoints_total_limit",
        "2",
        "--lr_warmup_steps",
        "2",
        "--logging_steps",
        "1",
        "--learning_rate",
        "3e-3",
        *extra,
    ]
    # one thread per run: the runs compare bit for bit, and two of them share the machine for a while
    return subprocess.Popen(
        [sys.executable, "-m", "genvl.recipes.train_autoencoder", *args],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )


def kill_at(process, step: int, out: Path | None = None) -> str:
    """Read the run's log until it reports `step`, then SIGKILL it; returns the log. With `out`, `step` is a
    checkpoint step and the kill waits until that checkpoint is half written (its weights are)."""
    watchdog = threading.Timer(300, process.kill)  # a run that hangs fails the test instead
    watchdog.start()
    log = []
    try:
        for line in process.stdout:
            log.append(line)
            if line.startswith(f"step {step}/"):
                while (
                    out is not None
                    and process.poll() is None
                    and not (
                        (out / f".checkpoint-{step}.tmp" / "model.safetensors").exists()
                        or (out / f"checkpoint-{step}").exists()
                    )
                ):
                    time.sleep(0.001)
                os.kill(process.pid, signal.SIGKILL)
                break
        process.wait()
    finally:
        watchdog.cancel()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(log[-30:])
    return "".join(log)


def resumed_step(log: str) -> int:
    found = re.search(r"resumed from \S+checkpoint-(\d+) at step (\d+)", log)
    assert found and found[1] == found[2], log[-3000:]
    return int(found[2])


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(inputs, tmp_path):
    rng = random.Random(0)
    first_kill = rng.choice([s for s in range(EVERY + 1, 3 * EVERY) if s % EVERY])  # between checkpoints
    second_kill = rng.choice([4 * EVERY, 5 * EVERY])  # while that checkpoint is being written
    with open(tmp_path / "reference.log", "w") as reference_log:  # the uninterrupted run, alongside
        reference = launch(inputs, tmp_path / "reference", stdout=reference_log)
        try:
            out = tmp_path / "killed"
            kill_at(launch(inputs, out), first_kill)
            assert not (out / "vae").exists(), "the run ended before it was killed"
            log = kill_at(launch(inputs, out, "--resume_from_checkpoint", "latest"), second_kill, out)
            first_resume = resumed_step(log)
            assert EVERY <= first_resume < second_kill, (first_kill, first_resume)
            resumed = launch(inputs, out, "--resume_from_checkpoint", "latest")
            log = resumed.communicate(timeout=300)[0]
            assert resumed.returncode == 0, log[-3000:]
            second_resume = resumed_step(log)
            assert first_resume < second_resume <= second_kill, (first_resume, second_resume, second_kill)
            assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
        finally:
            reference.kill()  # a no-op once it has ended
            reference.wait()
    expected = json.loads((tmp_path / "reference" / "train_losses.json").read_text())
    # the whole trajectory, the steps before each kill coming from the checkpoints the run resumed from
    assert len(expected) == MAX_STEPS and json.loads((out / "train_losses.json").read_text()) == expected
    # the raw weights of the last checkpoint, and the EMA weights the run ends with, are the same bit for bit
    for weights in (f"checkpoint-{MAX_STEPS}/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        got, want = load_file(out / weights), load_file(tmp_path / "reference" / weights)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[name], want[name]) for name in want), weights
    # rotation kept the newest two; the killed save's temporary folder is gone
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == [
        f"checkpoint-{MAX_STEPS - EVERY}",
        f"checkpoint-{MAX_STEPS}",
    ]


class OneProcess:
    """The part of an Accelerator that `save_checkpoint` uses, for one process whose state is one tensor."""

    is_main_process = True

    def __init__(self, value: float):
        self.value = value

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.full((2,), self.value)}, str(Path(path) / "model.safetensors"))


def saved_value(path: Path) -> float:
    return load_file(path / "model.safetensors")["w"][0].item()


def test_latest_skips_incomplete_checkpoints(tmp_path):
    assert resolve_resume(tmp_path, "latest") is None
    for step in (2, 4):
        save_checkpoint(OneProcess(step), tmp_path, step, None)
    OneProcess(6).save_state(tmp_path / "checkpoint-6")  # no completion marker
    OneProcess(8).save_state(tmp_path / ".checkpoint-8.tmp")  # a save killed before its rename
    (tmp_path / ".checkpoint-8.tmp" / COMPLETE_MARKER).write_text(json.dumps({"step": 8}))
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-4"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(FileNotFoundError, match="checkpoint-6: not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-6"))


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    OneProcess(3).save_state(tmp_path / ".checkpoint-3.tmp")  # left by a killed save
    OneProcess(1).save_state(tmp_path / ".checkpoint-1.old")  # left by a killed rotation
    OneProcess(7).save_state(tmp_path / "checkpoint-7")  # unmarked: not vouched for, so not deleted either
    for step in (2, 4, 6, 8):
        save_checkpoint(OneProcess(step), tmp_path, step, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-7", "checkpoint-8"]
    assert [saved_value(p) for p in complete_checkpoints(tmp_path)] == [6, 8]
    # saving a step that already has a checkpoint (a run resumed from an earlier one) replaces it
    save_checkpoint(OneProcess(9), tmp_path, 8, 2)
    assert saved_value(tmp_path / "checkpoint-8") == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-7", "checkpoint-8"]


class RunsOnLoad:
    """Unpickling this object calls `mark`: what a checkpoint file from someone else could do."""

    def __reduce__(self):
        return (mark, ("unpickled",))


LOADED = []


def mark(what):
    LOADED.append(what)
    return what


def test_ema_state_is_resumed_without_unpickling_objects(tmp_path):
    from genvl.training.args import TrainArgs
    from genvl.training.checkpoints import (
        EMA_WEIGHTS,
        LEGACY_EMA_STATE,
        copy_ema_weights,
        load_ema_state,
        read_ema_state,
    )
    from genvl.training.loop import make_accelerator, train_loop

    def run(steps, resume=None):
        args = TrainArgs(
            output_dir=str(tmp_path),
            train_batch_size=2,
            max_train_steps=steps,
            checkpointing_steps=2,
            lr_warmup_steps=0,
            logging_steps=1,
            ema_decay=0.5,
            resume_from_checkpoint=resume,
        )
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        data = torch.arange(12.0).view(4, 3)
        train_loop(
            make_accelerator(args, "ema"),
            args,
            model,
            model.parameters(),
            4,
            lambda net, batch, step: net(data[torch.as_tensor(batch)]).pow(2).mean(),
        )
        return model

    uninterrupted = run(4)
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / EMA_WEIGHTS).is_file() and not list(checkpoint.glob("custom_checkpoint_*"))
    state = read_ema_state(checkpoint)
    assert state["optimization_step"] == 2 and state["decay"] == 0.5
    assert [tuple(p.shape) for p in state["shadow_params"]] == [(1, 3), (1,)]
    resumed = run(4, resume=str(checkpoint))  # the EMA goes on from step 2's state
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), resumed.parameters()))

    # a checkpoint written by an older genvl holds the EMA as a pickle: resuming refuses it before unpickling,
    # and reading it for an export unpickles tensors and plain values only
    (checkpoint / EMA_WEIGHTS).unlink()
    torch.save({**state, "shadow_params": [RunsOnLoad(), RunsOnLoad()]}, checkpoint / LEGACY_EMA_STATE)
    with pytest.raises(ValueError, match="saved by an older genvl as a pickle"):
        run(4, resume=str(checkpoint))
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        read_ema_state(checkpoint)
    assert LOADED == []
    torch.save({**state, "shadow_params": state["shadow_params"][:1]}, checkpoint / LEGACY_EMA_STATE)
    with pytest.raises(
        ValueError,
        match=r"1 tensors that do not match the model's 2 parameters \(tensor 1: "
        r"nothing in the EMA, \(1,\) in the model\)",
    ):
        load_ema_state(SimpleNamespace(shadow_params=list(uninterrupted.parameters())), checkpoint)
    torch.save({**state, "shadow_params": [torch.zeros(1, 4), torch.zeros(1)]}, checkpoint / LEGACY_EMA_STATE)
    before = [p.clone() for p in uninterrupted.parameters()]
    with pytest.raises(ValueError, match=r"tensor 0: \(1, 4\) in the EMA, \(1, 3\) in the model"):
        copy_ema_weights(uninterrupted.parameters(), checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(before, uninterrupted.parameters()))  # nothing half-copied
    (checkpoint / LEGACY_EMA_STATE).unlink()
    with pytest.raises(FileNotFoundError, match="no EMA state"):
        read_ema_state(checkpoint)
