"""The worked example's measuring and its adapters' size: peak memory of a child process read from its own
accounting, and the default adapters within 2% of each network's weights."""

import sys
import textwrap
from pathlib import Path

import pytest

from genvl.lora import adapter_share
from genvl.training.measure import run_measured

from .scripts import load_script

pytestmark = pytest.mark.slow  # subprocesses measured

teach_new_object = load_script("examples/teach_new_object.py")
teach_new_object_generator = load_script("examples/teach_new_object_generator.py")


def test_peak_memory_is_the_child_own(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys
        block = bytearray(300 * 2**20)  # touched, so resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        json.dump([1.5, 0.5], open(sys.argv[1] + "/train_losses.json", "w"))
    """)
    )
    ballast = bytearray(400 * 2**20)  # this process's memory must not count
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    result = run_measured([sys.executable, str(script), str(tmp_path)], tmp_path)
    assert 300 < result["peak_rss_mib"] < 380 and result["final_loss"] == 0.5
    # a module, as the examples run the recipes (python -m genvl.recipes.train_captioner)
    (tmp_path / "fake_train_module.py").write_text(script.read_text())
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_measured([sys.executable, "-m", "fake_train_module", str(tmp_path)], tmp_path)
    assert 300 < result["peak_rss_mib"] < 380 and result["final_loss"] == 0.5
    script.write_text("raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="train_stdout.log"):
        run_measured([sys.executable, str(script), str(tmp_path)], tmp_path)


def test_default_adapters_stay_under_two_percent(tmp_path):
    from diffusers import PriorTransformer, UNet2DConditionModel

    from genvl.lora import add_adapter, lora_config, save_adapter
    from genvl.pipelines.caption import CaptionPipeline

    captioner = teach_new_object.parse_args([])
    generator = teach_new_object_generator.parse_args([])
    shipped = Path(generator.model)
    cases = [
        (
            CaptionPipeline.from_pretrained(captioner.model).model,
            "captioner",
            captioner.rank,
            teach_new_object.lora_targets(captioner),
        ),
        (PriorTransformer.from_pretrained(shipped / "prior"), "prior", generator.prior_rank, None),
        (UNet2DConditionModel.from_pretrained(shipped / "decoder"), "decoder", generator.decoder_rank, None),
    ]
    for model, network, rank, targets in cases:
        total = sum(p.numel() for p in model.parameters())
        add_adapter(model, lora_config(network, rank, target_modules=targets))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert 0 < trainable <= 0.02 * total, (network, trainable / total)
        # the example counts the saved file's weights: the same ones
        save_adapter(model, tmp_path / network)
        counted = adapter_share(tmp_path / network / "adapter_model.safetensors", model)
        assert counted["count"] == trainable
